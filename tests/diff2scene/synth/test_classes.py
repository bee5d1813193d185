import numpy as np
import pytest

from diff2scene.synth.classes import (
    CLASSES,
    PALETTE,
    TIERS,
    build_mesh,
    class_by_id,
    class_by_name,
    classes_in_tier,
)


def test_table_has_at_least_20_classes_with_stable_ids_and_all_tiers() -> None:
    assert len(CLASSES) >= 20
    assert [c.class_id for c in CLASSES] == list(range(1, len(CLASSES) + 1))
    assert len({c.name for c in CLASSES}) == len(CLASSES)
    for tier in TIERS:
        assert classes_in_tier(tier), tier
    # Ids are part of the saved format: spot-check a few that must never move.
    assert class_by_name("wall").class_id == 1
    assert class_by_name("floor").class_id == 2
    assert class_by_id(4).name == "chair"
    assert {"wall", "floor", "ceiling"} <= {c.name for c in classes_in_tier("head")}


def test_unknown_names_raise_key_error() -> None:
    with pytest.raises(KeyError, match="unknown class"):
        class_by_name("unicorn")
    with pytest.raises(KeyError):
        class_by_id(0)


def test_every_class_colour_is_in_the_palette() -> None:
    for spec in CLASSES:
        assert set(spec.colours) <= set(PALETTE), spec.name
    for rgb in PALETTE.values():
        assert all(0 <= v <= 255 for v in rgb)


@pytest.mark.parametrize("spec", [c for c in CLASSES if c.shape != "plane"], ids=lambda c: c.name)
def test_mesh_fills_its_extent_with_base_on_the_ground(spec) -> None:  # type: ignore[no-untyped-def]
    size = np.array(spec.size_max_m)
    mesh = build_mesh(spec.shape, size)
    vertices = np.asarray(mesh.vertices)
    assert len(mesh.triangles) > 0
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    assert lo[2] == pytest.approx(0.0, abs=1e-6)
    assert hi[2] == pytest.approx(size[2], abs=1e-3)
    # The footprint never exceeds the nominal extent (placement relies on it).
    assert np.all(hi[:2] - lo[:2] <= size[:2] + 1e-6)
    assert np.allclose((hi[:2] + lo[:2]) / 2, 0.0, atol=size[:2].max() / 2)

import numpy as np
import pytest

from diff2scene.synth.classes import class_by_id, classes_in_tier
from diff2scene.synth.scene import SceneConfig, generate_scene


def test_same_seed_gives_identical_scene() -> None:
    a, b = generate_scene(7), generate_scene(7)
    assert np.array_equal(a.room_size_m, b.room_size_m)
    assert len(a.instances) == len(b.instances)
    for x, y in zip(a.instances, b.instances, strict=True):
        assert (x.instance_id, x.class_id, x.colour_name) == (
            y.instance_id,
            y.class_id,
            y.colour_name,
        )
        assert np.array_equal(x.vertices, y.vertices)
        assert np.array_equal(x.triangles, y.triangles)


def test_different_seeds_give_different_rooms() -> None:
    a, b = generate_scene(1), generate_scene(2)
    assert not np.array_equal(a.room_size_m, b.room_size_m)


@pytest.mark.parametrize("seed", range(5))
def test_room_structure_head_classes_and_objects_inside(seed: int) -> None:
    scene = generate_scene(seed)
    names = [inst.class_name for inst in scene.instances]
    assert names[:6] == ["floor", "ceiling", "wall", "wall", "wall", "wall"]
    for spec in classes_in_tier("head"):
        assert spec.name in names, (seed, spec.name)
    assert [inst.instance_id for inst in scene.instances] == list(range(1, len(names) + 1))
    size = scene.room_size_m
    for inst in scene.instances:
        lo, hi = inst.bbox_m()
        assert np.all(lo >= -1e-6) and np.all(hi <= size + 1e-6), inst
        assert inst.colour_name in class_by_id(inst.class_id).colours


def test_floor_objects_do_not_overlap() -> None:
    scene = generate_scene(11)
    floor_standing = [
        inst
        for inst in scene.instances
        if class_by_id(inst.class_id).placement in ("floor", "wall_floor")
    ]
    boxes = [inst.bbox_m() for inst in floor_standing]
    # The generator keeps the yawed footprints' bounding rectangles apart.
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (alo, ahi), (blo, bhi) = boxes[i], boxes[j]
            overlap = np.minimum(ahi, bhi) - np.maximum(alo, blo)
            assert np.any(overlap[:2] <= 1e-6), (floor_standing[i], floor_standing[j])


def test_tall_objects_keep_clear_of_the_camera_path() -> None:
    config = SceneConfig()
    scene = generate_scene(4, config)
    a, b = scene.camera_path_radii_m
    theta = np.linspace(0, 2 * np.pi, 360)
    path = scene.centre_m[:2] + np.stack([a * np.cos(theta), b * np.sin(theta)], axis=1)
    for inst in scene.instances[6:]:
        lo, hi = inst.bbox_m()
        if hi[2] - lo[2] <= config.tall_object_height_m:
            continue
        inside = np.all((path >= lo[:2] - 0.05) & (path <= hi[:2] + 0.05), axis=1)
        assert not inside.any(), inst


def test_tail_classes_are_rarer_than_common_ones() -> None:
    present = {"common": 0, "tail": 0}
    for seed in range(12):
        names = {i.class_name for i in generate_scene(seed).instances}
        present["common"] += sum(c.name in names for c in classes_in_tier("common"))
        present["tail"] += sum(c.name in names for c in classes_in_tier("tail"))
    per_common = present["common"] / len(classes_in_tier("common"))
    per_tail = present["tail"] / len(classes_in_tier("tail"))
    assert per_tail < per_common


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="camera_path_fraction"):
        SceneConfig(camera_path_fraction=0.7)
    with pytest.raises(ValueError, match="room_width_range_m"):
        SceneConfig(room_width_range_m=(5.0, 3.0))

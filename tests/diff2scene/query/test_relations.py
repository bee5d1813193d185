"""Spatial relations decided from voxels, robust to the stray voxels of a reconstruction."""

from __future__ import annotations

import numpy as np
import pytest

from diff2scene.query.instances import Instance
from diff2scene.query.relations import (
    RelationConfig,
    relation_factor,
    rerank,
    voxel_relation_factor,
)

VOXEL_M = 0.05


def grid(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    axes = [np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


class Scene:
    """Named voxel sets in one map; instances index the shared ``points_m``."""

    def __init__(self, parts: dict[str, np.ndarray]) -> None:
        self.names = list(parts)
        coords = np.concatenate(list(parts.values()))
        self.points_m = (coords * VOXEL_M).astype(np.float32)
        ends = np.cumsum([0] + [len(p) for p in parts.values()])
        self.rows = {n: np.arange(ends[i], ends[i + 1]) for i, n in enumerate(self.names)}

    def instance(self, name: str, score: float = 1.0) -> Instance:
        idx = self.rows[name].astype(np.int64)
        pts = self.points_m[idx]
        return Instance(
            name, score, pts.mean(axis=0), pts.min(axis=0), pts.max(axis=0), voxel_indices=idx
        )


CFG = RelationConfig(contact_m=3 * VOXEL_M)


@pytest.fixture(scope="module")
def room() -> Scene:
    # A 3 x 3 m floor that took in a stray column of a bed's voxels up to 0.8 m, a door
    # standing on it, a table (top at 0.7 m on four legs), a mug on the table, a mug on the
    # floor beside the table and a mug floating 0.5 m above the table top.
    legs = [grid((x, y, 1), (x, y, 13)) for x in (20, 35) for y in (20, 30)]
    return Scene(
        {
            "floor": np.concatenate([grid((0, 0, 0), (60, 60, 0)), grid((50, 5, 1), (50, 5, 16))]),
            "door": grid((0, 40, 1), (0, 57, 40)),
            "table": np.concatenate([grid((20, 20, 14), (35, 30, 14)), *legs]),
            "mug_on_table": grid((25, 24, 15), (27, 26, 17)),
            "mug_on_floor": grid((40, 24, 1), (42, 26, 3)),
            "mug_floating": grid((30, 24, 24), (32, 26, 26)),
        }
    )


def test_on_uses_the_support_under_the_target_not_the_anchor_box(room: Scene) -> None:
    floor, door = room.instance("floor"), room.instance("door")
    # The stray column lifts the floor's box to 0.8 m: the box rule finds no door on it.
    assert relation_factor("on", door, floor, CFG) == 0.0
    assert voxel_relation_factor("on", door, floor, room.points_m, CFG) == 1.0
    table = room.instance("table")
    assert voxel_relation_factor("on", table, floor, room.points_m, CFG) == 1.0
    assert voxel_relation_factor("on", room.instance("mug_on_table"), table, room.points_m, CFG)
    for other in ("mug_on_floor", "mug_floating"):
        assert voxel_relation_factor("on", room.instance(other), table, room.points_m, CFG) == 0.0
    # The floor is not on the table, nor the table on the mug.
    assert voxel_relation_factor("on", floor, table, room.points_m, CFG) == 0.0
    assert (
        voxel_relation_factor("on", table, room.instance("mug_on_table"), room.points_m, CFG) == 0.0
    )


def test_above_under_and_near(room: Scene) -> None:
    table, pts = room.instance("table"), room.points_m
    assert voxel_relation_factor("above", room.instance("mug_floating"), table, pts, CFG) == 1.0
    assert voxel_relation_factor("above", room.instance("mug_on_floor"), table, pts, CFG) == 0.0
    assert voxel_relation_factor("under", table, room.instance("mug_floating"), pts, CFG) == 1.0
    assert voxel_relation_factor("under", room.instance("mug_floating"), table, pts, CFG) == 0.0
    # The mug on the floor is 0.2 m from the table's edge (near_m is 0.3 m here),
    # the door 1 m away.
    near = RelationConfig(near_m=0.3, contact_m=CFG.contact_m)
    assert voxel_relation_factor("next_to", room.instance("mug_on_floor"), table, pts, near) > 0
    assert voxel_relation_factor("next_to", room.instance("door"), table, pts, near) == 0.0


def test_near_ignores_the_outermost_voxels(room: Scene) -> None:
    # The floor's stray column is not what makes a mug "near" the floor's box top.
    floor = room.instance("floor")
    floating = room.instance("mug_floating")
    cfg = RelationConfig(near_m=0.5, contact_m=CFG.contact_m)
    assert relation_factor("near", floating, floor, cfg) > 0.0  # box reaches 0.8 m
    assert voxel_relation_factor("near", floating, floor, room.points_m, cfg) == 0.0
    untrimmed = RelationConfig(near_m=0.5, contact_m=CFG.contact_m, trim_fraction=0.0)
    assert voxel_relation_factor("near", floating, floor, room.points_m, untrimmed) > 0.0


def test_rerank_with_voxels_keeps_only_targets_that_hold(room: Scene) -> None:
    mugs = [room.instance(n, 0.6) for n in ("mug_on_floor", "mug_on_table", "mug_floating")]
    ranked = rerank("on", mugs, [room.instance("table", 0.5)], CFG, points_m=room.points_m)
    assert [i.label for i in ranked] == ["mug_on_table"]
    assert ranked[0].score == pytest.approx(0.6 * 0.5)


def test_relation_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="trim_fraction"):
        RelationConfig(trim_fraction=0.5)
    with pytest.raises(ValueError, match="min_support_voxels"):
        RelationConfig(min_support_voxels=0)

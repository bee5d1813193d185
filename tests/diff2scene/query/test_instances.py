"""Instances as a robot wants them: one per object, fragments dropped, walls apart."""

from __future__ import annotations

import numpy as np
import pytest

from diff2scene.query.instances import (
    InstanceConfig,
    find_instances,
    prune_instances,
    split_planar,
)

VOXEL_M = 0.05


def grid(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    """(n, 3) int32 voxel coordinates of the inclusive box lo..hi."""
    axes = [np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int32)


def room_walls(nx: int = 80, ny: int = 60, nz: int = 50) -> list[np.ndarray]:
    """Four one-voxel-thick walls of a 4 x 3 x 2.5 m room, touching at the corners."""
    return [
        grid((0, 0, 0), (nx, 0, nz)),
        grid((0, ny, 0), (nx, ny, nz)),
        grid((0, 1, 0), (0, ny - 1, nz)),
        grid((nx, 1, 0), (nx, ny - 1, nz)),
    ]


def find(
    parts: list[np.ndarray], scores: list[float], config: InstanceConfig, **kw: float
) -> tuple[list, np.ndarray]:
    coords = np.concatenate(parts)
    score = np.concatenate(
        [np.full(len(p), s, np.float32) for p, s in zip(parts, scores, strict=True)]
    )
    owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    found = find_instances(
        "thing",
        np.arange(len(coords), dtype=np.int64),
        score,
        coords=coords,
        points_m=(coords * VOXEL_M).astype(np.float32),
        config=config,
        **kw,  # type: ignore[arg-type]
    )
    return found, owner


def test_walls_meeting_at_corners_are_split_into_one_instance_each() -> None:
    walls = room_walls()
    cfg = InstanceConfig()
    found, owner = find(walls, [0.6] * 4, cfg, voxel_size_m=VOXEL_M)
    assert len(found) == 4
    for inst in found:
        share = np.bincount(owner[inst.voxel_indices], minlength=4) / len(inst.voxel_indices)
        wall = int(share.argmax())
        assert share[wall] > 0.97
        overlap = np.intersect1d(inst.voxel_indices, np.flatnonzero(owner == wall)).size
        assert overlap / len(walls[wall]) > 0.9
    # Without the voxel size (or with the split off) the ring stays one connected instance.
    assert len(find(walls, [0.6] * 4, cfg)[0]) == 1
    off = InstanceConfig(split_min_area_m2=0.0)
    assert len(find(walls, [0.6] * 4, off, voxel_size_m=VOXEL_M)[0]) == 1


def test_objects_with_one_large_face_are_not_split() -> None:
    cfg = InstanceConfig()
    # A bed's surface: a 2 x 1.6 m top (3.2 m^2) on 0.5 m sides (at most 1 m^2 each).
    top = grid((0, 0, 10), (40, 32, 10))
    sides = [
        grid((0, 0, 0), (40, 0, 9)),
        grid((0, 32, 0), (40, 32, 9)),
        grid((0, 1, 0), (0, 31, 9)),
        grid((40, 1, 0), (40, 31, 9)),
    ]
    bed = np.concatenate([top, *sides])
    assert not split_planar(bed, voxel_size_m=VOXEL_M, config=cfg).any()
    # A wardrobe's surface: a 2 x 1.2 m front (2.4 m^2), 0.6 m deep sides (1.2 m^2).
    wardrobe = np.concatenate(
        [
            grid((0, 0, 0), (24, 0, 40)),
            grid((0, 12, 0), (24, 12, 40)),
            grid((0, 1, 0), (0, 11, 40)),
            grid((24, 1, 0), (24, 11, 40)),
            grid((1, 1, 40), (23, 11, 40)),
        ]
    )
    assert not split_planar(wardrobe, voxel_size_m=VOXEL_M, config=cfg).any()
    # Two room-sized walls at an angle are split; the same walls scaled to a cabinet are not.
    corner = np.concatenate(room_walls()[::2])
    assert len(np.unique(split_planar(corner, voxel_size_m=VOXEL_M, config=cfg))) == 2
    small = np.concatenate(room_walls(12, 12, 20)[::2])
    assert not split_planar(small, voxel_size_m=VOXEL_M, config=cfg).any()


def test_instances_ranked_by_mass_and_fragments_pruned() -> None:
    chair = grid((0, 0, 0), (7, 7, 9))  # 640 voxels, mean score 0.5
    fragment = grid((30, 0, 0), (3 + 30, 3, 0))  # 16 voxels of something else scoring 0.9
    other_chair = grid((0, 30, 0), (6, 36, 8))  # 441 voxels, 0.45
    cfg = InstanceConfig()
    found, owner = find([chair, fragment, other_chair], [0.5, 0.9, 0.45], cfg)
    # Mass (score x voxels) orders them: the confident fragment does not outrank the chairs.
    assert [int(owner[i.voxel_indices[0]]) for i in found] == [0, 2, 1]
    assert found[0].mass == pytest.approx(0.5 * 640)
    kept = prune_instances(found, cfg.min_relative_mass)
    assert [int(owner[i.voxel_indices[0]]) for i in kept] == [0, 2]
    assert len(prune_instances(found, 0.0)) == 3
    assert prune_instances([], 0.5) == []


def test_instance_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="min_relative_mass"):
        InstanceConfig(min_relative_mass=1.5)
    with pytest.raises(ValueError, match="plane_angle_deg"):
        InstanceConfig(plane_angle_deg=90.0)
    with pytest.raises(ValueError, match="plane_cell_m"):
        InstanceConfig(plane_cell_m=0.0)


def test_cluster_voxels_numbers_components_like_the_graph_search() -> None:
    # The compiled union-find must give the labels of a plain graph search over the
    # 26-neighbour edges (scipy's connected_components), numbering included.
    from diff2scene.query.instances import _cell_edges, _components, cluster_voxels

    rng = np.random.default_rng(3)
    for _ in range(20):
        span = int(rng.integers(2, 30))
        coords = rng.integers(-span, span, (int(rng.integers(1, 2000)), 3)).astype(np.int32)
        for connectivity in (1, 2):
            cells = np.floor_divide(coords.astype(np.int64), connectivity)
            cell_of, rows, cols, n = _cell_edges(cells)
            want = _components(rows, cols, n)[cell_of]
            np.testing.assert_array_equal(
                cluster_voxels(coords, connectivity_voxels=connectivity), want
            )

"""A keyframe's surface refresh costs what the keyframe saw, not what the map holds.

Work that copies or compares the whole map shows up as memory: every O(map) pass of numpy
allocates an O(map) temporary (the update used to copy all coordinates and colours, the map
compared all of them). So the peak of traced allocations during a keyframe's refresh, apply
and snapshot must be the same in front of 2M voxels as in front of 200k.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from diff2scene.mapping import Mapper, SemanticMap, SurfaceUpdate
from tests.diff2scene.mapping.test_mapper import small_config


def far_voxels(n: int) -> np.ndarray:
    """(n, 3) distinct voxels of a sheet far below the test scene (never on its surface)."""
    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    return np.stack([i // side, i % side, np.full(n, -400)], axis=1).astype(np.int32)


def keyframe_peak_bytes(pre_existing: int, frames: list) -> tuple[int, int]:
    """Traced peak of one keyframe's refresh + apply + snapshot on a map of ``pre_existing``
    voxels (after a first keyframe that grew every buffer), and the voxels it updated."""
    coords = far_voxels(pre_existing)
    colors = np.full((pre_existing, 3), 9, np.uint8)
    mapper = Mapper(small_config())
    mapper.seed_voxels(coords, colors)
    smap = SemanticMap(mapper.config.voxel_size_m, members_per_voxel=2)
    smap.apply_surface_update(SurfaceUpdate.appending(smap.voxel_size_m, coords, colors))
    del coords, colors
    for frame in frames[:-2]:
        assert mapper.integrate(frame)
    smap.apply_surface_update(mapper.update_voxels())
    held = smap.snapshot()  # a reader holds the map: writes copy blocks
    for frame in frames[-2:]:
        assert mapper.integrate(frame)
    tracemalloc.start()
    try:
        update = mapper.update_voxels()
        smap.apply_surface_update(update)
        smap.snapshot()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held.num_voxels == update.new_start
    np.testing.assert_array_equal(smap.colors, mapper.colors)
    return peak, int(update.updated_index.size)


def test_keyframe_memory_traffic_does_not_grow_with_the_map(orbit_frames):
    frames = orbit_frames[:12]
    small, updated_small = keyframe_peak_bytes(200_000, frames)
    large, updated_large = keyframe_peak_bytes(2_000_000, frames)
    assert updated_small == updated_large > 1000  # the same keyframe
    # One pass over the large map's colours alone allocates 6 MB, a copy of its coordinates
    # 24 MB; a copied row block of a table (colours: 192 KiB) is the most a keyframe may add.
    assert large <= small + (1 << 20), (small, large)

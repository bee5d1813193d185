"""Fusion accuracy, stable voxel identity and counted frame rejection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from diff2scene.config import from_dict
from diff2scene.errors import ConfigError
from diff2scene.mapping.mapper import (
    SKIP_BAD_INPUT,
    SKIP_INVALID_POSE,
    SKIP_NO_VALID_DEPTH,
    SKIP_OUT_OF_ORDER,
    SKIP_OUTSIDE_BOUNDS,
    SKIP_POSE_JUMP,
    Mapper,
    MapperConfig,
    _to_o3d,
)

VOXEL_M = 0.05


def small_config(**overrides: object) -> MapperConfig:
    base = {
        "voxel_size_m": VOXEL_M,
        "block_resolution": 8,
        "trunc_voxel_multiplier": 3.0,
        "device": "CPU:0",
    }
    base.update(overrides)
    return from_dict(MapperConfig, base)


@pytest.fixture(scope="module")
def fused(orbit_frames):
    mapper = Mapper(small_config())
    for frame in orbit_frames:
        assert mapper.integrate(frame), mapper.stats.last_skip_detail
    return mapper, mapper.update_voxels()


def test_surface_voxels_lie_on_ground_truth_surface(fused, ray_scene):
    mapper, update = fused
    assert update.num_voxels > 3000
    points = mapper.points_m
    np.testing.assert_array_equal(update.new_points_m, points)  # all new in the first update
    dist = ray_scene.distance(points)
    within = float(np.mean(dist <= VOXEL_M + 1e-4))
    assert within >= 0.95, f"only {within:.3f} of voxels within one voxel of the surface"
    # Every object that the orbit sees is reconstructed, not just the floor.
    seen_instances = np.unique(ray_scene.closest_instance(points[dist <= VOXEL_M]))
    assert set(seen_instances.tolist()) >= {1, 2, 3, 4, 5}


def test_surface_voxels_carry_the_fused_colour(fused, ray_scene):
    mapper, update = fused
    inst = ray_scene.closest_instance(mapper.points_m)
    palette = ray_scene.palette.astype(np.int16)
    np.testing.assert_array_equal(update.updated_index, np.arange(update.num_voxels))
    np.testing.assert_array_equal(update.updated_colors, mapper.colors)
    # The rendered texture darkens half the pixels by 20 grey levels, so fused colours lie
    # between the object colour and 20 below it.
    diff = palette[inst] - mapper.colors.astype(np.int16)
    ok = np.all((diff >= -2) & (diff <= 22), axis=1)
    assert float(np.mean(ok)) >= 0.9


def test_voxel_identity_is_stable_and_new_voxels_are_appended(ray_scene, orbit_frames):
    mapper = Mapper(small_config())
    for frame in orbit_frames[:10]:
        mapper.integrate(frame)
    first = mapper.update_voxels()
    first_coords = mapper.coords
    assert first.new_start == 0 and first.sequence == 1
    assert first.num_voxels > 0
    np.testing.assert_array_equal(first.new_coords, first_coords)
    for frame in orbit_frames[10:]:
        mapper.integrate(frame)
    second = mapper.update_voxels()
    second_coords = mapper.coords
    assert second.new_start == first.num_voxels and second.sequence == 2
    assert second.num_new > 0 and second.num_voxels == mapper.num_voxels
    np.testing.assert_array_equal(second_coords[: first.num_voxels], first_coords)
    np.testing.assert_array_equal(second.new_coords, second_coords[first.num_voxels :])
    assert np.unique(second_coords, axis=0).shape[0] == second.num_voxels
    # every new voxel was found on the surface, and the colours are the mapper's
    assert np.isin(np.arange(first.num_voxels, second.num_voxels), second.updated_index).all()
    assert np.all(np.diff(second.updated_index) > 0)
    np.testing.assert_array_equal(second.updated_colors, mapper.colors[second.updated_index])
    # Nothing integrated since: an update changes nothing.
    third = mapper.update_voxels()
    assert third.num_new == 0 and third.new_start == second.num_voxels
    assert third.updated_index.size == 0 and third.updated_colors.shape == (0, 3)
    np.testing.assert_array_equal(mapper.coords, second_coords)
    # Re-observing refreshes colours of known voxels without renumbering them.
    mapper.integrate(orbit_frames[-1])
    fourth = mapper.update_voxels()
    assert fourth.updated_index.size > 0
    np.testing.assert_array_equal(mapper.coords[: third.num_voxels], second_coords)


def test_bad_frames_are_counted_and_skipped(orbit_frames):
    mapper = Mapper(small_config(bounds_min_m=(-3.0, -3.0, -1.0), bounds_max_m=(3.0, 3.0, 3.0)))
    good = orbit_frames[0]
    assert mapper.integrate(good)
    blocks_before = mapper.num_blocks

    jumped = dataclasses.replace(
        good, stamp_ns=good.stamp_ns + 1, T_world_camera=good.T_world_camera.copy()
    )
    jumped.T_world_camera[:3, 3] += (1.0, 0.0, 0.0)
    no_depth = dataclasses.replace(
        good, stamp_ns=good.stamp_ns + 7, depth_m=np.full_like(good.depth_m, np.nan)
    )
    far = good.T_world_camera.copy()
    far[:3, 3] = (10.0, 0.0, 1.0)
    outside = dataclasses.replace(good, stamp_ns=good.stamp_ns + 3, T_world_camera=far)
    bad_shape = dataclasses.replace(good, stamp_ns=good.stamp_ns + 8, depth_m=good.depth_m[:-1])
    bad_pose = good.T_world_camera.copy()
    bad_pose[:3, :3] *= 2.0
    non_rigid = dataclasses.replace(good, stamp_ns=good.stamp_ns + 9, T_world_camera=bad_pose)

    assert not mapper.integrate(jumped)
    assert mapper.stats.last_skip_reason == SKIP_POSE_JUMP
    assert mapper.integrate(dataclasses.replace(good, stamp_ns=good.stamp_ns + 6)) is False
    assert mapper.stats.skipped[SKIP_POSE_JUMP] == 2  # the frame after a jump is a jump back
    assert not mapper.integrate(no_depth)
    assert not mapper.integrate(bad_shape)
    assert not mapper.integrate(non_rigid)
    stale = dataclasses.replace(good, stamp_ns=good.stamp_ns - 1)
    assert not mapper.integrate(stale)
    mapper2 = Mapper(small_config(bounds_min_m=(-3.0, -3.0, -1.0), bounds_max_m=(3.0, 3.0, 3.0)))
    assert not mapper2.integrate(outside)

    assert mapper.stats.skipped[SKIP_NO_VALID_DEPTH] == 1
    assert mapper.stats.skipped[SKIP_BAD_INPUT] == 1
    assert mapper.stats.skipped[SKIP_INVALID_POSE] == 1
    assert mapper.stats.skipped[SKIP_OUT_OF_ORDER] == 1
    assert mapper2.stats.skipped[SKIP_OUTSIDE_BOUNDS] == 1
    assert mapper.stats.frames_integrated == 1
    assert mapper.stats.frames_received == 7
    assert mapper.num_blocks == blocks_before
    assert mapper2.num_blocks == 0


def test_bounds_clip_the_map(orbit_frames):
    mapper = Mapper(small_config(bounds_min_m=(-3.0, -3.0, -0.5), bounds_max_m=(3.0, 3.0, 0.5)))
    for frame in orbit_frames[:8]:
        assert mapper.integrate(frame) is False  # cameras fly at 1.4 m, above the bounds
    assert mapper.stats.skipped[SKIP_OUTSIDE_BOUNDS] == 8
    mapper = Mapper(small_config(bounds_min_m=(-3.0, -3.0, -0.5), bounds_max_m=(3.0, 3.0, 2.0)))
    for frame in orbit_frames[:8]:
        assert mapper.integrate(frame)
    update = mapper.update_voxels()
    block_m = 8 * VOXEL_M
    assert update.num_voxels > 0
    assert mapper.points_m[:, 2].max() < 2.0 + block_m
    assert mapper.points_m[:, 2].min() > -0.5 - block_m


def test_config_is_validated():
    with pytest.raises(ConfigError):
        from_dict(MapperConfig, {"voxel_size_m": 0.0})
    with pytest.raises(ConfigError):
        from_dict(MapperConfig, {"depth_min_m": 3.0, "depth_max_m": 1.0})
    with pytest.raises(ConfigError):
        from_dict(MapperConfig, {"bounds_min_m": [0, 0, 0]})
    with pytest.raises(ConfigError):
        from_dict(MapperConfig, {"device": "GPU"})
    with pytest.raises(ConfigError):
        from_dict(MapperConfig, {"voxel_size": 0.02})
    assert MapperConfig().sdf_trunc_m == pytest.approx(0.08)


def test_incremental_refresh_matches_a_single_extraction(orbit_frames):
    """Refreshing every few frames (dirty blocks + neighbours only) finds every voxel that one
    refresh at the end finds; the extra ones are voxels that were surface earlier."""
    incremental = Mapper(small_config())
    once = Mapper(small_config())
    for i, frame in enumerate(orbit_frames):
        incremental.integrate(frame)
        once.integrate(frame)
        if i % 3 == 2:
            incremental.update_voxels()
    incremental.update_voxels()
    once.update_voxels()
    inc_set = {tuple(c) for c in incremental.coords.tolist()}
    ref_set = {tuple(c) for c in once.coords.tolist()}
    assert ref_set <= inc_set
    assert len(inc_set - ref_set) < 0.1 * len(ref_set)


def test_a_loaded_map_keeps_growing_with_a_seeded_mapper(orbit_frames, tmp_path):
    from diff2scene.errors import InputError
    from diff2scene.mapping import SemanticMap

    first = Mapper(small_config())
    for frame in orbit_frames[:15]:
        first.integrate(frame)
    smap = SemanticMap(VOXEL_M)
    smap.apply_surface_update(first.update_voxels())
    smap.view_counts = np.ones(smap.num_voxels, dtype=np.int32)
    loaded = SemanticMap.load(smap.save(tmp_path / "map.npz"))

    resumed = Mapper(small_config())
    resumed.seed_voxels(loaded.coords, loaded.colors)
    for frame in orbit_frames[10:]:
        resumed.integrate(frame)
    loaded.apply_surface_update(resumed.update_voxels())  # extends, does not restart
    assert loaded.num_voxels > smap.num_voxels
    np.testing.assert_array_equal(loaded.coords[: smap.num_voxels], smap.coords)
    assert np.all(loaded.view_counts[: smap.num_voxels] == 1)
    with pytest.raises(InputError):
        resumed.seed_voxels(loaded.coords, loaded.colors)


def test_pose_jump_gate_is_on_speed_so_motion_after_a_gap_is_kept(orbit_frames):
    mapper = Mapper(small_config())
    good = orbit_frames[0]
    assert mapper.integrate(good)
    moved = good.T_world_camera.copy()
    moved[:3, 3] += (0.5, 0.0, 0.0)
    # 0.5 m after a 1 s gap (0.5 m/s) is ordinary motion; 0.5 m in 33 ms is a jump
    after_gap = dataclasses.replace(good, stamp_ns=good.stamp_ns + 10**9, T_world_camera=moved)
    assert mapper.integrate(after_gap)
    back = dataclasses.replace(good, stamp_ns=after_gap.stamp_ns + 33_000_000)
    assert not mapper.integrate(back)
    assert mapper.stats.last_skip_reason == SKIP_POSE_JUMP


def test_a_full_working_set_evicts_old_blocks_without_growing_or_losing_voxels(orbit_frames):
    whole = Mapper(small_config())
    for frame in orbit_frames:
        whole.integrate(frame)
    whole.update_voxels()
    assert whole.stats.blocks_evicted == 0
    # One frame of the orbit touches up to ~60 % of it, and a frame's blocks must fit beside
    # the kept ones: this working set fills up once near the end (a much smaller one would
    # evict blocks before they are seen twice, and a surface needs two observations).
    capacity = whole.num_blocks + 160
    mapper = Mapper(small_config(max_tsdf_blocks=capacity))
    for frame in orbit_frames:
        assert mapper.integrate(frame), mapper.stats.last_skip_detail
        assert mapper.num_blocks <= capacity
        # the hash map was allocated once: growing it would rehash (a stall on a big map)
        assert int(mapper._vbg.hashmap().capacity()) == capacity
    update = mapper.update_voxels()
    assert mapper.stats.blocks_evicted > 0
    # the surface of evicted blocks was extracted before they left: nothing was lost
    ref = {tuple(c) for c in whole.coords.tolist()}
    got = {tuple(c) for c in mapper.coords.tolist()}
    assert len(ref & got) >= 0.9 * len(ref)
    assert update.new_start == 0 and update.num_voxels == len(got) == mapper.num_voxels
    # the voxels extracted by evictions reach the one update, with their colours
    np.testing.assert_array_equal(update.new_coords, mapper.coords)
    np.testing.assert_array_equal(update.updated_index, np.arange(len(got)))
    np.testing.assert_array_equal(update.updated_colors, mapper.colors)


def test_a_revisited_region_is_fused_afresh_into_the_same_voxels(orbit_frames):
    capacity = 400
    mapper = Mapper(small_config(max_tsdf_blocks=capacity))
    first = orbit_frames[:6]
    for frame in first:
        mapper.integrate(frame)
    before = mapper.update_voxels()
    before_coords = mapper.coords
    # evict everything the first frames saw, then look again from the same places
    for name in ("tsdf", "weight", "color"):
        assert mapper._vbg.attribute(name).shape[0] == capacity
    far_away = _to_o3d(np.array([[1000, 1000, 1000]], np.int32), mapper.device)
    mapper._make_room(far_away, capacity)  # a "frame" that needs the whole map
    assert mapper.num_blocks == 0 and mapper.stats.blocks_evicted > 0
    for i, frame in enumerate(first):
        # same views again, later stamps (the pose-jump gate compares with the last frame)
        again = dataclasses.replace(frame, stamp_ns=first[-1].stamp_ns + (i + 1) * 10**8)
        if i == 0:
            mapper._prev_pose = None
        assert mapper.integrate(again), mapper.stats.last_skip_detail
    weight = mapper._vbg.attribute("weight").numpy()
    active = mapper._vbg.hashmap().active_buf_indices().numpy()
    # freed buffers were cleared: nothing older than the six new integrations remains
    assert int(weight[active].max()) <= len(first)
    after = mapper.update_voxels()
    np.testing.assert_array_equal(mapper.coords[: before.num_voxels], before_coords)
    # the re-observed surface maps onto the voxels it had: few new numbers
    assert after.num_new <= 0.05 * before.num_voxels
    assert np.intersect1d(after.updated_index, np.arange(before.num_voxels)).size > 0


def test_a_map_following_the_updates_holds_the_mappers_voxels(orbit_frames):
    """Updates carry only what changed; applied in order (evictions between them too), the
    map holds every voxel and colour of the mapper, and a snapshot keeps what it saw."""
    from diff2scene.mapping import SemanticMap

    mapper = Mapper(small_config(max_tsdf_blocks=260))
    smap = SemanticMap(VOXEL_M)
    snapshots = []
    for i, frame in enumerate(orbit_frames):
        assert mapper.integrate(frame), mapper.stats.last_skip_detail
        if i % 4 == 3:
            smap.apply_surface_update(mapper.update_voxels())
            np.testing.assert_array_equal(smap.coords, mapper.coords)
            np.testing.assert_array_equal(smap.colors, mapper.colors)
            snapshots.append((smap.snapshot(), mapper.colors.copy()))
    assert mapper.stats.blocks_evicted > 0
    changed = 0
    for snap, colors in snapshots:
        np.testing.assert_array_equal(snap.colors, colors)
        changed += not np.array_equal(colors, mapper.colors[: len(colors)])
    assert changed  # later updates did recolour voxels that earlier snapshots hold

"""Spilling a semantic map's blocks to disk: nothing changes but where the rows are."""

from __future__ import annotations

import numpy as np
import pytest

from diff2scene.errors import DataFormatError
from diff2scene.mapping import SemanticMap, SurfaceUpdate
from diff2scene.mapping.spill import SpillStore
from tests.diff2scene.mapping.test_semantic_map import assert_maps_equal, random_mask_set

ROWS = 256  # voxels per block in these maps


def grown_map(rng: np.random.Generator, voxels: int = 5 * ROWS + 17) -> SemanticMap:
    """A map of several blocks whose memberships were written through the keyframe path."""
    smap = SemanticMap(0.02, members_per_voxel=4, block_rows=ROWS)
    coords = np.stack(np.unravel_index(np.arange(voxels), (64, 64, 64)), axis=1).astype(np.int32)
    smap.apply_surface_update(SurfaceUpdate.appending(
        0.02, coords, rng.integers(0, 256, size=(voxels, 3)).astype(np.uint8)))
    for kf in range(4):
        ids = smap.mask_bank.append(random_mask_set(rng, 5), kf)
        voxels_seen = rng.choice(voxels, size=voxels // 3, replace=False)
        plan = smap.plan_rows(voxels_seen)
        smap.count_views(plan)
        old_ids, old_w = smap.gather_memberships(plan)
        old_ids[:, 0] = rng.choice(ids, size=voxels_seen.size).astype(np.int32)
        old_w[:, 0] = rng.random(voxels_seen.size, dtype=np.float32)
        smap.write_memberships(plan, old_ids, old_w)
    smap.gather_memberships(np.array([voxels - 1]))  # the latest keyframe saw the last block
    return smap


def copy_of(smap: SemanticMap) -> SemanticMap:
    """An independent map with the same contents, nothing spilled."""
    other = SemanticMap(smap.voxel_size_m, members_per_voxel=smap.members_per_voxel)
    other.coords = smap.coords
    other.colors = smap.colors
    other.member_ids = smap.member_ids
    other.member_weights = smap.member_weights
    other.view_counts = smap.view_counts
    other.mask_bank = smap.mask_bank
    return other


def test_spilled_blocks_leave_memory_and_come_back_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    smap = grown_map(rng)
    before = copy_of(smap)
    store = SpillStore(tmp_path / "spill")
    smap.attach_spill_store(store)
    full = smap.memory_nbytes
    spilled = smap.enforce_budget(full - 3 * ROWS * 50)  # room for about two blocks less
    assert spilled >= 2 and smap.spilled_blocks == spilled
    assert smap.memory_nbytes < full - 2 * ROWS * 50
    assert smap.spilled_nbytes == spilled * ROWS * (3 + 16 + 16 + 4)
    assert len(list((tmp_path / "spill").glob("block-*.npz"))) == spilled
    # Map-wide reads and a save see every voxel, wherever it is.
    assert_maps_equal(smap, before)
    path = smap.save(tmp_path / "map.npz")
    assert_maps_equal(SemanticMap.load(path), before)
    # A keyframe that touches spilled voxels brings their blocks back first.
    ids, weights = smap.gather_memberships(np.arange(smap.num_voxels))
    np.testing.assert_array_equal(ids, before.member_ids)
    np.testing.assert_array_equal(weights, before.member_weights)
    assert smap.spilled_blocks == 0 and smap.blocks_reloaded == spilled
    assert_maps_equal(smap, before)


def test_snapshot_of_a_spilled_map_holds_the_blocks_in_memory_and_says_what_it_left_out(
    tmp_path,
):
    rng = np.random.default_rng(1)
    smap = grown_map(rng)
    smap.attach_spill_store(SpillStore(tmp_path))
    whole = smap.snapshot()
    assert whole.voxel_numbers is None and whole.voxels_not_searched == 0
    smap.count_views(smap.plan_rows(np.arange(4 * ROWS, 5 * ROWS)))  # blocks 4 used last
    smap.enforce_budget(smap.memory_nbytes - 2 * ROWS * 50)
    snap = smap.snapshot()
    assert snap.version != whole.version
    assert snap.voxels_not_searched == smap.spilled_voxels > 0
    assert snap.num_voxels + snap.voxels_not_searched == smap.num_voxels
    numbers = snap.voxel_numbers
    assert numbers is not None
    np.testing.assert_array_equal(snap.coords, smap.coords[numbers])
    np.testing.assert_array_equal(snap.member_ids, smap.member_ids[numbers])
    np.testing.assert_array_equal(snap.view_counts, smap.view_counts[numbers])
    # The least recently used blocks went (block 0 first), the last one stayed.
    assert 0 not in set(numbers // ROWS) and 4 in set(numbers // ROWS)
    # The boxes cover the voxels that were left out.
    left_out = np.setdiff1d(np.arange(smap.num_voxels), numbers)
    pts = smap.points_m[left_out]
    boxes = snap.not_searched_boxes_m
    inside = np.zeros(pts.shape[0], bool)
    for lo, hi in boxes:
        inside |= np.all((pts >= lo) & (pts <= hi), axis=1)
    assert inside.all()


def test_a_written_block_is_stored_again_and_a_clean_one_is_not(tmp_path):
    rng = np.random.default_rng(2)
    smap = grown_map(rng)
    store = SpillStore(tmp_path)
    smap.attach_spill_store(store)
    smap.enforce_budget(0)  # everything but the last block and the latest touched
    first = store.bytes_written
    assert first > 0
    smap.gather_memberships(np.arange(ROWS))  # block 0 back, read only
    smap.count_views(smap.plan_rows(np.arange(ROWS, 2 * ROWS)))  # block 1 back, written
    expected = smap.view_counts
    smap.gather_memberships(np.array([smap.num_voxels - 1]))  # a later keyframe
    smap.enforce_budget(0)
    # Block 0 was unchanged: its file still held it; block 1 had to be written again.
    assert store.bytes_written - first == ROWS * (3 + 16 + 16 + 4)
    np.testing.assert_array_equal(smap.view_counts, expected)


def test_a_corrupt_spill_file_is_an_error_not_a_silent_change(tmp_path):
    rng = np.random.default_rng(3)
    smap = grown_map(rng)
    smap.attach_spill_store(SpillStore(tmp_path))
    smap.enforce_budget(0)
    victim = sorted(tmp_path.glob("block-*.npz"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the rows
    victim.write_bytes(bytes(data))
    with pytest.raises(DataFormatError):
        smap.gather_memberships(np.arange(smap.num_voxels))


def test_a_store_clears_what_an_earlier_process_left(tmp_path):
    (tmp_path / "block-0000001-1.npz").write_bytes(b"old")
    (tmp_path / ".block-0000002-3.npz").write_bytes(b"half")
    store = SpillStore(tmp_path)
    assert list(tmp_path.iterdir()) == []
    store.close()
    assert tmp_path.exists()  # given directories stay; own temporary ones go
    own = SpillStore()
    own.close()
    assert not own.directory.exists()

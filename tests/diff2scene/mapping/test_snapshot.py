"""Map snapshots: frozen against later mapping, cheap to take, versioned."""

import numpy as np
import pytest

from diff2scene.errors import InputError
from diff2scene.mapping import MaskUnprojector, SemanticMap, SurfaceUpdate, Unprojection
from diff2scene.mapping.snapshot import MapSnapshot, RowBlocks
from diff2scene.types import SPACE_CLIP, MaskSet


def surface(coords: np.ndarray, start: int) -> SurfaceUpdate:
    """The update that takes a map of ``coords[:start]`` to ``coords``, giving every voxel a
    colour that depends on ``start`` (so a later update changes the colours of earlier ones)."""
    colors = ((coords + start) % 256).astype(np.uint8)
    return SurfaceUpdate(
        voxel_size_m=0.05,
        new_start=start,
        new_coords=coords[start:].astype(np.int32),
        updated_index=np.arange(len(coords)),
        updated_colors=colors,
    )


def keyframe(rng: np.random.Generator, smap: SemanticMap, n_masks: int, kf: int) -> None:
    vox = rng.choice(smap.num_voxels, size=smap.num_voxels // 2, replace=False)
    weights = rng.random((n_masks, vox.size), dtype=np.float32)
    masks = MaskSet(
        masks=np.zeros((n_masks, 1, 1), np.float32),
        embeddings={SPACE_CLIP: rng.standard_normal((n_masks, 4)).astype(np.float32)},
    )
    MaskUnprojector().accumulate(smap, Unprojection(vox, weights, vox), masks, kf)


def test_row_blocks_copy_only_the_blocks_written_after_a_freeze() -> None:
    store = RowBlocks((2,), np.int32, -1, block_rows=4)
    store.append(10)  # blocks of 4, 4, 2 rows
    store.scatter(np.arange(10), np.arange(20, dtype=np.int32).reshape(10, 2))
    frozen = store.freeze()
    store.scatter(np.array([9, 1]), np.array([[7, 7], [8, 8]], np.int32))
    assert store.cow_copies == 2  # blocks 0 and 2, not block 1
    store.append(3)  # grows the shared last block: a new array, the frozen one keeps its rows
    np.testing.assert_array_equal(frozen.to_array(), np.arange(20).reshape(10, 2))
    now = store.to_array()
    np.testing.assert_array_equal(now[[1, 9]], [[8, 8], [7, 7]])
    np.testing.assert_array_equal(now[10:], -1)
    np.testing.assert_array_equal(store.gather(np.array([12, 0, 5])), [[-1, -1], [0, 1], [10, 11]])
    with pytest.raises(InputError):
        store.gather(np.array([13]))
    with pytest.raises(InputError):
        RowBlocks((2,), np.int32, -1, block_rows=3)


@pytest.mark.parametrize(("row_shape", "dtype"), [((3,), np.float32), ((), np.int32)])
def test_one_row_plan_serves_gather_and_scatter_like_a_plain_array(row_shape, dtype) -> None:
    # What accumulate does: one plan of unsorted rows spanning several blocks, used for
    # gathers and scatters in tables of different row shapes and dtypes.
    rng = np.random.default_rng(0)
    store = RowBlocks(row_shape, dtype, 0, block_rows=8)
    store.append(37)
    plain = rng.integers(0, 100, (37, *row_shape)).astype(dtype)
    store.scatter(np.arange(37), plain)
    rows = rng.permutation(37)[:20]
    plan = store.plan(rows)
    np.testing.assert_array_equal(store.gather(plan), plain[rows])
    new = rng.integers(100, 200, (20, *row_shape)).astype(dtype)
    store.freeze()
    store.scatter(plan, new)
    plain[rows] = new
    np.testing.assert_array_equal(store.to_array(), plain)
    assert store.plan(np.array([], np.int64)).segments == ()
    assert store.gather(np.array([], np.int64)).shape == (0, *row_shape)
    with pytest.raises(InputError):
        store.plan(np.array([3, -1]))
    with pytest.raises(InputError):
        store.scatter(plan, new[:5])
    with pytest.raises(InputError):  # a plan for other blocks
        store.gather(RowBlocks(row_shape, dtype, 0, block_rows=16).plan(np.array([1])))


def test_snapshot_is_frozen_while_the_map_goes_on() -> None:
    rng = np.random.default_rng(0)
    smap = SemanticMap(0.05, members_per_voxel=4)
    coords = np.unique(rng.integers(0, 50, (400, 3)), axis=0)
    smap.apply_surface_update(surface(coords[:300], 0))
    keyframe(rng, smap, 6, 0)
    smap.features_3d = {SPACE_CLIP: rng.standard_normal((300, 4)).astype(np.float16)}
    snap = smap.snapshot()
    assert smap.snapshot() is snap  # unchanged map: the same snapshot, no new freeze
    before = {
        "ids": smap.member_ids.copy(),
        "weights": smap.member_weights.copy(),
        "views": smap.view_counts.copy(),
        "colors": smap.colors.copy(),
        "coords": smap.coords.copy(),
        "features": smap.features_3d[SPACE_CLIP].copy(),
    }
    versions = [smap.version]
    keyframe(rng, smap, 5, 1)
    versions.append(smap.version)
    smap.apply_surface_update(surface(coords, 300))
    versions.append(smap.version)
    smap.features_3d = {SPACE_CLIP: np.zeros((len(coords), 4), np.float16)}
    versions.append(smap.version)
    assert versions == sorted(set(versions))  # every mutation: a new, larger version
    assert snap.version == versions[0]
    assert snap.num_voxels == 300 and snap.num_masks == 6 and smap.mask_bank.num_masks == 11
    np.testing.assert_array_equal(snap.member_ids, before["ids"])
    np.testing.assert_array_equal(snap.member_weights, before["weights"])
    np.testing.assert_array_equal(snap.view_counts, before["views"])
    np.testing.assert_array_equal(snap.colors, before["colors"])
    np.testing.assert_array_equal(snap.coords, before["coords"])
    np.testing.assert_array_equal(snap.features_3d[SPACE_CLIP], before["features"])
    np.testing.assert_allclose(snap.points_m, snap.coords * 0.05, atol=1e-6)
    assert not np.array_equal(smap.member_ids[:300], before["ids"])  # the map did change
    assert not np.array_equal(smap.colors[:300], before["colors"])
    np.testing.assert_array_equal(smap.colors, (coords + 300) % 256)
    for arr in (snap.coords, snap.member_ids, snap.points_m, snap.bank_embeddings[SPACE_CLIP]):
        with pytest.raises(ValueError):
            arr[0] = 0
    later = smap.snapshot()
    assert later.version == smap.version > snap.version
    np.testing.assert_array_equal(later.member_ids, smap.member_ids)


def test_snapshot_from_arrays_validates_shapes() -> None:
    coords = np.zeros((3, 3), np.int32)
    ids = np.full((3, 2), -1, np.int32)
    w = np.zeros((3, 2), np.float32)
    snap = MapSnapshot.from_arrays(
        voxel_size_m=0.1, coords=coords, member_ids=ids, member_weights=w, bank_embeddings={}
    )
    assert snap.num_voxels == 3 and snap.num_masks == 0 and snap.members_per_voxel == 2
    with pytest.raises(InputError):
        MapSnapshot.from_arrays(
            voxel_size_m=0.1, coords=coords, member_ids=ids[:2], member_weights=w[:2],
            bank_embeddings={},
        )

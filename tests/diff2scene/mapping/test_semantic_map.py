"""Semantic map persistence (exact round trip, rejection of bad files) and the mask bank."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from diff2scene.errors import DataFormatError, InputError
from diff2scene.mapping import MaskBank, SemanticMap, SurfaceUpdate
from diff2scene.mapping.semantic_map import FORMAT_VERSION
from diff2scene.types import SPACE_CLIP, SPACE_DIFFUSION, MaskSet


def random_mask_set(rng: np.random.Generator, n: int, classes: int = 3) -> MaskSet:
    return MaskSet(
        masks=rng.random((n, 4, 5), dtype=np.float32),
        embeddings={
            SPACE_DIFFUSION: rng.standard_normal((n, 16)).astype(np.float32),
            SPACE_CLIP: rng.standard_normal((n, 24)).astype(np.float32),
        },
        class_probs=rng.random((n, classes), dtype=np.float32),
    )


def filled_map(rng: np.random.Generator) -> SemanticMap:
    smap = SemanticMap(0.02, members_per_voxel=3)
    coords = rng.integers(-500, 500, size=(50, 3)).astype(np.int32)
    update = SurfaceUpdate.appending(
        0.02, coords, rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    )
    smap.apply_surface_update(update)
    for kf in range(3):
        smap.mask_bank.append(random_mask_set(rng, 4 + kf), kf)
    k = smap.mask_bank.num_masks
    smap.member_ids = rng.integers(-1, k, size=smap.member_ids.shape).astype(np.int32)
    smap.member_weights = rng.random(smap.member_weights.shape, dtype=np.float32)
    smap.view_counts = rng.integers(0, 9, size=50).astype(np.int32)
    smap.features_3d = {SPACE_CLIP: rng.standard_normal((50, 24)).astype(np.float16)}
    smap.metadata = {"mapper": {"voxel_size_m": 0.02, "device": "CPU:0"}, "source": "test"}
    return smap


def assert_maps_equal(a: SemanticMap, b: SemanticMap) -> None:
    assert a.voxel_size_m == b.voxel_size_m
    for name in ("coords", "colors", "member_ids", "member_weights", "view_counts"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert a.mask_bank.embeddings.keys() == b.mask_bank.embeddings.keys()
    for space in a.mask_bank.embeddings:
        np.testing.assert_array_equal(a.mask_bank.embeddings[space], b.mask_bank.embeddings[space])
    np.testing.assert_array_equal(a.mask_bank.keyframe_ids, b.mask_bank.keyframe_ids)
    pa, pb = a.mask_bank.class_probs, b.mask_bank.class_probs
    assert (pa is None) == (pb is None)
    if pa is not None and pb is not None:
        np.testing.assert_array_equal(pa, pb)
    assert a.features_3d.keys() == b.features_3d.keys()
    for space in a.features_3d:
        assert b.features_3d[space].dtype == np.float16
        np.testing.assert_array_equal(a.features_3d[space], b.features_3d[space])
    assert a.metadata == b.metadata


def test_save_load_round_trip_is_exact(tmp_path):
    smap = filled_map(np.random.default_rng(0))
    path = smap.save(tmp_path / "map.npz")
    loaded = SemanticMap.load(path)
    assert_maps_equal(smap, loaded)
    assert not [p for p in tmp_path.iterdir() if p.name != "map.npz"]  # no temp file left
    # The loaded map keeps growing like the original.
    rng = np.random.default_rng(1)
    ids = loaded.mask_bank.append(random_mask_set(rng, 2), 7)
    np.testing.assert_array_equal(ids, [15, 16])
    # Saving over an existing file replaces it.
    loaded.save(path)
    assert SemanticMap.load(path).mask_bank.num_masks == 17


def test_empty_map_round_trips(tmp_path):
    smap = SemanticMap(0.05)
    assert_maps_equal(smap, SemanticMap.load(smap.save(tmp_path / "empty.npz")))


def test_truncated_and_foreign_files_are_rejected(tmp_path):
    path = filled_map(np.random.default_rng(0)).save(tmp_path / "map.npz")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError):
        SemanticMap.load(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a map at all" * 10)
    with pytest.raises(DataFormatError):
        SemanticMap.load(garbage)
    with pytest.raises(DataFormatError):
        SemanticMap.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, coords=np.zeros((2, 3), np.int32))
    with pytest.raises(DataFormatError):
        SemanticMap.load(other)


def rewrite_member(path, out, name, fn):
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            payload = src.read(item.filename)
            if item.filename == name:
                payload = fn(payload)
            dst.writestr(item, payload)


def test_wrong_version_and_inconsistent_arrays_are_rejected(tmp_path):
    smap = filled_map(np.random.default_rng(0))
    path = smap.save(tmp_path / "map.npz")
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(bytes(npz["header_json"]).decode())
        arrays = {k: npz[k] for k in npz.files}
    header["version"] = FORMAT_VERSION + 1
    arrays["header_json"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    newer = tmp_path / "newer.npz"
    np.savez(newer, **arrays)
    with pytest.raises(DataFormatError, match="version"):
        SemanticMap.load(newer)
    header["version"] = FORMAT_VERSION
    arrays["header_json"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    arrays["member_ids"] = arrays["member_ids"][:-1]
    inconsistent = tmp_path / "inconsistent.npz"
    np.savez(inconsistent, **arrays)
    with pytest.raises(DataFormatError):
        SemanticMap.load(inconsistent)
    # A flipped byte inside an array is caught by the zip checksum.
    corrupt = tmp_path / "corrupt.npz"
    rewrite_member(path, corrupt, "coords.npy", lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]))
    with pytest.raises(DataFormatError):
        SemanticMap.load(corrupt)


def test_mask_bank_checks_spaces_and_grows():
    rng = np.random.default_rng(0)
    bank = MaskBank()
    total = 0
    for kf in range(100):  # beyond the first buffer capacity
        ms = random_mask_set(rng, 5)
        ids = bank.append(ms, kf)
        np.testing.assert_array_equal(ids, np.arange(total, total + 5))
        total += 5
    np.testing.assert_array_equal(bank.embeddings[SPACE_CLIP][-5:], ms.embeddings[SPACE_CLIP])
    assert bank.keyframe_ids[-1] == 99
    wrong_dim = random_mask_set(rng, 2)
    wrong_dim.embeddings[SPACE_CLIP] = np.zeros((2, 7), np.float32)
    with pytest.raises(InputError):
        bank.append(wrong_dim, 100)
    no_probs = random_mask_set(rng, 2)
    no_probs.class_probs = None
    with pytest.raises(InputError):
        bank.append(no_probs, 100)
    assert bank.num_masks == total
    bank.set_class_probs(np.ones((total, 6), np.float32))
    assert bank.class_probs is not None and bank.class_probs.shape == (total, 6)
    bank.append(random_mask_set(rng, 1, classes=6), 101)
    assert bank.num_masks == total + 1


def test_surface_update_that_does_not_follow_the_map_is_rejected():
    smap = filled_map(np.random.default_rng(0))
    version = smap.version
    restart = SurfaceUpdate.appending(0.02, smap.coords + 1, smap.colors)  # from voxel 0
    late = SurfaceUpdate.appending(0.02, [[1, 2, 3]], [[1, 2, 3]], new_start=51)
    outside = SurfaceUpdate(0.02, 50, np.empty((0, 3), np.int32), np.array([50]),
                            np.zeros((1, 3), np.uint8))
    unpaired = SurfaceUpdate(0.02, 50, np.empty((0, 3), np.int32), np.array([4, 5]),
                             np.zeros((1, 3), np.uint8))
    for bad in (restart, late, outside, unpaired):
        with pytest.raises(InputError):
            smap.apply_surface_update(bad)
    assert smap.num_voxels == 50 and smap.version == version  # nothing half-applied
    grown = SurfaceUpdate.appending(0.02, [[9999, 0, 0]], [[1, 2, 3]], new_start=50)
    before = smap.member_ids.copy()
    smap.apply_surface_update(grown)
    assert smap.num_voxels == 51
    np.testing.assert_array_equal(smap.member_ids[:50], before)
    np.testing.assert_array_equal(smap.member_ids[50], -1)
    np.testing.assert_array_equal(smap.colors[50], [1, 2, 3])
    assert smap.features_3d[SPACE_CLIP].shape == (51, 24)
    np.testing.assert_array_equal(smap.features_3d[SPACE_CLIP][50], 0)
    assert smap.view_counts[50] == 0


def test_a_skipped_update_of_the_same_mapper_is_rejected():
    smap = filled_map(np.random.default_rng(0))
    none_new = np.empty((0, 3), np.int32)

    def recolour(sequence: int, voxel: int) -> SurfaceUpdate:
        return SurfaceUpdate(0.02, 50, none_new, np.array([voxel]),
                             np.full((1, 3), sequence, np.uint8), source_id=7, sequence=sequence)

    smap.apply_surface_update(recolour(1, 3))  # the first update seen of mapper 7
    with pytest.raises(InputError, match="skipped"):
        smap.apply_surface_update(recolour(3, 4))  # update 2 never arrived
    smap.apply_surface_update(recolour(2, 4))
    np.testing.assert_array_equal(smap.colors[[3, 4]], [[1, 1, 1], [2, 2, 2]])
    # another mapper (one seeded from this map after a load) starts its own sequence
    smap.apply_surface_update(SurfaceUpdate(0.02, 50, none_new, np.array([5]),
                                            np.full((1, 3), 9, np.uint8), source_id=8,
                                            sequence=1))
    np.testing.assert_array_equal(smap.colors[5], [9, 9, 9])

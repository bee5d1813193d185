"""Packed voxel keys and the voxel index: packing round-trips, the keyed unique equals numpy's
row unique, the hash index numbers voxels as a dict of first sightings does."""

from __future__ import annotations

import numpy as np
import pytest

from diff2scene.errors import InputError
from diff2scene.mapping.voxel_index import (
    COORD_MAX,
    COORD_MIN,
    VoxelIndex,
    pack_coords,
    unique_coords,
    unpack_coords,
)


def test_unique_coords_is_numpy_unique_of_rows() -> None:
    rng = np.random.default_rng(3)
    coords = rng.integers(-40, 40, (5000, 3)).astype(np.int32)
    coords[1::2] = coords[: coords[1::2].shape[0]]  # plenty of duplicates
    coords[0] = (COORD_MIN, COORD_MAX, -1)
    got = unique_coords(coords)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.unique(coords, axis=0))
    np.testing.assert_array_equal(unpack_coords(pack_coords(coords)), coords)


def test_index_numbers_voxels_in_first_seen_order_across_growth() -> None:
    """Many calls (the table doubles and the key buffer grows several times) give the numbers
    a dict of first sightings gives; lookups agree; coordinates come back in number order."""
    rng = np.random.default_rng(5)
    index = VoxelIndex()
    first_seen: dict[tuple[int, int, int], int] = {}
    for step in range(40):
        # a cluster (duplicates, known and new voxels) and a few far-flung voxels
        centre = rng.integers(-2000, 2000, 3)
        batch = np.concatenate([
            centre + rng.integers(-6, 6, (rng.integers(0, 3000), 3)),
            rng.integers(COORD_MIN, COORD_MAX, (5, 3)),
            rng.integers(-6, 6, (50, 3)),  # the same region every time
        ]).astype(np.int32)
        got = index.add(batch)
        want = [first_seen.setdefault(tuple(c), len(first_seen)) for c in batch.tolist()]
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        assert len(index) == len(first_seen)
    coords = np.array(list(first_seen), dtype=np.int32)
    np.testing.assert_array_equal(index.coords, coords)
    np.testing.assert_array_equal(index.coords_from(len(coords) - 7), coords[-7:])
    np.testing.assert_array_equal(index.lookup(coords[::-1]), np.arange(len(coords))[::-1])
    unknown = coords[:100] + np.array([0, 0, 13], np.int32)
    known = np.array([first_seen.get(tuple(c), -1) for c in unknown.tolist()])
    np.testing.assert_array_equal(index.lookup(unknown), known)
    assert index.add(np.empty((0, 3), np.int32)).shape == (0,)
    assert index.lookup(np.empty((0, 3), np.int32)).shape == (0,)
    # keys and a table: 8 bytes of key and at most 4 / 0.75 * 2 bytes of table per voxel
    assert index.nbytes <= len(index) * (8 * 1.5 + 4 / 0.75 * 2) + 8 * 1024 + 4 * 1024
    with pytest.raises(InputError):
        index.add(np.array([[COORD_MAX + 1, 0, 0]], np.int32))

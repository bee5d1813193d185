"""Packed voxel keys: packing round-trips, and the keyed unique equals numpy's row unique."""

from __future__ import annotations

import numpy as np

from diff2scene.mapping.voxel_index import (
    COORD_MAX,
    COORD_MIN,
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

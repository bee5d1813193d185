"""Stable integer index of voxels.

Per-voxel semantic state (memberships, 3D features) lives in arrays indexed by voxel number, so
a voxel must keep its number for the life of the map: new voxels are appended, none is ever
renumbered or removed. Lookup is a binary search over packed 64-bit keys, which keeps the whole
index in three flat arrays (no Python objects per voxel) and vectorises over batches.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError

#: Bits per axis in a packed key; coordinates must lie in [-2**20, 2**20) voxels
#: (±21 km at 2 cm voxels).
_AXIS_BITS = 21
_OFFSET = 1 << (_AXIS_BITS - 1)
COORD_MIN = -_OFFSET
COORD_MAX = _OFFSET - 1


def pack_coords(coords: NDArray[np.int32]) -> NDArray[np.int64]:
    """(N, 3) int voxel coordinates → (N,) int64 keys, order-preserving per axis (x major)."""
    c = coords.astype(np.int64) + _OFFSET
    if c.size and (c.min() < 0 or c.max() >= (1 << _AXIS_BITS)):
        raise InputError(
            "coords_out_of_range", f"voxel coordinates must lie in [{COORD_MIN}, {COORD_MAX}]"
        )
    return np.asarray(
        (c[:, 0] << (2 * _AXIS_BITS)) | (c[:, 1] << _AXIS_BITS) | c[:, 2], dtype=np.int64
    )


def unpack_coords(keys: NDArray[np.int64]) -> NDArray[np.int32]:
    """(N,) int64 keys of :func:`pack_coords` → (N, 3) int32 coordinates."""
    mask = (1 << _AXIS_BITS) - 1
    k = np.asarray(keys, dtype=np.int64)
    out = np.empty((k.shape[0], 3), dtype=np.int32)
    out[:, 0] = (k >> (2 * _AXIS_BITS)) - _OFFSET
    out[:, 1] = ((k >> _AXIS_BITS) & mask) - _OFFSET
    out[:, 2] = (k & mask) - _OFFSET
    return out


def unique_coords(coords: NDArray[np.int32]) -> NDArray[np.int32]:
    """The distinct rows of ``coords`` (N, 3), sorted by x, then y, then z.

    What ``np.unique(coords, axis=0)`` gives, through one sort of packed 64-bit keys instead
    of a sort of structured rows (several times faster on the ~100k block keys a keyframe's
    surface refresh collects)."""
    return unpack_coords(np.unique(pack_coords(coords)))


class VoxelIndex:
    """Append-only map from integer voxel coordinates to stable voxel numbers."""

    def __init__(self) -> None:
        self._coords = np.empty((0, 3), dtype=np.int32)
        self._sorted_keys = np.empty(0, dtype=np.int64)
        self._sorted_ids = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._coords.shape[0])

    @property
    def coords(self) -> NDArray[np.int32]:
        """(M, 3) int32 coordinates; row i is voxel i (read-only view)."""
        view = self._coords.view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Memory held by the index, in bytes."""
        return int(self._coords.nbytes + self._sorted_keys.nbytes + self._sorted_ids.nbytes)

    def lookup(self, coords: NDArray[np.int32]) -> NDArray[np.int64]:
        """(N,) int64 voxel numbers of ``coords`` (N, 3); -1 where the voxel is unknown."""
        keys = pack_coords(coords)
        return self._lookup_keys(keys)

    def _lookup_keys(self, keys: NDArray[np.int64]) -> NDArray[np.int64]:
        out = np.full(keys.shape[0], -1, dtype=np.int64)
        if len(self) == 0 or keys.size == 0:
            return out
        pos = np.searchsorted(self._sorted_keys, keys)
        pos_c = np.minimum(pos, self._sorted_keys.shape[0] - 1)
        found = self._sorted_keys[pos_c] == keys
        out[found] = self._sorted_ids[pos_c[found]]
        return out

    def add(self, coords: NDArray[np.int32]) -> NDArray[np.int64]:
        """Register ``coords`` (N, 3) and return their (N,) int64 voxel numbers.

        Known voxels keep their number; unknown ones are appended in first-seen order.
        Duplicates inside ``coords`` get the same number.
        """
        coords = np.ascontiguousarray(coords, dtype=np.int32).reshape(-1, 3)
        keys = pack_coords(coords)
        ids = self._lookup_keys(keys)
        missing = np.flatnonzero(ids < 0)
        if missing.size == 0:
            return ids
        new_keys, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
        # Number new voxels in the order they first appear, not in key order.
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        start = len(self)
        new_ids = start + rank.astype(np.int64)
        ids[missing] = new_ids[inverse]
        self._coords = np.concatenate([self._coords, coords[missing[first[order]]]], axis=0)
        insert_at = np.searchsorted(self._sorted_keys, new_keys)
        self._sorted_keys = np.insert(self._sorted_keys, insert_at, new_keys)
        self._sorted_ids = np.insert(self._sorted_ids, insert_at, new_ids)
        return ids

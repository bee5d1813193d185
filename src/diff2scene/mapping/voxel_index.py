"""Stable integer index of voxels.

Per-voxel semantic state (memberships, 3D features) lives in arrays indexed by voxel number, so
a voxel must keep its number for the life of the map: new voxels are appended, none is ever
renumbered or removed.

The index is an open-addressing hash table (linear probing) of int32 voxel numbers over packed
64-bit keys, plus the key of every voxel in numbering order: 8 bytes per voxel for the keys and
4 bytes per table slot (13 to 23 bytes per voxel in all, with the spare capacity), no Python
objects per voxel. Inserting is amortised O(1) per key, so
registering a keyframe's surface costs the same in a map of 10M voxels as in one of 1M (a
sorted array, as before, moved the whole map on every insertion). Compiled, because a probe
loop is sequential per key and numpy cannot express it without a pass per probe.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError

#: Bits per axis in a packed key; coordinates must lie in [-2**20, 2**20) voxels
#: (±21 km at 2 cm voxels).
_AXIS_BITS = 21
_OFFSET = 1 << (_AXIS_BITS - 1)
COORD_MIN = -_OFFSET
COORD_MAX = _OFFSET - 1

#: Voxels an index can number: its table holds int32 voxel numbers.
MAX_VOXELS = (1 << 31) - 1
#: Most keys per table slot, as a fraction (3/4): 5.3 to 10.7 bytes of table per voxel. The
#: brick windows (below) keep a probe run within a few cache lines; measured at 13M voxels and
#: a load of 0.77, a keyframe's 65k known voxels took 1.5 ms to find (1.0 ms at 0.5) and 65k
#: unknown ones 10 ms (2.3 ms at 0.5); a keyframe brings about 3k unknown ones.
_LOAD_NUM, _LOAD_DEN = 3, 4
_MIN_SLOTS = 1 << 10
#: Growth of the key buffer when it is full: 1.5x keeps the copies amortised O(1) per key
#: while leaving at most a third of it unused (doubling would leave half).
_KEY_GROWTH = 1.5
#: Voxels per brick of hashing: the voxels of one 4x4x4 brick hash to one window of 64
#: consecutive slots, so a keyframe's surface (brick after brick) probes a few cache lines
#: per brick instead of one random line per voxel.
_BRICK_BITS = 2
_LOW = (1 << _BRICK_BITS) - 1
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


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


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator]
def _home_slot(key: np.int64, shift: np.uint64, mask: np.int64) -> np.int64:  # pragma: no cover
    """First slot probed for ``key``: a mix of its brick's key (splitmix64's finaliser, top
    bits) plus the voxel's place in the brick."""
    axis = np.int64(_AXIS_BITS)
    low = np.int64(_LOW)
    brick = np.uint64(key & ~(low | (low << axis) | (low << (2 * axis))))
    x = brick ^ (brick >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    x = x ^ (x >> np.uint64(31))
    local = (
        ((key >> (2 * axis)) & low) << np.int64(2 * _BRICK_BITS)
        | ((key >> axis) & low) << np.int64(_BRICK_BITS)
        | (key & low)
    )
    return (np.int64(x >> shift) + local) & mask


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _lookup_kernel(
    keys: NDArray[np.int64],
    table: NDArray[np.int32],
    stored: NDArray[np.int64],
    shift: np.uint64,
    out: NDArray[np.int64],
) -> None:  # pragma: no cover - compiled; tested through VoxelIndex
    mask = np.int64(table.shape[0] - 1)
    for j in range(keys.shape[0]):
        key = keys[j]
        s = _home_slot(key, shift, mask)
        while True:
            i = table[s]
            if i < 0 or stored[i] == key:
                out[j] = i
                break
            s = (s + 1) & mask


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _add_kernel(  # noqa: PLR0917 - compiled kernels take positional arrays
    keys: NDArray[np.int64],
    table: NDArray[np.int32],
    stored: NDArray[np.int64],
    count: int,
    shift: np.uint64,
    out: NDArray[np.int64],
) -> int:  # pragma: no cover - compiled; tested through VoxelIndex
    """Number ``keys`` in order, appending unknown ones to ``stored`` from ``count`` on (the
    caller made room for all of them); returns the new count."""
    mask = np.int64(table.shape[0] - 1)
    for j in range(keys.shape[0]):
        key = keys[j]
        s = _home_slot(key, shift, mask)
        while True:
            i = table[s]
            if i < 0:
                table[s] = count
                stored[count] = key
                out[j] = count
                count += 1
                break
            if stored[i] == key:
                out[j] = i
                break
            s = (s + 1) & mask
    return count


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _rehash_kernel(
    stored: NDArray[np.int64], count: int, table: NDArray[np.int32], shift: np.uint64
) -> None:  # pragma: no cover - compiled; tested through VoxelIndex
    """Insert voxels ``0 .. count-1`` (distinct keys) into the empty ``table``."""
    mask = np.int64(table.shape[0] - 1)
    for i in range(count):
        s = _home_slot(stored[i], shift, mask)
        while table[s] >= 0:
            s = (s + 1) & mask
        table[s] = i


class VoxelIndex:
    """Append-only map from integer voxel coordinates to stable voxel numbers."""

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.int64)
        self._count = 0
        self._table = np.full(_MIN_SLOTS, -1, dtype=np.int32)

    def __len__(self) -> int:
        return self._count

    @property
    def keys(self) -> NDArray[np.int64]:
        """(M,) int64 packed key of each voxel (see :func:`pack_coords`); row i is voxel i
        (read-only view)."""
        view = self._keys[: self._count]
        view.flags.writeable = False
        return view

    @property
    def coords(self) -> NDArray[np.int32]:
        """(M, 3) int32 coordinates; row i is voxel i (a new array, O(M))."""
        return unpack_coords(self.keys)

    def coords_from(self, start: int) -> NDArray[np.int32]:
        """(M - start, 3) int32 coordinates of the voxels numbered from ``start`` on."""
        return unpack_coords(self._keys[start : self._count])

    @property
    def nbytes(self) -> int:
        """Memory held by the index (keys and table, capacity included), in bytes."""
        return int(self._keys.nbytes + self._table.nbytes)

    def _shift(self) -> np.uint64:
        return np.uint64(64 - (self._table.shape[0].bit_length() - 1))

    def lookup(self, coords: NDArray[np.int32]) -> NDArray[np.int64]:
        """(N,) int64 voxel numbers of ``coords`` (N, 3); -1 where the voxel is unknown."""
        keys = pack_coords(np.asarray(coords).reshape(-1, 3))
        out = np.empty(keys.shape[0], dtype=np.int64)
        _lookup_kernel(keys, self._table, self._keys, self._shift(), out)
        return out

    def add(self, coords: NDArray[np.int32]) -> NDArray[np.int64]:
        """Register ``coords`` (N, 3) and return their (N,) int64 voxel numbers.

        Known voxels keep their number; unknown ones are appended in first-seen order.
        Duplicates inside ``coords`` get the same number.
        """
        keys = pack_coords(np.asarray(coords).reshape(-1, 3))
        n = keys.shape[0]
        out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        self._reserve(self._count + n)
        self._count = int(
            _add_kernel(keys, self._table, self._keys, self._count, self._shift(), out)
        )
        return out

    def _reserve(self, needed: int) -> None:
        """Room for ``needed`` voxels: key buffer and table (rehashed when it doubles)."""
        if needed > MAX_VOXELS:
            raise InputError("voxel_index_full", f"an index numbers {MAX_VOXELS} voxels at most")
        if needed > self._keys.shape[0]:
            cap = max(needed, int(self._keys.shape[0] * _KEY_GROWTH), 1024)
            keys = np.empty(cap, dtype=np.int64)
            keys[: self._count] = self._keys[: self._count]
            self._keys = keys
        slots = self._table.shape[0]
        if needed * _LOAD_DEN > slots * _LOAD_NUM:
            while needed * _LOAD_DEN > slots * _LOAD_NUM:
                slots *= 2
            self._table = np.full(slots, -1, dtype=np.int32)
            _rehash_kernel(self._keys, self._count, self._table, self._shift())

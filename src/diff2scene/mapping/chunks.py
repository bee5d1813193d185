"""Bounding boxes of runs of consecutive voxel numbers, to skip the runs a camera cannot see.

A keyframe's unprojection tests every voxel of the map against the view, which grows with the
map; a floor of 10M voxels holds far more than one view sees. Voxel numbers are given in the
order the surface is found, a keyframe's blocks at a time, so a run of consecutive numbers is
a compact piece of surface: the map keeps the integer box of every run of
:data:`CHUNK_VOXELS` voxels (24 bytes per run), appended as voxels arrive, and the unprojection
tests the boxes first and only the voxels of the runs that may be in view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Voxels per run. Smaller runs cull closer to the view but cost more boxes to test per
#: keyframe (the test is O(voxels / CHUNK_VOXELS): 10k boxes at 10M voxels).
CHUNK_VOXELS = 1024


@dataclass(frozen=True)
class ChunkBoxes:
    """The boxes of the first ``num_voxels`` voxels, frozen: run ``j`` holds voxels
    ``[j * chunk_voxels, min((j + 1) * chunk_voxels, num_voxels))``."""

    chunk_voxels: int
    num_voxels: int
    #: Edge of a voxel in metres (voxel centres lie at integer coordinates times it).
    voxel_size_m: float
    #: (C, 3) int32 lowest integer coordinate of each run, per axis.
    lo: NDArray[np.int32]
    #: (C, 3) int32 highest integer coordinate of each run, per axis.
    hi: NDArray[np.int32]


class ChunkBounds:
    """Growing boxes of consecutive voxel runs (appends are O(new voxels), amortised)."""

    def __init__(self, voxel_size_m: float, chunk_voxels: int = CHUNK_VOXELS) -> None:
        self.voxel_size_m = voxel_size_m
        self.chunk_voxels = chunk_voxels
        self._count = 0
        self._lo = np.empty((0, 3), dtype=np.int32)
        self._hi = np.empty((0, 3), dtype=np.int32)

    def __len__(self) -> int:
        return self._count

    def append(self, coords: NDArray[np.int32]) -> None:
        """Take in the (N, 3) integer coordinates of the next N voxels."""
        coords = np.asarray(coords, dtype=np.int32).reshape(-1, 3)
        n = coords.shape[0]
        if n == 0:
            return
        c = self.chunk_voxels
        runs = -(-(self._count + n) // c)
        have = self._lo.shape[0]
        if runs > have:
            cap = max(runs, have * 3 // 2, 64)
            self._lo, self._hi = (np.concatenate([a, np.empty((cap - have, 3), np.int32)])
                                  for a in (self._lo, self._hi))  # fmt: skip
        fill = min(n, -self._count % c)  # voxels that complete the last, partial run
        if fill:
            j = self._count // c
            self._lo[j] = np.minimum(self._lo[j], coords[:fill].min(axis=0))
            self._hi[j] = np.maximum(self._hi[j], coords[:fill].max(axis=0))
        rest = coords[fill:]
        j = -(-self._count // c)  # the first run that starts with the new voxels
        full = rest.shape[0] // c
        if full:
            whole = rest[: full * c].reshape(full, c, 3)
            self._lo[j : j + full] = whole.min(axis=1)
            self._hi[j : j + full] = whole.max(axis=1)
        tail = rest[full * c :]
        if tail.shape[0]:
            self._lo[j + full] = tail.min(axis=0)
            self._hi[j + full] = tail.max(axis=0)
        self._count += n

    def frozen(self) -> ChunkBoxes:
        """The boxes as they are now (copies: later appends change the last run's box)."""
        runs = -(-self._count // self.chunk_voxels)
        return ChunkBoxes(
            chunk_voxels=self.chunk_voxels,
            num_voxels=self._count,
            voxel_size_m=self.voxel_size_m,
            lo=self._lo[:runs].copy(),
            hi=self._hi[:runs].copy(),
        )

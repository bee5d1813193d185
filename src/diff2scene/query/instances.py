"""Connected clusters of matching voxels: the "instances" a query answers with.

Connectivity is 26-neighbourhood on a grid of cells ``connectivity_voxels`` voxels wide: the
matching voxels are binned into cells, cells that touch (or are the same) are connected, and
a voxel belongs to its cell's component. Voxels at most ``connectivity_voxels`` cells apart are
therefore always connected (gaps of up to one cell are bridged, as a depth hole in a chair
seat should be), and voxels more than ``2·connectivity_voxels − 1`` apart never directly.
Binning first keeps the neighbour search to 13 offsets over far fewer cells than voxels.

Everything works on the sparse set of matches: cell keys are sorted, each neighbour offset is
looked up with a binary search, and the edges go to
``scipy.sparse.csgraph.connected_components``. No dense grid is allocated, so a 10 m room at
2 cm costs memory proportional to the matches, not to the room's volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components

from diff2scene.errors import InputError


@dataclass
class InstanceConfig:
    """How matching voxels are grouped into instances."""

    #: Width of the connectivity cells in voxels (see module doc); 1 = touching voxels only.
    connectivity_voxels: int = 2
    #: Clusters with fewer voxels are dropped as noise.
    min_voxels: int = 10

    def __post_init__(self) -> None:
        if self.connectivity_voxels < 1 or self.min_voxels < 1:
            raise ValueError("connectivity_voxels and min_voxels must be >= 1")


@dataclass
class Instance:
    """One connected cluster of voxels matching a phrase."""

    #: The phrase that was scored (target or anchor of a query).
    label: str
    #: Mean voxel score of the cluster (re-ranked by a relation where one was asked).
    score: float
    #: (3,) float32 mean voxel centre, metres.
    centroid_m: NDArray[np.float32]
    #: (3,) float32 smallest corner of the axis-aligned box around the voxel centres, metres.
    box_min_m: NDArray[np.float32]
    #: (3,) float32 largest corner, metres.
    box_max_m: NDArray[np.float32]
    #: (n,) int64 map voxel indices of the cluster.
    voxel_indices: NDArray[np.int64] = field(repr=False)

    @property
    def num_points(self) -> int:
        return int(self.voxel_indices.shape[0])

    @property
    def box_size_m(self) -> NDArray[np.float32]:
        """(3,) float32 extent of the box, metres."""
        out: NDArray[np.float32] = (self.box_max_m - self.box_min_m).astype(np.float32)
        return out


def _neighbour_offsets() -> NDArray[np.int64]:
    """Half of the 26 cube offsets (each undirected edge is found once)."""
    offs = [o for o in product(range(-1, 2), repeat=3) if o > (0, 0, 0)]
    return np.array(offs, dtype=np.int64)


def cluster_voxels(coords: NDArray[np.int32], *, connectivity_voxels: int = 1) -> NDArray[np.int32]:
    """(N,) int32 component label (0..n−1) of each of N integer voxel coordinates."""
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise InputError("voxel coordinates must be (N, 3)", f"got {coords.shape}")
    if coords.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    cells = np.floor_divide(coords.astype(np.int64), int(connectivity_voxels))
    # Padding by one cell on every side keeps key + offset from wrapping into another row.
    lo = cells.min(axis=0) - 1
    dims = cells.max(axis=0) - lo + 2
    flat = ((cells[:, 0] - lo[0]) * dims[1] + (cells[:, 1] - lo[1])) * dims[2] + (
        cells[:, 2] - lo[2]
    )
    # One sort of int64 keys (np.unique over rows would sort (N, 3) records: several x slower).
    keys, cell_of_voxel = np.unique(flat, return_inverse=True)
    n = keys.shape[0]
    src: list[NDArray[np.int64]] = []
    dst: list[NDArray[np.int64]] = []
    for off in _neighbour_offsets():
        target = keys + (off[0] * dims[1] + off[1]) * dims[2] + off[2]
        pos = np.minimum(np.searchsorted(keys, target), n - 1)
        hit = keys[pos] == target
        src.append(np.flatnonzero(hit))
        dst.append(pos[hit])
    rows = np.concatenate(src)
    cols = np.concatenate(dst)
    graph = sp.coo_matrix((np.ones(rows.shape[0], dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph.tocsr(), directed=False)
    out: NDArray[np.int32] = np.asarray(labels, dtype=np.int32)[cell_of_voxel.reshape(-1)]
    return out


def find_instances(
    label: str,
    voxel_indices: NDArray[np.int64],
    scores: NDArray[np.float32],
    *,
    coords: NDArray[np.int32],
    points_m: NDArray[np.float32],
    config: InstanceConfig,
) -> list[Instance]:
    """Instances among the matching ``voxel_indices`` of a map, best mean score first.

    ``scores`` (M,), ``coords`` (M, 3) int32 and ``points_m`` (M, 3) float32 are the whole
    map's; only the matching rows are read.
    """
    if voxel_indices.size == 0:
        return []
    comp = cluster_voxels(coords[voxel_indices], connectivity_voxels=config.connectivity_voxels)
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    out: list[Instance] = []
    for group in np.split(order, bounds):
        if group.size < config.min_voxels:
            continue
        idx = voxel_indices[group]
        pts = points_m[idx]
        out.append(
            Instance(
                label=label,
                score=float(scores[idx].mean()),
                centroid_m=pts.mean(axis=0).astype(np.float32),
                box_min_m=pts.min(axis=0).astype(np.float32),
                box_max_m=pts.max(axis=0).astype(np.float32),
                voxel_indices=np.sort(idx),
            )
        )
    out.sort(key=lambda inst: -inst.score)
    return out

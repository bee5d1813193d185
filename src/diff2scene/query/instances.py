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

**One instance per object.** Connectivity alone gives a robot two kinds of wrong answer,
both measured on the synthetic benchmark:

* *Fragments*: a few voxels of a neighbouring object that also clear the threshold (the leg
  of a bed next to the table, a strip of floor under it) become instances of their own. They
  are small and weakly scored, so instances are ranked by their **mass** (mean score × voxel
  count: size and confidence together) and :func:`prune_instances` drops those under
  ``min_relative_mass`` of the best one. A mean-score ranking put such fragments ahead of the
  object itself whenever their few voxels happened to score high.
* *Joined surfaces*: the four walls of a room touch at the corners and form one ring, whose
  overlap with any single wall is too small to count as that wall. :func:`split_planar`
  cuts a component along creases between large planes: it fits a plane to each cell of
  ``plane_cell_m``, grows regions of coplanar cells, and when a component holds two or more
  regions of at least ``split_min_area_m2`` every voxel goes to the plane of its nearest
  voxel in such a region. Beds, tables and wardrobes have at most one face that large, so
  objects stay whole; only room-sized surfaces are split. The fit assumes a surface map
  (voxels one or two thick), which is what the mapper keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numba
import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from diff2scene.errors import InputError


@dataclass
class InstanceConfig:
    """How matching voxels are grouped into instances."""

    #: Width of the connectivity cells in voxels (see module doc); 1 = touching voxels only.
    connectivity_voxels: int = 2
    #: Clusters with fewer voxels are dropped as noise.
    min_voxels: int = 10
    #: Instances whose mass (mean score × voxels) is below this fraction of the best
    #: instance's are dropped as fragments; 0 keeps all.
    min_relative_mass: float = 0.15
    #: Planes of at least this area (m², counted in whole plane cells, so a plane's rim of
    #: one cell is left out) split a component they share (walls meeting at a corner); 0
    #: disables the split. Above the largest face of furniture (a wardrobe front, ~2.4 m²).
    split_min_area_m2: float = 3.0
    #: Cell size of the plane fit, metres.
    plane_cell_m: float = 0.25
    #: Largest angle between the normals of two cells of one plane, degrees.
    plane_angle_deg: float = 25.0

    def __post_init__(self) -> None:
        if self.connectivity_voxels < 1 or self.min_voxels < 1:
            raise ValueError("connectivity_voxels and min_voxels must be >= 1")
        if not 0.0 <= self.min_relative_mass <= 1.0:
            raise ValueError(f"min_relative_mass must be in [0, 1], got {self.min_relative_mass}")
        if self.split_min_area_m2 < 0.0 or self.plane_cell_m <= 0.0:
            raise ValueError("split_min_area_m2 must be >= 0 and plane_cell_m > 0")
        if not 0.0 < self.plane_angle_deg < 90.0:
            raise ValueError(f"plane_angle_deg must be in (0, 90), got {self.plane_angle_deg}")


@dataclass
class Instance:
    """One connected cluster of voxels matching a phrase."""

    #: The phrase that was scored (target or anchor of a query).
    label: str
    #: Mean voxel score of the cluster (times the relation's strength where one was asked).
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
    def mass(self) -> float:
        """Score × voxel count: what instances are ranked by (size and confidence)."""
        return self.score * self.num_points

    @property
    def box_size_m(self) -> NDArray[np.float32]:
        """(3,) float32 extent of the box, metres."""
        out: NDArray[np.float32] = (self.box_max_m - self.box_min_m).astype(np.float32)
        return out


def _neighbour_offsets() -> NDArray[np.int64]:
    """Half of the 26 cube offsets (each undirected edge is found once)."""
    offs = [o for o in product(range(-1, 2), repeat=3) if o > (0, 0, 0)]
    return np.array(offs, dtype=np.int64)


def _cell_keys(
    cells: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Sorted distinct int64 keys of (N, 3) integer cells, the key index of each row, and the
    (3,) key dimensions (a step of one cell along x, y, z is dims[1]·dims[2], dims[2], 1)."""
    # Padding by one cell on every side keeps key + offset from wrapping into another row.
    lo = cells.min(axis=0) - 1
    dims = cells.max(axis=0) - lo + 2
    flat = ((cells[:, 0] - lo[0]) * dims[1] + (cells[:, 1] - lo[1])) * dims[2] + (
        cells[:, 2] - lo[2]
    )
    # One sort of int64 keys (np.unique over rows would sort (N, 3) records: several x slower).
    keys, cell_of_row = np.unique(flat, return_inverse=True)
    return keys, cell_of_row.reshape(-1), dims


def _cell_edges(
    cells: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], int]:
    """Distinct cells of (N, 3) integer cell coordinates and their 26-neighbour edges.

    Returns the cell of each row (N,), the two ends of each undirected edge (E,) and (E,),
    and the number of distinct cells (numbered in sorted key order).
    """
    keys, cell_of_row, dims = _cell_keys(cells)
    n = keys.shape[0]
    src: list[NDArray[np.int64]] = []
    dst: list[NDArray[np.int64]] = []
    for off in _neighbour_offsets():
        target = keys + (off[0] * dims[1] + off[1]) * dims[2] + off[2]
        pos = np.minimum(np.searchsorted(keys, target), n - 1)
        hit = keys[pos] == target
        src.append(np.flatnonzero(hit))
        dst.append(pos[hit])
    return cell_of_row, np.concatenate(src), np.concatenate(dst), n


def _components(rows: NDArray[np.int64], cols: NDArray[np.int64], n: int) -> NDArray[np.int32]:
    graph = sp.coo_matrix((np.ones(rows.shape[0], dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph.tocsr(), directed=False)
    return np.asarray(labels, dtype=np.int32)


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _sorted_key_components(
    keys: NDArray[np.int64], steps: NDArray[np.int64]
) -> NDArray[np.int32]:  # pragma: no cover - compiled; tested through cluster_voxels
    """(n,) component of each of the sorted distinct cell ``keys``, numbered in order of their
    first cell (as scipy's connected_components numbers them). ``steps`` (>0) are the key
    differences of neighbouring cells; keys + step is sorted too, so each step is one merge
    sweep instead of a binary search per cell."""
    n = keys.shape[0]
    parent = np.arange(n)
    for step in steps:
        j = 0
        for i in range(n):
            target = keys[i] + step
            while j < n and keys[j] < target:
                j += 1
            if j == n:
                break
            if keys[j] == target:  # union by the smaller root, with path halving
                a, b = i, j
                while parent[a] != a:
                    parent[a] = parent[parent[a]]
                    a = parent[a]
                while parent[b] != b:
                    parent[b] = parent[parent[b]]
                    b = parent[b]
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
    labels = np.empty(n, dtype=np.int32)
    count = 0
    for i in range(n):  # a root is its component's smallest cell: numbered when first met
        r = i
        while parent[r] != r:
            r = parent[r]
        if r == i:
            labels[i] = count
            count += 1
        else:
            labels[i] = labels[r]
    return labels


def cluster_voxels(coords: NDArray[np.int32], *, connectivity_voxels: int = 1) -> NDArray[np.int32]:
    """(N,) int32 component label (0..n−1) of each of N integer voxel coordinates."""
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise InputError("voxel coordinates must be (N, 3)", f"got {coords.shape}")
    if coords.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    cells = np.floor_divide(coords.astype(np.int64), int(connectivity_voxels))
    keys, cell_of_voxel, dims = _cell_keys(cells)
    offs = _neighbour_offsets()
    steps = np.sort((offs[:, 0] * dims[1] + offs[:, 1]) * dims[2] + offs[:, 2])
    out: NDArray[np.int32] = _sorted_key_components(keys, steps)[cell_of_voxel]
    return out


def _max_plane_area_m2(extent_m: NDArray[np.float64]) -> float:
    """Upper bound of the area of a plane inside a box of this (3,) extent."""
    e = np.sort(extent_m)[::-1]
    return float(e[0] * np.hypot(e[1], e[2]))


def split_planar(
    coords: NDArray[np.int32], *, voxel_size_m: float, config: InstanceConfig
) -> NDArray[np.int32]:
    """(N,) int32 part of each voxel of one connected component; all 0 when it is not split.

    Parts are the component's planes of at least ``config.split_min_area_m2`` (see the module
    doc); every voxel joins the part whose nearest plane cell is closest, so corner voxels and
    whatever hangs on a wall go with one of the walls.
    """
    n = coords.shape[0]
    none = np.zeros(n, dtype=np.int32)
    min_area = config.split_min_area_m2
    if min_area <= 0.0 or n == 0:
        return none
    # Two planes of min_area need at least that many surface voxels, and a box big enough.
    if n * voxel_size_m**2 < 2.0 * min_area:
        return none
    extent = (coords.max(axis=0) - coords.min(axis=0) + 1).astype(np.float64) * voxel_size_m
    if _max_plane_area_m2(extent) < min_area:
        return none
    cell_vox = max(2, round(config.plane_cell_m / voxel_size_m))
    cells = np.floor_divide(coords.astype(np.int64), cell_vox)
    cell_of, rows, cols, n_cells = _cell_edges(cells)
    # Per-cell mean and covariance from first and second moments (voxel units, cell-local so
    # the float64 sums stay exact).
    local = coords.astype(np.float64) - cells * cell_vox
    count = np.bincount(cell_of, minlength=n_cells).astype(np.float64)
    mean = (
        np.stack(
            [np.bincount(cell_of, weights=local[:, a], minlength=n_cells) for a in range(3)], axis=1
        )
        / count[:, None]
    )
    cov = np.empty((n_cells, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            m2 = np.bincount(cell_of, weights=local[:, a] * local[:, b], minlength=n_cells)
            cov[:, a, b] = cov[:, b, a] = m2 / count - mean[:, a] * mean[:, b]
    evals, evecs = np.linalg.eigh(cov)
    normal = evecs[:, :, 0]
    # A plane cell: enough voxels spread in two directions, thin in the third (a surface one
    # or two voxels thick has a normal variance of at most 0.25 voxel²).
    planar = (count >= cell_vox) & (evals[:, 0] <= 0.15 * evals[:, 1]) & (evals[:, 1] >= 0.5)
    first = np.zeros(n_cells, dtype=np.int64)
    first[cell_of[::-1]] = np.arange(n - 1, -1, -1)
    centre = cells[first] * cell_vox + mean  # voxel units
    cos_max = np.cos(np.deg2rad(config.plane_angle_deg))
    same = planar[rows] & planar[cols]
    same &= np.abs((normal[rows] * normal[cols]).sum(axis=1)) >= cos_max
    # Coplanar, not just parallel: the offset between the cells along the normal is small.
    offset = np.abs(((centre[cols] - centre[rows]) * normal[rows]).sum(axis=1))
    same &= offset <= 0.5 * cell_vox
    region = _components(rows[same], cols[same], n_cells)
    region_cells = np.bincount(region[planar], minlength=int(region.max()) + 1)
    cell_area_m2 = (cell_vox * voxel_size_m) ** 2
    big = np.flatnonzero(region_cells * cell_area_m2 >= min_area)
    if big.size < 2:
        return none
    in_big = planar & np.isin(region, big)
    part_of_region = np.full(int(region.max()) + 1, -1, dtype=np.int32)
    part_of_region[big] = np.arange(big.size, dtype=np.int32)
    part = np.where(in_big, part_of_region[region], -1)[cell_of].astype(np.int32)
    # The rest (corners, whatever hangs on a wall) goes with the plane of the nearest voxel
    # among the plane cells that border it (a tree over those only: the whole plane would
    # cost more than the rest of the split).
    rest = np.flatnonzero(part < 0)
    if rest.size:
        border = np.zeros(n_cells, dtype=np.bool_)
        border[rows[in_big[rows] & ~in_big[cols]]] = True
        border[cols[in_big[cols] & ~in_big[rows]]] = True
        if not border.any():
            border = in_big
        placed = np.flatnonzero(border[cell_of])
        _, nearest = cKDTree(coords[placed]).query(coords[rest], k=1)
        part[rest] = part[placed[np.asarray(nearest)]]
    out: NDArray[np.int32] = part
    return out


def find_instances(
    label: str,
    voxel_indices: NDArray[np.int64],
    scores: NDArray[np.float32],
    *,
    coords: NDArray[np.int32],
    points_m: NDArray[np.float32],
    config: InstanceConfig,
    voxel_size_m: float | None = None,
) -> list[Instance]:
    """Instances among the matching ``voxel_indices`` of a map, largest mass first.

    ``scores`` (M,), ``coords`` (M, 3) int32 and ``points_m`` (M, 3) float32 are the whole
    map's; only the matching rows are read. Large surfaces are split into planes when
    ``voxel_size_m`` is given (see :func:`split_planar`). Nothing is pruned by mass here: a
    relation must see every candidate first (see :func:`prune_instances`).
    """
    if voxel_indices.size == 0:
        return []
    sub = coords[voxel_indices]
    comp = cluster_voxels(sub, connectivity_voxels=config.connectivity_voxels)
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    groups: list[NDArray[np.int64]] = []
    for group in np.split(order, bounds):
        if group.size < config.min_voxels:
            continue
        if voxel_size_m is not None:
            part = split_planar(sub[group], voxel_size_m=voxel_size_m, config=config)
            if part.any():
                groups += [group[part == p] for p in np.unique(part)]
                continue
        groups.append(group)
    groups = [g for g in groups if g.size >= config.min_voxels]
    if not groups:
        return []
    # Every group's statistics at once (segment reductions over the groups laid end to end):
    # a map-wide query can find hundreds of groups, and per-group numpy calls cost ~0.3 ms.
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    idx_all = voxel_indices[np.concatenate(groups)]
    pts = points_m[idx_all]
    sums = np.add.reduceat(pts.astype(np.float64), starts, axis=0)
    lows = np.minimum.reduceat(pts, starts, axis=0)
    highs = np.maximum.reduceat(pts, starts, axis=0)
    score_sums = np.add.reduceat(scores[idx_all].astype(np.float64), starts)
    out: list[Instance] = []
    for j, (lo, n) in enumerate(zip(starts.tolist(), sizes.tolist(), strict=True)):
        out.append(
            Instance(
                label=label,
                score=float(np.float32(score_sums[j] / n)),
                centroid_m=(sums[j] / n).astype(np.float32),
                box_min_m=lows[j].astype(np.float32),
                box_max_m=highs[j].astype(np.float32),
                voxel_indices=np.sort(idx_all[lo : lo + n]),
            )
        )
    out.sort(key=lambda inst: -inst.mass)
    return out


def prune_instances(instances: list[Instance], min_relative_mass: float) -> list[Instance]:
    """The instances whose mass is at least ``min_relative_mass`` of the largest, in order."""
    if not instances:
        return []
    floor = min_relative_mass * max(inst.mass for inst in instances)
    return [inst for inst in instances if inst.mass >= floor]

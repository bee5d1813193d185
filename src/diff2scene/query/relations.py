"""Spatial relations between a target instance and anchor instances.

The map frame is REP-103 (x forward, y left, z up). "left"/"right" need a viewpoint: with a
``viewpoint_m`` (e.g. the last camera position, what a robot's user sees), "left of Y" means on
the left when looking from the viewpoint towards Y; without one, left is the map frame's +y.
Each rule gives a factor in [0, 1]; a target's relation score is the best factor over anchor
instances weighted by the anchor's score, and targets with a zero relation score are dropped.

Two sets of rules:

* :func:`relation_factor` reads only the instances' axis-aligned boxes. It is exact for clean
  instances (ground truth, which is how the evaluation generates relation questions), but one
  stray voxel moves a box: a reconstructed floor that took in a few voxels of a bed reached
  0.8 m, and nothing stood "on" it any more.
* :func:`voxel_relation_factor` is what the engine answers with: "on" compares the target's
  bottom with the top of the anchor's voxels *under the target's footprint* (so the anchor's
  voxels elsewhere cannot move its support surface), "above"/"under" likewise, and
  "near"/"next to" use boxes trimmed of their outermost voxels (``trim_fraction`` per side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError
from diff2scene.query.instances import Instance


@dataclass
class RelationConfig:
    """Distances the relation rules use."""

    #: "near"/"next to": largest gap between the two boxes, metres.
    near_m: float = 0.6
    #: "on": largest gap between the target's bottom and the anchor's surface under it, metres.
    contact_m: float = 0.1
    #: "left of"/"right of": largest centroid distance still considered related, metres.
    side_max_m: float = 3.0
    #: Fraction of voxels trimmed from each side of an axis before a box is taken (robust
    #: boxes of reconstructed instances, for "near"/"next to").
    trim_fraction: float = 0.02
    #: Anchor voxels an "on"/"above"/"under" target needs beneath (or above) it.
    min_support_voxels: int = 3

    def __post_init__(self) -> None:
        if min(self.near_m, self.contact_m, self.side_max_m) <= 0:
            raise ValueError("relation distances must be positive")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.min_support_voxels < 1:
            raise ValueError("min_support_voxels must be >= 1")


def box_gap_m(a: Instance, b: Instance) -> float:
    """Euclidean gap between two axis-aligned boxes (0 when they touch or overlap), metres."""
    d = np.maximum(0.0, np.maximum(a.box_min_m - b.box_max_m, b.box_min_m - a.box_max_m))
    return float(np.linalg.norm(d))


def _xy_overlap(a: Instance, b: Instance, margin: float) -> bool:
    lo = np.maximum(a.box_min_m[:2], b.box_min_m[:2] - margin)
    hi = np.minimum(a.box_max_m[:2], b.box_max_m[:2] + margin)
    return bool(np.all(lo <= hi))


def relation_factor(
    relation: str,
    target: Instance,
    anchor: Instance,
    config: RelationConfig,
    viewpoint_m: NDArray[np.float64] | None = None,
) -> float:
    """How well ``target`` stands in ``relation`` to ``anchor``, in [0, 1]."""
    gap = box_gap_m(target, anchor)
    if relation in ("near", "next_to"):
        return max(0.0, 1.0 - gap / config.near_m) if gap <= config.near_m else 0.0
    if relation == "closest_to":
        return 1.0 / (1.0 + gap)
    if relation == "on":
        dz = float(target.box_min_m[2] - anchor.box_max_m[2])
        ok = -config.contact_m <= dz <= config.contact_m and _xy_overlap(target, anchor, 0.0)
        ok = ok and target.centroid_m[2] > anchor.centroid_m[2]
        return 1.0 if ok else 0.0
    if relation in ("above", "under"):
        if not _xy_overlap(target, anchor, config.contact_m):
            return 0.0
        higher = target.centroid_m[2] > anchor.centroid_m[2]
        if relation == "above":
            return (
                1.0
                if higher and target.box_min_m[2] >= anchor.box_max_m[2] - config.contact_m
                else 0.0
            )
        return (
            1.0
            if not higher and target.box_max_m[2] <= anchor.box_max_m[2] + config.contact_m
            else 0.0
        )
    if relation in ("left_of", "right_of"):
        delta = (target.centroid_m - anchor.centroid_m).astype(np.float64)
        dist = float(np.linalg.norm(delta[:2]))
        if dist > config.side_max_m:
            return 0.0
        if viewpoint_m is None:
            left = np.array([0.0, 1.0])
        else:
            forward = anchor.centroid_m[:2].astype(np.float64) - np.asarray(viewpoint_m)[:2]
            norm = float(np.linalg.norm(forward))
            if norm < 1e-6:
                return 0.0
            forward /= norm
            left = np.array([-forward[1], forward[0]])
        side = float(delta[:2] @ left)
        if relation == "right_of":
            side = -side
        return 1.0 / (1.0 + dist) if side > 0.0 else 0.0
    raise InputError("unknown relation", relation)


def _trimmed_box(
    points: NDArray[np.float32], fraction: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(3,) low and high corners of the box of (n, 3) points without the outer ``fraction``."""
    if fraction <= 0.0 or points.shape[0] < 3:
        return points.min(axis=0).astype(np.float64), points.max(axis=0).astype(np.float64)
    lo, hi = np.quantile(points, [fraction, 1.0 - fraction], axis=0)
    return lo.astype(np.float64), hi.astype(np.float64)


def _low_z(points: NDArray[np.float32], k: int) -> float:
    """The ``k``-th lowest z of the points: the bottom without a couple of stray voxels."""
    z = points[:, 2]
    j = min(k, z.shape[0]) - 1
    return float(np.partition(z, j)[j])


def _high_z(points: NDArray[np.float32], k: int) -> float:
    z = points[:, 2]
    j = max(z.shape[0] - min(k, z.shape[0]), 0)
    return float(np.partition(z, j)[j])


def _beneath(
    target: NDArray[np.float32], anchor: NDArray[np.float32], margin_m: float
) -> NDArray[np.float32]:
    """Anchor points whose (x, y) fall inside the target's footprint box grown by a margin."""
    lo = target[:, :2].min(axis=0) - margin_m
    hi = target[:, :2].max(axis=0) + margin_m
    inside = np.all((anchor[:, :2] >= lo) & (anchor[:, :2] <= hi), axis=1)
    return anchor[inside]


def voxel_relation_factor(
    relation: str,
    target: Instance,
    anchor: Instance,
    points_m: NDArray[np.float32],
    config: RelationConfig,
    *,
    viewpoint_m: NDArray[np.float64] | None = None,
) -> float:
    """How well ``target`` stands in ``relation`` to ``anchor``, in [0, 1], from their voxels.

    ``points_m`` (M, 3) are the map's voxel centres the instances index. See the module doc.
    """
    return _voxel_factor(
        relation, target, anchor, _Points(points_m, config), config, viewpoint_m=viewpoint_m
    )


class _Points:
    """Voxel centres and trimmed boxes of instances, each computed once per relation query
    (a target is compared with every anchor)."""

    def __init__(self, points_m: NDArray[np.float32], config: RelationConfig) -> None:
        self.points_m = points_m
        self.config = config
        self._points: dict[int, NDArray[np.float32]] = {}
        self._boxes: dict[int, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}

    def of(self, inst: Instance) -> NDArray[np.float32]:
        key = id(inst)
        if key not in self._points:
            self._points[key] = self.points_m[inst.voxel_indices]
        return self._points[key]

    def box(self, inst: Instance) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        key = id(inst)
        if key not in self._boxes:
            self._boxes[key] = _trimmed_box(self.of(inst), self.config.trim_fraction)
        return self._boxes[key]


def _voxel_factor(
    relation: str,
    target: Instance,
    anchor: Instance,
    cache: _Points,
    config: RelationConfig,
    *,
    viewpoint_m: NDArray[np.float64] | None,
) -> float:
    if relation not in ("near", "next_to", "on", "above", "under"):
        return relation_factor(relation, target, anchor, config, viewpoint_m)
    if target.num_points == 0 or anchor.num_points == 0:
        return 0.0
    t = cache.of(target)
    k = config.min_support_voxels
    if relation in ("near", "next_to"):
        t_lo, t_hi = cache.box(target)
        a_lo, a_hi = cache.box(anchor)
        gap = float(np.linalg.norm(np.maximum(0.0, np.maximum(t_lo - a_hi, a_lo - t_hi))))
        return max(0.0, 1.0 - gap / config.near_m) if gap <= config.near_m else 0.0
    a = cache.of(anchor)
    if relation in ("on", "above"):
        bottom = _low_z(t, k)
        # The anchor's surface under the target: its highest voxels beneath the footprint that
        # are not above the target's bottom (by more than the contact tolerance).
        under = _beneath(t, a, config.contact_m)
        under = under[under[:, 2] <= bottom + config.contact_m]
        if under.shape[0] < k:
            return 0.0
        top = _high_z(under, k)
        if float(t[:, 2].mean()) <= top:
            return 0.0
        if relation == "on":
            return 1.0 if bottom - top <= config.contact_m else 0.0
        return 1.0
    # "under": the anchor's lowest voxels over the target's footprint are above its middle.
    top = _high_z(t, k)
    over = _beneath(t, a, config.contact_m)
    over = over[over[:, 2] >= top - config.contact_m]
    if over.shape[0] < k:
        return 0.0
    return 1.0 if float(t[:, 2].mean()) < _low_z(over, k) else 0.0


def rerank(
    relation: str,
    targets: list[Instance],
    anchors: list[Instance],
    config: RelationConfig,
    viewpoint_m: NDArray[np.float64] | None = None,
    *,
    points_m: NDArray[np.float32] | None = None,
) -> list[Instance]:
    """Targets that satisfy the relation, scored ``target · max_a(factor · anchor)``.

    With ``points_m`` (M, 3), the map's voxel centres, the voxel rules decide
    (:func:`voxel_relation_factor`), otherwise the box rules (:func:`relation_factor`).
    Ordered by mass (relation-weighted score × voxels); "closest to" keeps every target but
    orders by distance to the nearest anchor.
    """
    ranked: list[tuple[float, Instance]] = []
    cache = None if points_m is None else _Points(points_m, config)
    for target in targets:
        best = 0.0
        for anchor in anchors:
            if np.array_equal(target.voxel_indices, anchor.voxel_indices):
                continue
            factor = (
                relation_factor(relation, target, anchor, config, viewpoint_m)
                if cache is None
                else _voxel_factor(relation, target, anchor, cache, config, viewpoint_m=viewpoint_m)
            )
            best = max(best, factor * anchor.score)
        if best > 0.0:
            target.score = float(target.score * best)
            ranked.append((best if relation == "closest_to" else target.mass, target))
    ranked.sort(key=lambda item: -item[0])
    return [inst for _, inst in ranked]

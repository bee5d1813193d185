"""Spatial relations between a target instance and anchor instances, on axis-aligned boxes.

The map frame is REP-103 (x forward, y left, z up). "left"/"right" need a viewpoint: with a
``viewpoint_m`` (e.g. the last camera position, what a robot's user sees), "left of Y" means on
the left when looking from the viewpoint towards Y; without one, left is the map frame's +y.
Each rule gives a factor in [0, 1]; a target's relation score is the best factor over anchor
instances weighted by the anchor's score, and targets with a zero relation score are dropped.
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
    #: "on": largest gap between the target's bottom and the anchor's top, metres.
    contact_m: float = 0.1
    #: "left of"/"right of": largest centroid distance still considered related, metres.
    side_max_m: float = 3.0

    def __post_init__(self) -> None:
        if min(self.near_m, self.contact_m, self.side_max_m) <= 0:
            raise ValueError("relation distances must be positive")


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


def rerank(
    relation: str,
    targets: list[Instance],
    anchors: list[Instance],
    config: RelationConfig,
    viewpoint_m: NDArray[np.float64] | None = None,
) -> list[Instance]:
    """Targets that satisfy the relation, scored ``target · max_a(factor · anchor)``, best first.

    "closest to" keeps every target but orders by distance to the nearest anchor.
    """
    ranked: list[tuple[float, Instance]] = []
    for target in targets:
        best = 0.0
        for anchor in anchors:
            if np.array_equal(target.voxel_indices, anchor.voxel_indices):
                continue
            best = max(
                best, relation_factor(relation, target, anchor, config, viewpoint_m) * anchor.score
            )
        if best > 0.0:
            target.score = float(target.score * best)
            ranked.append((best if relation == "closest_to" else target.score, target))
    ranked.sort(key=lambda item: -item[0])
    return [inst for _, inst in ranked]

"""Semantic-segmentation and instance-query metrics.

IoU per class is ``TP / (TP + FP + FN)`` over points; ground-truth points labelled -1 are
ignored, predictions of -1 ("unknown") count as misses. Classes absent from the ground truth
have no IoU (NaN) and are left out of every mean, as in the ScanNet benchmark. Splits
(head/common/tail) average the IoUs of their classes that have one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import DataFormatError, InputError


def confusion_matrix(
    gt: NDArray[np.integer], pred: NDArray[np.integer], num_classes: int
) -> NDArray[np.int64]:
    """(C, C + 1) int64 counts: rows ground truth, columns prediction, last column "unknown"."""
    if gt.shape != pred.shape or gt.ndim != 1:
        raise InputError("ground truth and prediction must be equal-length vectors")
    if gt.size and (int(gt.max()) >= num_classes or int(pred.max()) >= num_classes):
        raise InputError("label outside the class list", f"{num_classes} classes")
    keep = gt >= 0
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    p = np.where(p < 0, num_classes, p)
    flat = np.bincount(g * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return flat.reshape(num_classes, num_classes + 1)


def iou_from_confusion(conf: NDArray[np.int64]) -> NDArray[np.float64]:
    """(C,) IoU per class, NaN for classes without ground-truth points."""
    c = conf.shape[0]
    tp = np.diag(conf[:, :c]).astype(np.float64)
    gt_total = conf.sum(axis=1).astype(np.float64)
    pred_total = conf[:, :c].sum(axis=0).astype(np.float64)
    union = gt_total + pred_total - tp
    out = np.full(c, np.nan)
    present = gt_total > 0
    out[present] = tp[present] / union[present]
    return out


def confusion_record(conf: NDArray[np.int64], class_names: Sequence[str]) -> dict[str, Any]:
    """``conf`` (C, C + 1) as JSON: ``{"rows": {gt: {pred: n}}, "unknown": {gt: n}}``, zero
    counts left out. Keyed by class name, so scenes with different class lists can be added
    (:func:`confusion_from_record` with the union of their names), and small: a scene's
    matrix is mostly zeros."""
    c = len(class_names)
    if conf.shape != (c, c + 1):
        raise InputError(f"confusion matrix {conf.shape} does not fit {c} classes")
    rows: dict[str, dict[str, int]] = {}
    unknown: dict[str, int] = {}
    for i, gt_name in enumerate(class_names):
        row = {class_names[int(j)]: int(conf[i, j]) for j in np.flatnonzero(conf[i, :c])}
        if row:
            rows[gt_name] = row
        if conf[i, c]:
            unknown[gt_name] = int(conf[i, c])
    return {"rows": rows, "unknown": unknown}


def confusion_from_record(
    record: Mapping[str, Any], class_names: Sequence[str]
) -> NDArray[np.int64]:
    """(C, C + 1) int64 matrix over ``class_names`` of a :func:`confusion_record`; its classes
    must all be among ``class_names`` (which may hold more)."""
    index = {name: i for i, name in enumerate(class_names)}
    c = len(class_names)
    conf = np.zeros((c, c + 1), dtype=np.int64)
    try:
        for gt_name, row in record["rows"].items():
            for pred_name, count in row.items():
                conf[index[gt_name], index[pred_name]] += int(count)
        for gt_name, count in record["unknown"].items():
            conf[index[gt_name], c] += int(count)
    except KeyError as exc:
        raise DataFormatError(f"confusion record: no class or key {exc}") from exc
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataFormatError(f"malformed confusion record: {exc}") from exc
    return conf


def _nanmean(values: NDArray[np.float64]) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclass
class SegmentationScores:
    """mIoU over all classes and per split, and every class's IoU (NaN = not in the scene)."""

    miou: float
    miou_by_split: dict[str, float]
    per_class_iou: dict[str, float]
    #: Fraction of ground-truth points given their true class.
    accuracy: float
    confusion: NDArray[np.int64] = field(repr=False)


def segmentation_scores(
    gt: NDArray[np.integer],
    pred: NDArray[np.integer],
    class_names: Sequence[str],
    split_of: Mapping[str, str] | None = None,
) -> SegmentationScores:
    """Scores of per-point predictions ``pred`` against ``gt`` (indices into ``class_names``)."""
    conf = confusion_matrix(gt, pred, len(class_names))
    iou = iou_from_confusion(conf)
    splits: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        if split_of and name in split_of:
            splits.setdefault(split_of[name], []).append(i)
    total = conf.sum()
    return SegmentationScores(
        miou=_nanmean(iou),
        miou_by_split={s: _nanmean(iou[idx]) for s, idx in splits.items()},
        per_class_iou={n: float(v) for n, v in zip(class_names, iou, strict=True)},
        accuracy=float(np.trace(conf[:, : len(class_names)]) / total) if total else float("nan"),
        confusion=conf,
    )


@dataclass
class MatchCounts:
    """Greedy one-to-one matches of predicted to ground-truth instances."""

    matched: int
    num_pred: int
    num_gt: int

    @property
    def precision(self) -> float:
        return self.matched / self.num_pred if self.num_pred else float("nan")

    @property
    def recall(self) -> float:
        return self.matched / self.num_gt if self.num_gt else float("nan")

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(
            self.matched + other.matched, self.num_pred + other.num_pred, self.num_gt + other.num_gt
        )


def match_instances(
    pred: Sequence[NDArray[np.integer]],
    gt: Sequence[NDArray[np.integer]],
    *,
    iou_threshold: float = 0.25,
) -> MatchCounts:
    """Match predicted to ground-truth instances (sets of element ids) by IoU, best pairs first.

    A prediction counts as correct when its IoU with a not yet matched ground-truth instance is
    at least ``iou_threshold`` (0.25, ScanNet's AP25 overlap).
    """
    pairs: list[tuple[float, int, int]] = []
    gt_sets = [np.unique(g) for g in gt]
    for i, p in enumerate(pred):
        pu = np.unique(p)
        for j, g in enumerate(gt_sets):
            inter = np.intersect1d(pu, g, assume_unique=True).size
            if inter:
                iou = inter / (pu.size + g.size - inter)
                if iou >= iou_threshold:
                    pairs.append((iou, i, j))
    pairs.sort(reverse=True)
    used_p: set[int] = set()
    used_g: set[int] = set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
    return MatchCounts(len(used_p), len(pred), len(gt))

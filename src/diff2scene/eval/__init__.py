"""Evaluation: mIoU per branch and split, instance-query precision/recall, dataset loaders."""

from diff2scene.eval.datasets import EvalScene, load_scene, read_ply
from diff2scene.eval.evaluate import EvalConfig, evaluate_scene, summarise, write_report
from diff2scene.eval.metrics import (
    MatchCounts,
    confusion_matrix,
    iou_from_confusion,
    match_instances,
    segmentation_scores,
)

__all__ = [
    "EvalConfig",
    "EvalScene",
    "MatchCounts",
    "confusion_matrix",
    "evaluate_scene",
    "iou_from_confusion",
    "load_scene",
    "match_instances",
    "read_ply",
    "segmentation_scores",
    "summarise",
    "write_report",
]

from __future__ import annotations

import math

import numpy as np
import pytest

from diff2scene.errors import InputError
from diff2scene.eval.metrics import confusion_matrix, match_instances, segmentation_scores


def test_scores_match_a_hand_computed_confusion_matrix() -> None:
    # classes: 0 wall (head), 1 chair (head), 2 lamp (tail), 3 sofa (tail, absent)
    gt = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, -1, -1])
    pred = np.array([0, 0, 0, 1, 1, 1, -1, 2, 0, 3, 2])
    names = ["wall", "chair", "lamp", "sofa"]
    s = segmentation_scores(gt, pred, names, {"wall": "head", "chair": "head", "lamp": "tail",
                                              "sofa": "tail"})  # fmt: skip
    want = np.array(
        [[3, 1, 0, 0, 0], [0, 2, 0, 0, 1], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=np.int64
    )
    np.testing.assert_array_equal(s.confusion, want)
    # wall: TP 3, FP 1 (lamp point), FN 1 → 3/5; chair: TP 2, FP 1, FN 1 → 2/4;
    # lamp: TP 1, FP 0 (the ignored point does not count), FN 1 → 1/2; sofa absent → NaN.
    assert s.per_class_iou["wall"] == pytest.approx(0.6)
    assert s.per_class_iou["chair"] == pytest.approx(0.5)
    assert s.per_class_iou["lamp"] == pytest.approx(0.5)
    assert math.isnan(s.per_class_iou["sofa"])
    assert s.miou == pytest.approx((0.6 + 0.5 + 0.5) / 3)
    assert s.miou_by_split == {"head": pytest.approx(0.55), "tail": pytest.approx(0.5)}
    assert s.accuracy == pytest.approx(6 / 9)


def test_confusion_rejects_bad_labels() -> None:
    with pytest.raises(InputError):
        confusion_matrix(np.array([0, 5]), np.array([0, 0]), 3)
    with pytest.raises(InputError):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)


def test_instance_matching_is_one_to_one_at_iou_threshold() -> None:
    gt = [np.arange(0, 10), np.arange(20, 30)]
    pred = [np.arange(0, 8), np.arange(2, 10), np.arange(20, 23), np.arange(100, 110)]
    m = match_instances(pred, gt, iou_threshold=0.25)
    # pred 0 (IoU .8) takes gt 0; pred 1 (IoU .8, tie) cannot take it again; pred 2 has
    # IoU 0.3 with gt 1; pred 3 overlaps nothing.
    assert (m.matched, m.num_pred, m.num_gt) == (2, 4, 2)
    assert m.precision == 0.5 and m.recall == 1.0
    assert match_instances(pred, gt, iou_threshold=0.5).matched == 1
    assert math.isnan(match_instances([], []).precision)

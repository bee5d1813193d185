"""Pooling written evaluations: confusion matrices round-trip through JSON and add up by class
name, so the pooled mIoU is the one of all points together, not a mean of scene mIoUs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diff2scene.errors import DataFormatError
from diff2scene.eval.evaluate import SceneEvaluation, summarise
from diff2scene.eval.metrics import (
    MatchCounts,
    confusion_from_record,
    confusion_matrix,
    confusion_record,
    iou_from_confusion,
)
from diff2scene.eval.pooled import pool_reports

SPLIT = {"wall": "head", "chair": "tail", "table": "head"}


def _evaluation(name: str, classes: list[str], gt: list[int], pred: list[int],
                query: MatchCounts) -> SceneEvaluation:  # fmt: skip
    conf = confusion_matrix(np.array(gt), np.array(pred), len(classes))
    return SceneEvaluation(name, classes, {c: SPLIT[c] for c in classes},
                           {"salient": conf, "ensemble": conf * 2}, query=query)  # fmt: skip


def test_confusion_record_round_trips_and_leaves_zeros_out() -> None:
    classes = ["wall", "chair", "table"]
    conf = confusion_matrix(np.array([0, 0, 1, 1, 2, -1]), np.array([0, 1, 1, -1, 2, 0]), 3)
    record = confusion_record(conf, classes)
    assert record == {"rows": {"wall": {"wall": 1, "chair": 1}, "chair": {"chair": 1},
                               "table": {"table": 1}}, "unknown": {"chair": 1}}  # fmt: skip
    back = confusion_from_record(json.loads(json.dumps(record)), classes)
    np.testing.assert_array_equal(back, conf)
    wider = confusion_from_record(record, ["lamp", *classes])
    np.testing.assert_array_equal(wider[1:, [1, 2, 3, 4]], conf)
    assert wider[0].sum() == 0 and wider[:, 0].sum() == 0
    with pytest.raises(DataFormatError, match="sofa"):
        confusion_from_record({"rows": {"sofa": {"wall": 1}}, "unknown": {}}, classes)


def test_pooled_scenes_add_points_across_different_class_lists() -> None:
    # A small scene labelled perfectly and a large one mostly wrong: pooling weighs points.
    small = _evaluation("small", ["wall", "chair"], [0, 1], [0, 1], MatchCounts(1, 1, 1))
    big = _evaluation("big", ["wall", "table", "chair"], [0] * 10 + [1] * 10 + [2] * 10,
                      [1] * 10 + [1] * 10 + [-1] * 10, MatchCounts(0, 3, 2))  # fmt: skip
    written = {e.name: json.loads(json.dumps(summarise([e]))) for e in (small, big)}
    pooled = pool_reports(written)

    # By hand over the union ["wall", "chair", "table"]: wall 1 hit of 11 points (the big
    # scene's walls went to table), chair 1 of 11, table 10 of 10 points plus 10 wrong calls.
    union = ["wall", "chair", "table"]
    conf = sum(confusion_from_record(w["confusion"]["branches"]["salient"], union)
               for w in written.values())  # fmt: skip
    iou = iou_from_confusion(conf)
    np.testing.assert_allclose(iou, [1 / 11, 1 / 11, 10 / 20])
    assert pooled["branches"]["salient"]["miou_all"] == pytest.approx(float(iou.mean()))
    scene_mean = np.mean([w["branches"]["salient"]["miou_all"] for w in written.values()])
    assert pooled["branches"]["salient"]["miou_all"] != pytest.approx(scene_mean)
    assert pooled["branches"]["salient"]["miou_head"] == pytest.approx((1 / 11 + 10 / 20) / 2)
    assert pooled["branches"]["salient"]["miou_tail"] == pytest.approx(1 / 11)
    assert pooled["query_counts"] == {"matched": 1, "pred": 4, "gt": 3}
    assert pooled["query_precision"] == pytest.approx(0.25)
    # Ensemble counts were doubled in every scene: the same IoUs.
    assert pooled["branches"]["ensemble"]["miou_all"] == pytest.approx(float(iou.mean()))


def test_a_report_without_confusion_matrices_cannot_be_pooled() -> None:
    written = summarise([_evaluation("a", ["wall"], [0], [0], MatchCounts(0, 0, 0))])
    del written["confusion"]
    with pytest.raises(DataFormatError, match="replay the scene again"):
        pool_reports({"a": written})

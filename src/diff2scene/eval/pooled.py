"""Pool the evaluations of separate runs into one, as the paper pools a dataset's scenes.

A benchmark over many scenes replays each on its own (possibly on another machine), so each
scene's score lands in its own ``eval.json``. Averaging those mIoUs would weigh a small scene
as much as a large one and let a class seen in one scene count as much as one seen everywhere;
the ScanNet benchmark instead adds every scene's point counts and computes IoUs once. Each
``eval.json`` keeps its confusion matrices and query match counts (``summarise`` writes them
under ``confusion`` and ``*_counts``), and :func:`pool_reports` adds them back up.

Scenes may have different class lists (a synthetic scene lists its generator's table, a
ScanNet scene the vocabulary's): counts are aligned by class name over the union of the lists,
in the order the names are first seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from diff2scene.errors import DataFormatError, InputError
from diff2scene.eval.evaluate import SceneEvaluation, summarise
from diff2scene.eval.metrics import MatchCounts, confusion_from_record


def _counts(report: Mapping[str, Any], key: str, name: str) -> MatchCounts:
    entry = report.get(key)
    if entry is None:
        return MatchCounts(0, 0, 0)
    try:
        return MatchCounts(int(entry["matched"]), int(entry["pred"]), int(entry["gt"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFormatError(f"{name}: malformed {key} ({exc})") from exc


def scene_evaluation_from_report(report: Mapping[str, Any], *, name: str) -> SceneEvaluation:
    """The counts of one written evaluation (an ``eval.json``) as a :class:`SceneEvaluation`.

    A report from before the confusion matrices were saved cannot be pooled: it raises
    :class:`DataFormatError` naming ``name`` (replay the scene again).
    """
    confusion = report.get("confusion")
    if not isinstance(confusion, Mapping) or "class_names" not in confusion:
        raise DataFormatError(f"{name}: the evaluation has no confusion matrices (written by an "
                              "older version?); replay the scene again to pool it")  # fmt: skip
    names = [str(n) for n in confusion["class_names"]]
    branches = confusion.get("branches") or {}
    return SceneEvaluation(
        name=name,
        class_names=names,
        split_of={str(k): str(v) for k, v in (confusion.get("split_of") or {}).items()},
        confusion={b: confusion_from_record(r, names) for b, r in branches.items()},
        query=_counts(report, "query_counts", name),
        relation_query=_counts(report, "relation_query_counts", name),
        queries=[{k: v for k, v in q.items() if k != "scene"}
                 for q in report.get("queries", [])],
    )


def align_classes(evaluations: Sequence[SceneEvaluation]) -> list[SceneEvaluation]:
    """The evaluations re-indexed over the union of their class lists (first-seen order):
    a class a scene does not list has no points and no predictions there."""
    union: dict[str, int] = {}
    for e in evaluations:
        for n in e.class_names:
            union.setdefault(n, len(union))
    names = list(union)
    u = len(names)
    out = []
    for e in evaluations:
        if e.class_names == names:
            out.append(e)
            continue
        idx = np.array([union[n] for n in e.class_names], dtype=np.int64)
        cols = np.append(idx, u)  # the scene's "unknown" column stays the last one
        confusion = {}
        for branch, conf in e.confusion.items():
            wide = np.zeros((u, u + 1), dtype=np.int64)
            wide[np.ix_(idx, cols)] = conf
            confusion[branch] = wide
        out.append(SceneEvaluation(e.name, names, dict(e.split_of), confusion,
                                   e.query, e.relation_query, list(e.queries)))  # fmt: skip
    return out


def pool_reports(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One evaluation over scenes: ``reports`` maps each scene's name to its ``eval.json``.

    Confusion matrices and match counts add; the result has the shape of
    :func:`~diff2scene.eval.evaluate.summarise`'s report (mIoU per branch and split, per-class
    IoU, query and relation-query precision/recall, the pooled confusion). A branch is scored
    only when every scene has it. :class:`InputError` when ``reports`` is empty.
    """
    if not reports:
        raise InputError("no evaluation to pool")
    evaluations = [scene_evaluation_from_report(r, name=n) for n, r in reports.items()]
    return summarise(align_classes(evaluations))

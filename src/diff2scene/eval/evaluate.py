"""Score a semantic map against a ground-truth scene: mIoU per branch, query precision/recall.

**Labels.** The map is labelled with the scene's class list in each branch (salient, geometric,
ensemble); every ground-truth point takes the label of the nearest map voxel within
``max_distance_m`` (farther points count as unknown, i.e. missed), as OpenScene evaluates
on the mesh vertices. Confusion matrices of several scenes add up before IoUs are computed.

**Queries.** For each class present in the scene the class name is queried; a returned
instance is correct if its voxels overlap a not yet matched ground-truth instance of that
class with IoU ≥ ``instance_iou`` (ground-truth instances are transferred to voxels by the
nearest ground-truth point). **Relation queries** are generated from the ground truth: for
pairs of instances that satisfy "on" or "next to" under the box rules of
:func:`~diff2scene.query.relations.relation_factor` (exact on clean ground-truth instances),
"<class A> <relation> the <class B>" is asked and the positives are the instances of A that
satisfy it with some instance of B. The engine answers from its reconstructed instances with
its own (voxel) rules; the questions and positives do not depend on them.

**Precision** counts every instance a query returned (the engine's default ``top_k``); a
returned instance is matched at most once, so fragments of one object count against it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from diff2scene.errors import InputError
from diff2scene.eval.datasets import EvalScene
from diff2scene.eval.metrics import (
    MatchCounts,
    confusion_record,
    iou_from_confusion,
    match_instances,
    segmentation_scores,
)
from diff2scene.query.engine import QueryEngine
from diff2scene.query.ensemble import BRANCHES, Branch
from diff2scene.query.instances import Instance
from diff2scene.query.relations import relation_factor
from diff2scene.segmentation.base import Vocabulary
from diff2scene.segmentation.text import ensemble_embeddings

#: Relations generated from ground truth for relation-query scoring.
EVAL_RELATIONS: tuple[str, ...] = ("on", "next_to")
_RELATION_TEXT = {"on": "on", "next_to": "next to"}


@dataclass
class EvalConfig:
    """How a map is compared with ground truth."""

    #: Branches to score ("salient", "geometric", "ensemble"); unavailable ones are skipped.
    branches: tuple[str, ...] = BRANCHES
    #: A ground-truth point farther than this from every voxel counts as unlabelled, metres.
    max_distance_m: float = 0.05
    #: IoU a returned instance needs with a ground-truth instance to count as correct.
    instance_iou: float = 0.25
    #: Ground-truth instances with fewer voxels are not expected to be found.
    min_instance_voxels: int = 10
    #: Most class-name queries per scene (the most frequent present classes first).
    max_query_classes: int = 30
    #: Most relation queries per scene.
    max_relation_queries: int = 10
    #: Voxels whose best class score is below this are unknown.
    min_confidence: float = 0.05

    def __post_init__(self) -> None:
        bad = [b for b in self.branches if b not in BRANCHES]
        if bad:
            raise ValueError(f"unknown branches {bad}; known: {list(BRANCHES)}")
        if self.max_distance_m <= 0 or not 0 < self.instance_iou <= 1:
            raise ValueError("max_distance_m > 0 and instance_iou in (0, 1]")


@dataclass
class SceneEvaluation:
    """Raw counts of one scene, to be summed over scenes by :func:`summarise`."""

    name: str
    class_names: list[str]
    split_of: dict[str, str]
    confusion: dict[str, NDArray[np.int64]] = field(repr=False)
    query: MatchCounts = field(default_factory=lambda: MatchCounts(0, 0, 0))
    relation_query: MatchCounts = field(default_factory=lambda: MatchCounts(0, 0, 0))
    queries: list[dict[str, Any]] = field(default_factory=list)


def _branch(name: str) -> Branch:
    for b in BRANCHES:
        if b == name:
            return b
    raise InputError("unknown branch", name)


def nearest_labels(
    voxel_points: NDArray[np.float32],
    voxel_labels: NDArray[np.int32],
    points: NDArray[np.float32],
    max_distance_m: float,
) -> NDArray[np.int32]:
    """(N,) label of each point's nearest voxel, -1 where none is within ``max_distance_m``."""
    if voxel_points.shape[0] == 0:
        return np.full(points.shape[0], -1, dtype=np.int32)
    dist, idx = cKDTree(voxel_points).query(points, k=1, distance_upper_bound=max_distance_m)
    found = np.isfinite(dist)
    out = np.full(points.shape[0], -1, dtype=np.int32)
    out[found] = voxel_labels[idx[found]]
    return out


def _gt_instances(
    engine: QueryEngine, scene: EvalScene, max_distance_m: float, min_voxels: int
) -> tuple[dict[int, Instance], dict[int, int]]:
    """Ground-truth instances as map-voxel sets (nearest GT point), and their classes."""
    voxel_inst = nearest_labels(scene.points, scene.point_instance, engine.points_m, max_distance_m)
    class_of: dict[int, int] = {}
    for inst_id in np.unique(scene.point_instance[scene.point_instance > 0]):
        classes = scene.point_class[scene.point_instance == inst_id]
        classes = classes[classes >= 0]
        if classes.size:
            class_of[int(inst_id)] = int(np.bincount(classes).argmax())
    out: dict[int, Instance] = {}
    for inst_id, cls in class_of.items():
        idx = np.flatnonzero(voxel_inst == inst_id).astype(np.int64)
        if idx.size < min_voxels:
            continue
        pts = engine.points_m[idx]
        out[inst_id] = Instance(
            label=scene.class_names[cls],
            score=1.0,
            centroid_m=pts.mean(axis=0).astype(np.float32),
            box_min_m=pts.min(axis=0).astype(np.float32),
            box_max_m=pts.max(axis=0).astype(np.float32),
            voxel_indices=idx,
        )
    return out, class_of


def evaluate_scene(
    scene: EvalScene, engine: QueryEngine, config: EvalConfig | None = None
) -> SceneEvaluation:
    """Label the engine's map with the scene's classes per branch, then run the queries."""
    cfg = config or EvalConfig()
    scorer = engine.scorer
    result = SceneEvaluation(scene.name, list(scene.class_names), dict(scene.split_of), {})
    if scorer.num_masks:
        text = ensemble_embeddings(engine.encoder, scene.class_names, engine.templates)
        vocab = Vocabulary(
            list(scene.class_names), text, np.zeros(len(scene.class_names), dtype=np.bool_)
        )
        probs = engine.classifier.classify(dict(engine.bank_embeddings), vocab)
    for branch in cfg.branches:
        if branch == "geometric" and not scorer.has_geometric:
            continue
        if scorer.num_masks:
            labels, conf = scorer.label(np.ascontiguousarray(probs, np.float32), _branch(branch))
            labels[conf < cfg.min_confidence] = -1
        else:
            labels = np.full(scorer.num_voxels, -1, dtype=np.int32)
        pred = nearest_labels(engine.points_m, labels, scene.points, cfg.max_distance_m)
        result.confusion[branch] = segmentation_scores(
            scene.point_class, pred, scene.class_names
        ).confusion

    gt, class_of = _gt_instances(engine, scene, cfg.max_distance_m, cfg.min_instance_voxels)
    present = np.bincount(
        np.array([class_of[i] for i in gt], dtype=np.int64), minlength=len(scene.class_names)
    )
    for cls in np.argsort(-present, kind="stable")[: cfg.max_query_classes]:
        if present[cls] == 0:
            break
        name = scene.class_names[int(cls)]
        answer = engine.query(name)
        truth = [inst.voxel_indices for i, inst in gt.items() if class_of[i] == cls]
        counts = match_instances(
            [inst.voxel_indices for inst in answer.instances], truth, iou_threshold=cfg.instance_iou
        )
        result.query = result.query + counts
        result.queries.append({"query": name, "pred": counts.num_pred, "gt": counts.num_gt,
                               "matched": counts.matched})  # fmt: skip

    asked: set[str] = set()
    for relation in EVAL_RELATIONS:
        for a_id, a in gt.items():
            for b_id, b in gt.items():
                if len(asked) >= cfg.max_relation_queries:
                    break
                if class_of[a_id] == class_of[b_id]:
                    continue
                if relation_factor(relation, a, b, engine.config.relations) <= 0.0:
                    continue
                query_text = f"{a.label} {_RELATION_TEXT[relation]} the {b.label}"
                if query_text in asked:
                    continue
                asked.add(query_text)
                positives = [
                    t.voxel_indices
                    for t_id, t in gt.items()
                    if class_of[t_id] == class_of[a_id]
                    and any(
                        relation_factor(relation, t, o, engine.config.relations) > 0.0
                        for o_id, o in gt.items()
                        if class_of[o_id] == class_of[b_id]
                    )
                ]
                try:
                    answer = engine.query(query_text)
                except InputError:
                    continue  # a class name that reads as a relation ("light switch on")
                counts = match_instances(
                    [inst.voxel_indices for inst in answer.instances],
                    positives,
                    iou_threshold=cfg.instance_iou,
                )
                result.relation_query = result.relation_query + counts
                result.queries.append({"query": query_text, "pred": counts.num_pred,
                                       "gt": counts.num_gt, "matched": counts.matched})  # fmt: skip
    return result


def summarise(evaluations: Sequence[SceneEvaluation]) -> dict[str, Any]:
    """One report over scenes sharing a class list: confusions add, match counts add."""
    if not evaluations:
        raise InputError("nothing to summarise")
    names = evaluations[0].class_names
    if any(e.class_names != names for e in evaluations):
        raise InputError("scenes to summarise must share one class list")
    split_of: dict[str, str] = {}
    for e in evaluations:
        split_of.update(e.split_of)
    report: dict[str, Any] = {"scenes": [e.name for e in evaluations], "branches": {}}
    branches = [b for b in BRANCHES if all(b in e.confusion for e in evaluations)]
    confusions: dict[str, dict[str, Any]] = {}
    for branch in branches:
        conf = np.sum([e.confusion[branch] for e in evaluations], axis=0)
        confusions[branch] = confusion_record(conf, names)
        iou = iou_from_confusion(conf)
        finite = np.isfinite(iou)
        entry: dict[str, Any] = {"miou_all": float(iou[finite].mean()) if finite.any() else None}
        for split in sorted(set(split_of.values())):
            idx = [i for i, n in enumerate(names) if split_of.get(n) == split and finite[i]]
            entry[f"miou_{split}"] = float(iou[idx].mean()) if idx else None
        entry["per_class_iou"] = {
            n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, iou, strict=True)
        }
        report["branches"][branch] = entry
    q = sum((e.query for e in evaluations), MatchCounts(0, 0, 0))
    r = sum((e.relation_query for e in evaluations), MatchCounts(0, 0, 0))

    def nan_none(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    report["query_precision"] = nan_none(q.precision)
    report["query_recall"] = nan_none(q.recall)
    report["query_counts"] = {"matched": q.matched, "pred": q.num_pred, "gt": q.num_gt}
    report["relation_query_precision"] = nan_none(r.precision)
    report["relation_query_recall"] = nan_none(r.recall)
    report["relation_query_counts"] = {"matched": r.matched, "pred": r.num_pred, "gt": r.num_gt}
    report["queries"] = [dict(q, scene=e.name) for e in evaluations for q in e.queries]
    # The counts behind the IoUs, so reports of several runs can be pooled (point counts add,
    # IoUs do not): diff2scene.eval.pooled reads them back.
    report["confusion"] = {"class_names": list(names), "split_of": split_of,
                           "branches": confusions}  # fmt: skip
    return report


def write_report(report: dict[str, Any], out_dir: str | Path, *, name: str = "eval") -> list[Path]:
    """``<name>.json``, ``<name>.md`` (mIoU table + per-class IoU) and ``<name>.png`` (bars)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    branches: dict[str, dict[str, Any]] = report["branches"]
    order = {"miou_all": 0, "miou_head": 1, "miou_common": 2, "miou_tail": 3}
    split_keys = sorted(
        {k for e in branches.values() for k in e if k.startswith("miou_")},
        key=lambda k: (order.get(k, 4), k),
    )

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    lines = [f"# Evaluation: {', '.join(report['scenes'])}", ""]
    lines += ["| branch | " + " | ".join(k[5:] for k in split_keys) + " |"]
    lines += ["|---" * (len(split_keys) + 1) + "|"]
    for branch, entry in branches.items():
        lines.append(f"| {branch} | " + " | ".join(fmt(entry.get(k)) for k in split_keys) + " |")
    summary = (
        f"Query precision {fmt(report['query_precision'])} %, recall "
        f"{fmt(report['query_recall'])} %; relation-query precision "
        f"{fmt(report['relation_query_precision'])} % (IoU >= 0.25 instance matches)."
    )
    lines += ["", summary, ""]
    if branches:
        names = list(next(iter(branches.values()))["per_class_iou"])
        lines += ["| class | " + " | ".join(branches) + " |", "|---" * (len(branches) + 1) + "|"]
        for n in names:
            lines.append(
                f"| {n} | "
                + " | ".join(fmt(e["per_class_iou"][n]) for e in branches.values())
                + " |"
            )
    md_path = out / f"{name}.md"
    md_path.write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(branches))
    for j, (branch, entry) in enumerate(branches.items()):
        vals = [100 * (entry.get(k) or 0.0) for k in split_keys]
        ax.bar(np.arange(len(split_keys)) + j * width, vals, width, label=branch)
    ax.set_xticks(np.arange(len(split_keys)) + width * (len(branches) - 1) / 2)
    ax.set_xticklabels([k[5:] for k in split_keys])
    ax.set_ylabel("mIoU (%)")
    ax.legend()
    ax.set_title("mIoU per branch and split")
    fig.tight_layout()
    png_path = out / f"{name}.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [json_path, md_path, png_path]

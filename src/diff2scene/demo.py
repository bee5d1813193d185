"""``make demo``: the whole job on a synthetic room, end to end, on a CPU.

1. generate a procedural room and write it as a ROS 2 bag (MCAP) with ground truth,
2. replay the bag through the online pipeline (the oracle-noise 2D segmenter stands in for the
   diffusion model, whose weights cannot be downloaded here),
3. distil the unprojected 2D masks into the 3D network and run it over the map,
4. label the map with the scene's vocabulary (salient, geometric and ensemble branches) and
   score it against the ground truth,
5. answer a class, an attribute, a relation and an absent-object query, check each answer
   against the ground truth and draw them.

Text lives in the SYNTHETIC text space (:mod:`diff2scene.segmentation.synthetic_text`), not
CLIP: the only CLIP available without downloaded weights is random and carries no meaning, so
the demo uses seeded word vectors with a known structure instead. The banner says so.

Everything lands in ``--out`` (default ``demo_out/``); ``summary.md`` links the pictures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

_LOG = logging.getLogger("diff2scene.demo")
_STRUCTURE = ("wall", "floor", "ceiling")
#: A thing no synthetic room contains: its answer must be empty.
ABSENT_QUERY = "grand piano"
BANNER = (
    "diff2scene demo — SYNTHETIC text space (seeded word vectors, not CLIP): the oracle-noise\n"
    "2D segmenter and every query embed text with SyntheticTextEncoder, because no real CLIP\n"
    "weights can be downloaded here. Real runs use the CLIP text tower."
)


@dataclass
class DemoQuery:
    """One query of the demo, what the ground truth says, and what the map answered."""

    kind: str
    text: str
    #: Ground-truth instance ids a correct answer may return (empty: nothing should match).
    positives: list[int]
    #: Anchor instance ids of a relation query.
    anchors: list[int] = field(default_factory=list)
    found: int = 0
    best_score: float | None = None
    best_centroid_m: list[float] | None = None
    #: IoU of the best returned instance with the best-matching positive instance.
    best_iou: float = 0.0
    correct: bool = False
    #: Voxel indices of the best instance and of the other returned instances.
    best_voxels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    other_voxels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from diff2scene.eval.datasets import load_synthetic
    from diff2scene.eval.evaluate import EvalConfig, evaluate_scene, summarise, write_report
    from diff2scene.mapping.keyframes import KeyframeConfig
    from diff2scene.mapping.mapper import MapperConfig
    from diff2scene.mapping.render import RenderConfig as MapRenderConfig
    from diff2scene.mapping.render import render_map
    from diff2scene.net3d.inference import Net3D, Net3DConfig, refresh_map_features
    from diff2scene.net3d.model import MinkUNetConfig
    from diff2scene.net3d.train import TrainConfig, train
    from diff2scene.pipeline import PipelineConfig
    from diff2scene.query.engine import QueryConfig, QueryEngine
    from diff2scene.query.labelling import LabellingConfig, label_map
    from diff2scene.query.relations import RelationConfig
    from diff2scene.replay import ReplayConfig, replay
    from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
    from diff2scene.synth.dataset import SynthConfig, synthesize
    from diff2scene.synth.render import RenderConfig

    print(BANNER, flush=True)
    room_view = MapRenderConfig(top_down_max_z_m=2.0)  # look under the ceiling
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"seed": args.seed, "text_space": "synthetic (not CLIP)"}

    t0 = _step(f"1/5 synthetic room (seed {args.seed}) → ROS 2 bag")
    synth_cfg = SynthConfig(
        render=RenderConfig(
            width=args.width, height=args.height, n_frames=args.frames, rate_hz=args.rate_hz
        )
    )
    scene_dir = out / "scene"
    synth = synthesize(scene_dir, args.seed, synth_cfg, force=True)
    gt = synth.groundtruth
    names = sorted({i.class_name for i in gt.instances})
    print(f"   {synth.bag_path}: {args.frames} frames {args.width}x{args.height} at "
          f"{args.rate_hz:g} Hz, {len(gt.instances)} instances of {len(names)} classes")
    summary["scene"] = {"instances": len(gt.instances), "classes": names}
    _done(t0)

    t0 = _step("2/5 bag replay → semantic voxel map (2D oracle-noise segmenter on keyframes)")
    mapper = MapperConfig(voxel_size_m=args.voxel_size_m)
    cfg = ReplayConfig(
        pipeline=PipelineConfig(mapper=mapper, keyframes=KeyframeConfig(), overflow_policy="block"),
        segmenter=SegmenterConfig(kind="oracle", text_space="synthetic"),
    )
    segmenter, encoder = build_segmenter(cfg.segmenter, bag=synth.bag_path)
    pipeline = replay(synth.bag_path, cfg, segmenter=segmenter, text_encoder=encoder,
                      progress=False)
    stats = pipeline.stats_dict()
    smap = pipeline.map
    print(f"   {stats['frames_integrated']} frames fused, {stats['keyframes_segmented']} keyframes "
          f"segmented, {smap.num_voxels} voxels, {smap.mask_bank.num_masks} masks")
    summary["pipeline"] = stats
    _done(t0)

    t0 = _step(f"3/5 mask distillation into a narrow MinkUNet ({args.train_epochs} epochs, "
               f"Adam lr {args.train_lr:g}, poly 0.9, CPU)")
    train_cfg = TrainConfig(
        scenes=[scene_dir],
        out_dir=out / "net3d",
        cache_dir=out / "net3d" / "cache",
        model=MinkUNetConfig.narrow(segmenter.embedding_dims),
        max_views_per_step=args.train_views,
        epochs=args.train_epochs,
        batch_size=1,
        lr=args.train_lr,
        mapper=mapper,
        checkpoint_every_epochs=args.train_epochs,
        holdout_every=4,
        segmenter=cfg.segmenter,
    )
    result = train(train_cfg, progress=False)
    iou0, iou1 = (result.metrics.get(k, {}) for k in ("heldout_iou_initial", "heldout_iou_final"))
    print(f"   distillation loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}")
    for space in iou1:
        print(f"   held-out views, mean IoU of 3D masks B'3d vs unprojected 2D masks ({space}): "
              f"{iou0.get(space, float('nan')):.3f} untrained → {iou1[space]:.3f} trained")
    net = Net3D.from_config(Net3DConfig(checkpoint=result.checkpoint))
    refresh_map_features(net, smap)
    summary["distillation"] = {
        "epochs": args.train_epochs, "lr": args.train_lr,
        "loss_first": result.losses[0], "loss_last": result.losses[-1], **result.metrics,
    }  # fmt: skip
    map_path = pipeline.save(out / "map.npz")
    print(f"   map with 3D features saved to {map_path}")
    _done(t0)

    t0 = _step("4/5 open-vocabulary labelling of the map, scored against the ground truth")
    # "A on B" between reconstructed instances: each boundary may move by a voxel layer, so
    # allow three voxels (at 5 cm the monitor on a table measured -0.10 m against 0.1 m).
    relations = RelationConfig(contact_m=3.0 * args.voxel_size_m)
    engine = QueryEngine.from_map(
        smap, encoder, segmenter, QueryConfig(relations=relations)
    )
    eval_scene = load_synthetic(scene_dir)
    report = summarise([evaluate_scene(eval_scene, engine, EvalConfig())])
    write_report(report, out, name="eval")
    for branch, entry in report["branches"].items():
        print("   " + f"{branch:<9} " + "  ".join(
            f"mIoU {split[5:]} {_pct(entry.get(split))}"
            for split in ("miou_all", "miou_head", "miou_common", "miou_tail")
        ))
    print(f"   class queries: precision {_pct(report['query_precision'])}, recall "
          f"{_pct(report['query_recall'])}; relation queries: precision "
          f"{_pct(report['relation_query_precision'])}, recall "
          f"{_pct(report['relation_query_recall'])}")
    labelling = label_map(
        engine.scorer, engine.bank_embeddings, encoder, segmenter,
        LabellingConfig(classes=tuple(eval_scene.class_names)),
    )
    render_map(smap.points_m, out / "map_labels.png", labels=labelling.labels,
               label_names=labelling.names, title="ensemble labels", config=room_view)
    render_map(smap.points_m, out / "map_rgb.png", colors=smap.colors, title="fused colour",
               config=room_view)
    summary["evaluation"] = {k: v for k, v in report.items() if k != "queries"}
    _done(t0)

    t0 = _step("5/5 text queries, each checked against the ground truth")
    gt_voxels = _gt_instance_voxels(gt, smap.points_m, EvalConfig().max_distance_m)
    queries = _demo_queries(gt, gt_voxels, engine.config.relations)
    for q in queries:
        res = engine.query(q.text, top_k=3)
        q.found = len(res.instances)
        if res.instances:
            best = res.instances[0]
            q.best_score = float(best.score)
            q.best_centroid_m = [round(float(c), 2) for c in np.asarray(best.centroid_m)]
            q.best_voxels = best.voxel_indices
            q.best_iou = max(
                (_iou(best.voxel_indices, gt_voxels[i]) for i in q.positives), default=0.0
            )
            q.other_voxels = (
                np.concatenate([i.voxel_indices for i in res.instances[1:]])
                if len(res.instances) > 1 else np.zeros(0, np.int64)
            )  # fmt: skip
        q.correct = (q.found == 0) if not q.positives else q.best_iou >= EvalConfig().instance_iou
        verdict = "correct" if q.correct else "WRONG"
        where = (f", best score {q.best_score:.2f} at {tuple(q.best_centroid_m)} m, IoU with the "
                 f"true instance {q.best_iou:.2f}" if q.best_centroid_m else "")
        print(f"   [{verdict}] {q.kind:<9} {q.text!r}: {q.found} instance(s){where}")
    _draw_queries(out / "queries.png", smap.points_m, smap.colors, queries, gt_voxels)
    summary["queries"] = [
        {"kind": q.kind, "query": q.text, "correct": q.correct, "instances": q.found,
         "best_score": q.best_score, "best_centroid_m": q.best_centroid_m,
         "best_iou": round(q.best_iou, 3), "true_instances": q.positives}
        for q in queries
    ]
    print(f"   {sum(q.correct for q in queries)}/{len(queries)} answers correct; "
          f"pictures: {out / 'queries.png'}")
    _done(t0)
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _iou(a: NDArray[np.int64], b: NDArray[np.int64]) -> float:
    inter = np.intersect1d(a, b).size
    union = np.union1d(a, b).size
    return inter / union if union else 0.0


def _gt_instance_voxels(
    gt: Any, points_m: NDArray[np.float32], max_distance_m: float
) -> dict[int, NDArray[np.int64]]:
    """Ground-truth instance id → map voxels whose nearest ground-truth point is on it."""
    from diff2scene.eval.evaluate import nearest_labels

    voxel_inst = nearest_labels(gt.points, gt.point_instance, points_m, max_distance_m)
    return {
        inst.instance_id: np.flatnonzero(voxel_inst == inst.instance_id).astype(np.int64)
        for inst in gt.instances
    }


def _demo_queries(
    gt: Any, gt_voxels: dict[int, NDArray[np.int64]], relations: Any
) -> list[DemoQuery]:
    """A class, an attribute, a relation and an absent-object query the room can check.

    Only instances the map saw (≥ 10 voxels) are asked about. The class is the most common
    object class; the attribute query names one colour of a class the room has in two colours
    (so the colour word decides), the relation is "<A> on the <B>" that holds in the ground
    truth (boxes, with the engine's rule) for an object that stands on furniture, preferring a
    class with several instances so the relation must pick the right one, and the absent
    object is one no room contains.
    """
    from diff2scene.query.instances import Instance
    from diff2scene.query.relations import relation_factor
    from diff2scene.synth.classes import CLASSES

    on_surface = {c.name for c in CLASSES if c.placement == "on_surface"}

    seen = [i for i in gt.instances
            if i.class_name not in _STRUCTURE and gt_voxels[i.instance_id].size >= 10]
    by_class: dict[str, list[Any]] = {}
    for inst in seen:
        by_class.setdefault(inst.class_name, []).append(inst)
    out: list[DemoQuery] = []
    common = sorted(by_class, key=lambda n: (-len(by_class[n]), n))
    if common:
        name = common[0]
        out.append(DemoQuery("class", name, [i.instance_id for i in by_class[name]]))
    two_colours = [n for n in common if len({i.colour_name for i in by_class[n]}) >= 2]
    if two_colours:
        name = two_colours[0]
        colour = sorted({i.colour_name for i in by_class[name]})[0]
        ids = [i.instance_id for i in by_class[name] if i.colour_name == colour]
        out.append(DemoQuery("attribute", f"{colour} {name}", ids))
    elif seen:
        inst = seen[0]
        out.append(DemoQuery("attribute", f"{inst.colour_name} {inst.class_name}",
                             [inst.instance_id]))  # fmt: skip

    def box(inst: Any) -> Instance:
        lo = np.asarray(inst.bbox_min_m, np.float32)
        hi = np.asarray(inst.bbox_max_m, np.float32)
        centre = ((lo + hi) / 2).astype(np.float32)
        return Instance(inst.class_name, 1.0, centre, lo, hi, np.zeros(0, np.int64))

    pairs = [
        (a, b) for a in seen for b in seen
        if a.class_name in on_surface and a.class_name != b.class_name
        and relation_factor("on", box(a), box(b), relations) > 0
    ]  # fmt: skip
    # Prefer a pair whose target class is unique in the room, so the relation is the whole
    # question; otherwise the relation must pick the right one of several.
    pairs.sort(key=lambda p: (len(by_class[p[0].class_name]) == 1, -len(by_class[p[0].class_name])))
    if pairs:
        a, b = pairs[0]
        positives = [
            t.instance_id for t in by_class[a.class_name]
            if any(relation_factor("on", box(t), box(o), relations) > 0
                   for o in by_class[b.class_name])
        ]  # fmt: skip
        anchors = [o.instance_id for o in by_class[b.class_name]]
        out.append(DemoQuery("relation", f"the {a.class_name} on the {b.class_name}",
                             positives, anchors))  # fmt: skip
    out.append(DemoQuery("absent", ABSENT_QUERY, []))
    return out


def _draw_queries(
    path: Path,
    points_m: NDArray[np.float32],
    colors: NDArray[np.uint8],
    queries: Sequence[DemoQuery],
    gt_voxels: dict[int, NDArray[np.int64]],
) -> None:
    """One top-down panel per query: the map greyed, the true instances outlined in green,
    the best answer red, other answers orange, relation anchors blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    below = np.flatnonzero(points_m[:, 2] <= 2.0)  # under the ceiling
    order = below[np.argsort(points_m[below, 2], kind="stable")]
    grey = 0.35 + 0.4 * (colors.astype(np.float32).mean(axis=1, keepdims=True) / 255.0)
    base = np.repeat(grey, 3, axis=1)
    cols = 2
    rows = (len(queries) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 5.5 * rows), squeeze=False)
    for ax, q in zip(axes.ravel(), queries, strict=False):
        ax.scatter(points_m[order, 0], points_m[order, 1], c=base[order], s=0.6, lw=0)
        for iid in q.anchors:
            v = gt_voxels.get(iid, np.zeros(0, np.int64))
            ax.scatter(points_m[v, 0], points_m[v, 1], c="tab:blue", s=1.5, lw=0)
        if q.other_voxels.size:
            v = q.other_voxels
            ax.scatter(points_m[v, 0], points_m[v, 1], c="orange", s=1.5, lw=0)
        if q.best_voxels.size:
            v = q.best_voxels
            ax.scatter(points_m[v, 0], points_m[v, 1], c="red", s=2.0, lw=0)
        for iid in q.positives:
            v = gt_voxels.get(iid, np.zeros(0, np.int64))
            if v.size:
                lo, hi = points_m[v, :2].min(axis=0), points_m[v, :2].max(axis=0)
                ax.add_patch(Rectangle(tuple(lo - 0.05), *(hi - lo + 0.1), fill=False,
                                           ec="green", lw=2.0, ls="--"))  # fmt: skip
        verdict = "correct" if q.correct else "WRONG"
        answer = f"{q.found} instance(s)" if q.found else "no instance"
        ax.set_title(f"{q.kind}: '{q.text}' → {answer} [{verdict}]", fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x [m]")
        ax.set_ylabel("y [m]")
    for ax in axes.ravel()[len(queries):]:
        ax.axis("off")
    fig.suptitle("Query answers (top-down; SYNTHETIC text space, not CLIP): red = best "
                 "answer, orange = other answers,\ngreen dashed = true instances, blue = "
                 "relation anchors", fontsize=11)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    ev = summary["evaluation"]
    lines = [
        "# diff2scene demo (SYNTHETIC text space, not CLIP)", "",
        f"Synthetic room, seed {summary['seed']}: {summary['scene']['instances']} instances of "
        f"{len(summary['scene']['classes'])} classes. 2D branch: oracle-noise segmenter; text: "
        "the synthetic text space (seeded word vectors), because no real CLIP weights exist "
        "here.", "",
        "| branch | mIoU all | head | common | tail |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for branch, r in ev["branches"].items():
        lines.append(f"| {branch} | {_pct(r['miou_all'])} | {_pct(r.get('miou_head'))} | "
                     f"{_pct(r.get('miou_common'))} | {_pct(r.get('miou_tail'))} |")
    lines += ["", f"Class queries: precision {_pct(ev['query_precision'])}, recall "
              f"{_pct(ev['query_recall'])}. Relation queries: precision "
              f"{_pct(ev['relation_query_precision'])}, recall "
              f"{_pct(ev['relation_query_recall'])}."]
    lines += ["", "| kind | query | instances | best score | IoU with truth | verdict |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for a in summary["queries"]:
        best = f"{a['best_score']:.2f}" if a["best_score"] is not None else "–"
        lines.append(f"| {a['kind']} | {a['query']} | {a['instances']} | {best} | "
                     f"{a['best_iou']:.2f} | {'correct' if a['correct'] else 'WRONG'} |")
    lines += ["", f"Total {summary['elapsed_s']:.0f} s.", "",
              "![queries](queries.png)", "![colour](map_rgb.png)", "![labels](map_labels.png)",
              ""]  # fmt: skip
    (out / "summary.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diff2scene.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory")
    parser.add_argument("--seed", type=int, default=15,
                        help="synthetic room seed (15: two monitors, one on a table and one on "
                        "a desk, so the relation query must pick one)")
    parser.add_argument("--frames", type=int, default=150, help="frames in the bag")
    parser.add_argument("--rate-hz", type=float, default=10.0,
                        help="camera frame rate (sets the camera speed along its loop)")
    parser.add_argument("--width", type=int, default=320, help="image width, pixels")
    parser.add_argument("--height", type=int, default=240, help="image height, pixels")
    parser.add_argument("--voxel-size-m", type=float, default=0.05, help="map voxel size, m")
    parser.add_argument("--train-epochs", type=int, default=30, help="distillation epochs")
    parser.add_argument("--train-lr", type=float, default=1e-2,
                        help="distillation Adam learning rate")
    parser.add_argument("--train-views", type=int, default=8,
                        help="keyframes per distillation step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    summary = run(args)
    summary["elapsed_s"] = time.perf_counter() - t0
    _write_summary(args.out, summary)
    print(f"\ndone in {summary['elapsed_s']:.0f} s — see {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

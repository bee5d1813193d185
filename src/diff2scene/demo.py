"""``make demo``: the whole job on a synthetic room, end to end, on a CPU.

1. generate a procedural room and write it as a ROS 2 bag (MCAP) with ground truth,
2. replay the bag through the online pipeline (the oracle-noise 2D segmenter stands in for the
   diffusion model, whose weights cannot be downloaded here — DESIGN §5),
3. distil the unprojected 2D masks into the 3D network and run it over the map,
4. label the map with the scene's vocabulary (salient, geometric and ensemble branches) and
   score it against the ground truth,
5. answer text queries, including relations, and draw everything to PNG files.

Everything lands in ``--out`` (default ``demo_out/``); ``summary.md`` links the pictures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_LOG = logging.getLogger("diff2scene.demo")



def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from diff2scene.mapping.keyframes import KeyframeConfig
    from diff2scene.mapping.mapper import MapperConfig
    from diff2scene.mapping.render import RenderConfig as MapRenderConfig
    from diff2scene.mapping.render import render_map
    from diff2scene.net3d.inference import Net3D, Net3DConfig
    from diff2scene.net3d.model import MinkUNetConfig
    from diff2scene.net3d.train import TrainConfig, train
    from diff2scene.pipeline import PipelineConfig
    from diff2scene.query.engine import QueryConfig, QueryEngine
    from diff2scene.query.labelling import LabellingConfig, label_map
    from diff2scene.replay import ReplayConfig, SegmenterConfig, build_segmenter, replay
    from diff2scene.synth.dataset import SynthConfig, synthesize
    from diff2scene.synth.render import RenderConfig

    room_view = MapRenderConfig(top_down_max_z_m=2.0)  # look under the ceiling
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"seed": args.seed}

    t0 = _step(f"1/5 synthetic room (seed {args.seed}) → ROS 2 bag")
    synth_cfg = SynthConfig(
        render=RenderConfig(width=args.width, height=args.height, n_frames=args.frames)
    )
    scene_dir = out / "scene"
    synth = synthesize(scene_dir, args.seed, synth_cfg, force=True)
    gt = synth.groundtruth
    names = sorted({i.class_name for i in gt.instances})
    print(f"   {synth.bag_path}: {args.frames} frames {args.width}x{args.height}, "
          f"{len(gt.instances)} instances of {len(names)} classes")
    summary["scene"] = {"instances": len(gt.instances), "classes": names}
    _done(t0)

    t0 = _step("2/5 bag replay → semantic voxel map (2D oracle-noise segmenter on keyframes)")
    mapper = MapperConfig(voxel_size_m=args.voxel_size_m)
    cfg = ReplayConfig(
        pipeline=PipelineConfig(mapper=mapper, keyframes=KeyframeConfig(), overflow_policy="block"),
        segmenter=SegmenterConfig(kind="oracle"),
    )
    segmenter, encoder = build_segmenter(cfg.segmenter, bag=synth.bag_path)
    pipeline = replay(synth.bag_path, cfg, segmenter=segmenter, progress=False)
    stats = pipeline.stats_dict()
    smap = pipeline.map
    print(f"   {stats['frames_integrated']} frames fused, {stats['keyframes_segmented']} keyframes "
          f"segmented, {smap.num_voxels} voxels, {smap.mask_bank.num_masks} masks")
    summary["pipeline"] = stats
    _done(t0)

    t0 = _step(f"3/5 mask distillation into a narrow MinkUNet ({args.train_epochs} epochs, CPU)")
    train_cfg = TrainConfig(
        scenes=[scene_dir],
        out_dir=out / "net3d",
        cache_dir=out / "net3d" / "cache",
        model=MinkUNetConfig.narrow(segmenter.embedding_dims),
        max_views_per_step=8,
        epochs=args.train_epochs,
        batch_size=1,
        lr=args.train_lr,
        mapper=mapper,
        checkpoint_every_epochs=args.train_epochs,
        holdout_every=4,
    )
    train_cfg.segmenter = cfg.segmenter
    result = train(train_cfg, progress=False)
    iou0, iou1 = (result.metrics.get(k, {}) for k in ("heldout_iou_initial", "heldout_iou_final"))
    print(f"   distillation loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}")
    for space in iou1:
        print(f"   held-out views, mean IoU of 3D masks B'3d vs unprojected 2D masks ({space}): "
              f"{iou0.get(space, float('nan')):.3f} untrained → {iou1[space]:.3f} trained")
    net = Net3D.from_config(Net3DConfig(checkpoint=result.checkpoint))
    net.update(smap.coords, smap.colors)
    smap.features_3d = dict(net.features)
    summary["distillation"] = {
        "loss_first": result.losses[0], "loss_last": result.losses[-1], **result.metrics,
    }
    map_path = pipeline.save(out / "map.npz")
    print(f"   map with 3D features saved to {map_path}")
    _done(t0)

    t0 = _step("4/5 open-vocabulary labelling of the map, scored against the ground truth")
    from diff2scene.eval.datasets import load_synthetic
    from diff2scene.eval.evaluate import EvalConfig, evaluate_scene, summarise, write_report

    engine = QueryEngine.from_map(smap, encoder, segmenter, QueryConfig())
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
          f"{_pct(report['relation_query_precision'])}")
    labelling = label_map(
        engine.scorer, engine.bank_embeddings, encoder, segmenter,
        LabellingConfig(classes=tuple(eval_scene.class_names)),
    )
    render_map(smap.points_m, out / "map_labels.png", labels=labelling.labels,
               label_names=labelling.names,
               title="ensemble labels", config=room_view)
    render_map(smap.points_m, out / "map_rgb.png", colors=smap.colors, title="fused colour",
               config=room_view)
    summary["evaluation"] = {k: v for k, v in report.items() if k != "queries"}
    _done(t0)

    t0 = _step("5/5 text queries")
    queries = _demo_queries(gt, report)
    answers = []
    for text in queries:
        res = engine.query(text, top_k=3)
        best = res.instances[0] if res.instances else None
        line = (f"   {text!r:<40} → {len(res.instances)} instance(s)"
                + (f", best score {best.score:.2f} at ("
                   + ", ".join(f"{c:.2f}" for c in np.asarray(best.centroid_m)) + ") m"
                   if best else ""))
        print(line)
        answers.append({
            "query": text,
            "instances": [
                {"score": float(i.score), "centroid_m": np.asarray(i.centroid_m).tolist(),
                 "box_size_m": np.asarray(i.box_size_m).tolist(), "points": int(i.num_points)}
                for i in res.instances
            ],
            "ms": res.timings_ms,
        })
        if best is not None and text == queries[0]:
            labels = np.full(smap.num_voxels, -1, np.int32)
            labels[res.matched] = 1
            render_map(smap.points_m, out / "query.png", labels=labels, title=f"query: {text}",
                       config=room_view)
    summary["queries"] = answers
    print("   (the text tower is tiny and random here: class names match the oracle's masks, but")
    print("    attribute words like colours carry no meaning without real CLIP weights)")
    _done(t0)
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _demo_queries(gt: Any, report: dict[str, Any]) -> list[str]:
    """Queries the room can answer: its most common object, an attribute, relations that hold
    in the ground truth (as generated by the evaluation), and something that is not there."""
    objects = [i for i in gt.instances if i.class_name not in ("wall", "floor", "ceiling")]
    counts: dict[str, int] = {}
    for inst in objects:
        counts[inst.class_name] = counts.get(inst.class_name, 0) + 1
    common = sorted(counts, key=lambda n: (-counts[n], n))
    queries = common[:2] if common else ["chair"]
    if objects:
        first = objects[0]
        queries.append(f"{first.colour_name} {first.class_name}")
    structure = ("wall", "floor", "ceiling")
    relations = [
        q["query"] for q in report.get("queries", [])
        if " the " in q["query"] and not any(w in q["query"] for w in structure)
    ]
    queries += relations[:2]
    queries.append("grand piano")
    return queries


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    ev = summary["evaluation"]
    lines = [
        "# diff2scene demo", "",
        f"Synthetic room, seed {summary['seed']}: {summary['scene']['instances']} instances of "
        f"{len(summary['scene']['classes'])} classes. 2D branch: oracle-noise segmenter.", "",
        "| branch | mIoU all | head | common | tail |", "|---|---|---|---|---|",
    ]
    for branch, r in ev["branches"].items():
        lines.append(f"| {branch} | {_pct(r['miou_all'])} | {_pct(r.get('miou_head'))} | "
                     f"{_pct(r.get('miou_common'))} | {_pct(r.get('miou_tail'))} |")
    lines += ["", f"Class queries: precision {_pct(ev['query_precision'])}, recall "
              f"{_pct(ev['query_recall'])}. Relation queries: precision "
              f"{_pct(ev['relation_query_precision'])}, recall "
              f"{_pct(ev['relation_query_recall'])}."]
    lines += ["", "| query | instances | best score |", "|---|---|---|"]
    for a in summary["queries"]:
        best = f"{a['instances'][0]['score']:.2f}" if a["instances"] else "–"
        lines.append(f"| {a['query']} | {len(a['instances'])} | {best} |")
    lines += ["", "![colour](map_rgb.png)", "![labels](map_labels.png)", "![query](query.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diff2scene.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory")
    parser.add_argument("--seed", type=int, default=7, help="synthetic room seed")
    parser.add_argument("--frames", type=int, default=150, help="frames in the bag")
    parser.add_argument("--width", type=int, default=320, help="image width, pixels")
    parser.add_argument("--height", type=int, default=240, help="image height, pixels")
    parser.add_argument("--voxel-size-m", type=float, default=0.05, help="map voxel size, m")
    parser.add_argument("--train-epochs", type=int, default=60, help="distillation epochs")
    parser.add_argument("--train-lr", type=float, default=1e-2, help="distillation learning rate")
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

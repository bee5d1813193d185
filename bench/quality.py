"""The synthetic stand-in for the paper's table: mIoU per branch and split, query precision.

For every seed in ``bench/quality_seeds.txt`` the whole chain runs with the oracle-noise
segmenter (DESIGN §5): synthetic scene → MCAP bag → replay into a map (2D oracle on keyframes,
mask unprojection) → the 3D network trained briefly by mask distillation on all the scenes →
its features on each map → ensemble. Each map is then labelled with the synthetic class list
in the salient, geometric and ensemble branches and asked class-name and relation queries
(:mod:`diff2scene.eval.evaluate`). Confusions and match counts are summed over scenes.

Run: ``PYTHONPATH=src:. python bench/quality.py`` (``make bench-quality``); ``--frames`` and
``--epochs`` trade fidelity for time, ``--work`` keeps the generated data between runs.
Writes ``bench/results/quality.json`` / ``.md`` and the evaluation report beside them.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench.common import RESULTS_DIR, peak_rss_mb, write_results
from diff2scene.eval.datasets import load_synthetic
from diff2scene.eval.evaluate import EvalConfig, evaluate_scene, summarise, write_report
from diff2scene.net3d.inference import Net3D, Net3DConfig
from diff2scene.net3d.model import MinkUNetConfig
from diff2scene.net3d.train import TrainConfig, train
from diff2scene.query.engine import QueryConfig, QueryEngine
from diff2scene.query.ensemble import EnsembleConfig
from diff2scene.replay import ReplayConfig, build_segmenter, replay
from diff2scene.segmentation.oracle import OracleConfig
from diff2scene.synth.classes import CLASSES
from diff2scene.synth.dataset import BAG_DIR, SynthConfig, synthesize

SEEDS_FILE = Path(__file__).resolve().parent / "quality_seeds.txt"
#: The oracle's degradation for the benchmark: a plausible, imperfect 2D model.
ORACLE_NOISE = {
    "boundary_px": 2,
    "edge_softness_px": 2.0,
    "min_area_px": 64,
    "miss_prob": 0.1,
    "merge_prob": 0.1,
    "spurious_prob": 0.2,
    "confusion_prob": 0.1,
    "embedding_noise": 0.3,
}


def read_seeds(path: Path = SEEDS_FILE) -> list[int]:
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return [int(ln) for ln in lines if ln]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_quality"))
    parser.add_argument("--frames", type=int, default=150, help="frames rendered per scene")
    parser.add_argument("--epochs", type=int, default=60, help="3D distillation epochs")
    parser.add_argument("--width", type=int, default=320, help="image width, pixels")
    parser.add_argument("--height", type=int, default=240, help="image height, pixels")
    parser.add_argument("--voxel-size-m", type=float, default=0.05, help="map voxel size, m")
    parser.add_argument("--lr", type=float, default=1e-2, help="distillation learning rate")
    parser.add_argument("--full-model", action="store_true",
                        help="train the full MinkUNet18A instead of the narrow preset")
    parser.add_argument("--seeds", type=int, default=0, help="use only the first N seeds")
    parser.add_argument("--device", default="cpu", help="torch device of the 3D network")
    parser.add_argument("--jobs", type=int, default=1, help="scenes synthesised in parallel")
    args = parser.parse_args()
    torch.set_num_threads(1)  # see tests/conftest.py: more threads were slower on 2 cores
    seeds = read_seeds()
    if args.seeds:
        seeds = seeds[: args.seeds]
    t_start = time.perf_counter()
    synth_cfg = SynthConfig()
    synth_cfg.render.n_frames = args.frames
    synth_cfg.render.width, synth_cfg.render.height = args.width, args.height
    scene_dirs = [args.work / f"scene_{seed:04d}" for seed in seeds]
    todo = [(d, s) for d, s in zip(scene_dirs, seeds, strict=True) if not (d / BAG_DIR).is_dir()]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for _ in pool.map(synthesize, [d for d, _ in todo], [s for _, s in todo],
                          [synth_cfg] * len(todo)):  # fmt: skip
            pass

    replay_cfg = ReplayConfig()
    replay_cfg.pipeline.mapper.voxel_size_m = args.voxel_size_m
    replay_cfg.segmenter.oracle = OracleConfig(**ORACLE_NOISE)  # type: ignore[arg-type]
    segmenter, encoder = build_segmenter(replay_cfg.segmenter, bag=scene_dirs[0] / BAG_DIR)
    dims = segmenter.embedding_dims

    # Brief distillation on all scenes with the same segmenter and text encoder.
    train_cfg = TrainConfig(
        scenes=scene_dirs,
        out_dir=args.work / "net3d",
        cache_dir=args.work / "net3d" / "cache",
        model=MinkUNetConfig(head_dims=dict(dims)) if args.full_model
        else MinkUNetConfig.narrow(dims),
        mapper=replay_cfg.pipeline.mapper,
        epochs=args.epochs,
        device=args.device,
        batch_size=min(8, len(scene_dirs)),
        lr=args.lr,
        max_views_per_step=8,
        checkpoint_every_epochs=max(1, args.epochs),
        segmenter=replay_cfg.segmenter,
    )
    trained = train(train_cfg, progress=False)
    if trained.checkpoint is None:
        raise RuntimeError("distillation wrote no checkpoint")
    net = Net3D.from_config(Net3DConfig(checkpoint=trained.checkpoint, device=args.device))

    names = [c.name for c in CLASSES]
    query_cfg = QueryConfig(background_vocabulary="", background_extra=tuple(names))
    evaluations = []
    for out in scene_dirs:
        segmenter, encoder = build_segmenter(replay_cfg.segmenter, bag=out / BAG_DIR)
        smap = replay(out / BAG_DIR, replay_cfg, segmenter=segmenter, progress=False).map
        net.features = {s: f[:0] for s, f in net.features.items()}
        net.update(smap.coords, smap.colors)
        smap.features_3d = {s: f.copy() for s, f in net.features.items()}
        engine = QueryEngine.from_map(
            smap, encoder, segmenter, query_cfg, ensemble=EnsembleConfig()
        )
        evaluations.append(evaluate_scene(load_synthetic(out), engine, EvalConfig()))
    report = summarise(evaluations)
    write_report(report, RESULTS_DIR, name="quality_report")

    figures: dict[str, float | int | str | list[int]] = {}
    for branch in ("salient", "geometric", "ensemble"):
        entry = report["branches"].get(branch, {})
        for split in ("all", "head", "common", "tail"):
            value = entry.get(f"miou_{split}")
            figures[f"miou_{branch}_{split}"] = (
                round(100 * value, 2) if value is not None else "n/a"
            )
    for key in (
        "query_precision",
        "query_recall",
        "relation_query_precision",
        "relation_query_recall",
    ):
        value = report[key]
        figures[key] = round(100 * value, 2) if value is not None else "n/a"
    figures["seeds"] = seeds
    figures["frames_per_scene"] = args.frames
    figures["distillation_epochs"] = args.epochs
    figures["image_size"] = f"{args.width}x{args.height}"
    figures["voxel_size_m"] = args.voxel_size_m
    figures["net3d_model"] = "MinkUNet18A" if args.full_model else "narrow MinkUNet (8-16 ch)"
    figures["wall_s"] = round(time.perf_counter() - t_start, 1)
    figures["process_peak_rss_mb"] = round(peak_rss_mb(), 0)
    write_results(
        "quality",
        figures,
        title="Synthetic benchmark: mIoU (%) per branch and split, query precision/recall (%)",
        notes=(
            "Oracle-noise segmenter ("
            + ", ".join(f"{k}={v}" for k, v in ORACLE_NOISE.items())
            + "), tiny random CLIP text tower, 3D network distilled for the given epochs on the"
            " same scenes. Per-class IoUs and every query: quality_report.json/.md/.png."
        ),
    )
    print(figures)


if __name__ == "__main__":
    main()

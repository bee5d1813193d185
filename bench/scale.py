"""A building floor through the mapping runtime: memory per surface voxel, keyframe cost as the
map grows, stalls, queries, save and load at full size.

A synthetic floor (``diff2scene synth --floor``: rooms along corridors, a camera tour that
visits every room and comes back to the first) is rendered once into a bag, then replayed
through :class:`~diff2scene.runtime.MappingRuntime` with default settings (deterministic: the
2D model — the oracle, with its default (typical) noise — runs inline on every keyframe; no 3D
branch, whose default needs a trained checkpoint) in this process, so that whole-process RSS
says what the map costs:

* ``bytes_per_surface_voxel_all_in``: RSS at the end of the run minus RSS just before the first
  frame (the runtime, models and the TSDF working set already allocated), over surface voxels;
* ``keyframe_semantic_ms_*``: the pipeline's per-keyframe semantic work (surface refresh,
  unprojection, membership merge) while the map holds about 1M voxels and about its final
  size, and their ratio;
* ``integrate_ms_max``: the slowest single fusion of the whole run (a hash-map rehash would
  show here);
* queries over the full map after the run (the query engine built first, timed apart), save
  and load of the map.

Run: ``python -m bench.scale [--rooms 6x5] [--width 640 --height 480]``; the bag is cached in
``--work`` (default ``/tmp/diff2scene_scale``). Not part of ``make test`` (tens of minutes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_results
from diff2scene.io.bag import BagFrameSource
from diff2scene.memory import peak_rss_mib, rss_mib
from diff2scene.query.engine import QueryEngine
from diff2scene.runtime import MappingRuntime, RuntimeConfig, build_models
from diff2scene.segmentation.factory import SegmenterConfig
from diff2scene.synth.dataset import BAG_DIR, SynthConfig, synthesize
from diff2scene.synth.floor import FloorConfig
from diff2scene.synth.render import RenderConfig

#: Bytes per surface voxel of the layout before the working-set TSDF, measured on the demo
#: room by bench/mapping.py (commit 9b4c20f): geometry 522 B (16³ float32 blocks, 26-32
#: allocated TSDF voxels per surface voxel), semantics 68 B; the 3D branch adds 2048 B.
BYTES_PER_VOXEL_BEFORE = 522 + 68
QUERIES = ("chair", "table", "bed", "monitor", "plant", "sofa", "door", "picture")
#: Classes that are the building itself, not objects in a room.
STRUCTURE = ("wall", "floor", "ceiling", "door", "window")


def _floor(args: argparse.Namespace) -> Path:
    nx, ny = (int(v) for v in args.rooms.lower().split("x"))
    out: Path = args.work / f"floor_{nx}x{ny}_{args.width}x{args.height}_seed{args.seed}"
    if (out / BAG_DIR / "metadata.yaml").is_file():
        return out
    config = SynthConfig(
        floor=FloorConfig(rooms_x=nx, rooms_y=ny),
        render=RenderConfig(width=args.width, height=args.height),
    )
    t0 = time.perf_counter()
    synthesize(out, args.seed, config, force=True,
               announce=lambda plan: print(f"rendering {plan.n_frames} frames, "
                                           f"{plan.area_m2:.0f} m²", flush=True))  # fmt: skip
    print(f"floor rendered in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _first_room(scene: Path) -> tuple[tuple[float, float, float, float], list[str]]:
    """The first room's rectangle (x0, x1, y0, y1) and the classes of the objects in it."""
    data = json.loads((scene / "scene.json").read_text())
    meta = data["metadata"]
    rect = tuple(meta["floor"]["rooms"][meta["route"]["first_room"]]["rect_m"])
    x0, x1, y0, y1 = rect
    names = set()
    for inst in data["instances"]:
        lo, hi = np.asarray(inst["bbox_min_m"]), np.asarray(inst["bbox_max_m"])
        c = (lo + hi) / 2
        if x0 < c[0] < x1 and y0 < c[1] < y1 and inst["class_name"] not in STRUCTURE:
            names.add(inst["class_name"])
    return (x0, x1, y0, y1), sorted(names)


def _room_answers(
    runtime: MappingRuntime, rect: tuple[float, float, float, float], names: list[str]
) -> dict[str, list[list[float]]]:
    """Per class: every instance centred in ``rect`` (centre, box corners, voxels).

    Asked of an engine over the runtime's newest snapshot that keeps every instance (no top-k,
    no pruning of fragments relative to the largest): what a query returns is ranked against
    the whole searched map, which differs between a run that searches every voxel and one
    that searches those in memory; what was found in the room must not."""
    x0, x1, y0, y1 = rect
    config = replace(runtime.config.query, top_k=1_000_000,
                     instances=replace(runtime.config.query.instances, min_relative_mass=0.0))
    engine = QueryEngine.from_snapshot(
        runtime.session.engine().snapshot, runtime.text_encoder, runtime.segmenter, config,
        ensemble=runtime.config.ensemble,
    )  # fmt: skip
    out: dict[str, list[list[float]]] = {}
    for name in names:
        rows = []
        for inst in engine.query(name).instances:
            c = inst.centroid_m
            if x0 < c[0] < x1 and y0 < c[1] < y1:
                rows.append([*map(float, c), *map(float, inst.box_min_m),
                             *map(float, inst.box_max_m), float(inst.num_points)])  # fmt: skip
        out[name] = sorted(rows)
    return out


def _same_answers(
    a: dict[str, list[list[float]]], b: dict[str, list[list[float]]], voxel_m: float
) -> bool:
    """Same classes, same instance count each, centres and box corners within one voxel."""
    if a.keys() != b.keys():
        return False
    for name, rows in a.items():
        if len(rows) != len(b[name]):
            return False
        for x, y in zip(rows, b[name], strict=True):
            if np.max(np.abs(np.asarray(x[:9]) - np.asarray(y[:9]))) > voxel_m + 1e-6:
                return False
    return True


def _run(args: argparse.Namespace, scene: Path, budget_mb: float) -> dict[str, Any]:
    """One replay of the floor in this process (default settings, or ``budget_mb``)."""
    bag = scene / BAG_DIR
    config = RuntimeConfig(segmenter=SegmenterConfig(
        kind="oracle"))  # the oracle's default noise: the typical preset
    config.pipeline.threaded = False  # every keyframe segmented, in bag order
    if budget_mb:
        config.pipeline.memory_budget_mb = budget_mb
        config.pipeline.spill_dir = str(args.work / "spill")
    segmenter, encoder = build_models(config, bag=bag)
    # (stage, seconds, surface voxels when it ended) of every stage run
    stages: list[tuple[str, float, int]] = []
    runtime: MappingRuntime | None = None

    def on_stage_time(stage: str, seconds: float) -> None:
        voxels = runtime.pipeline.map.num_voxels if runtime is not None else 0
        stages.append((stage, seconds, voxels))

    rss_before_runtime = rss_mib() or 0.0
    runtime = MappingRuntime(config, segmenter=segmenter, text_encoder=encoder,
                             frames="inline", background_queries=False,
                             expect_instances=True, on_stage_time=on_stage_time)  # fmt: skip
    gc.collect()
    rss_before = rss_mib() or 0.0
    t0 = time.perf_counter()
    frames = 0
    for raw in BagFrameSource(bag).raw_frames(runtime.assembler):
        runtime.submit([raw])
        frames += 1
        if frames % 500 == 0:
            print(f"{frames} frames, {runtime.pipeline.map.num_voxels} voxels, "
                  f"RSS {rss_mib():.0f} MiB", flush=True)
    runtime.finish()
    replay_s = time.perf_counter() - t0
    gc.collect()
    rss_end = rss_mib() or 0.0
    peak_mapping = peak_rss_mib()
    smap = runtime.pipeline.map
    voxels = smap.num_voxels
    mapper = runtime.pipeline.mapper
    stats = runtime.pipeline.stats_dict()

    fusion_ms = np.array([s * 1e3 for name, s, _ in stages if name == "fusion"])
    semantic = [(s * 1e3, v) for name, s, v in stages if name == "unproject"]
    sem_ms = np.array([ms for ms, _ in semantic])
    sem_vox = np.array([v for _, v in semantic])
    at_1m = sem_ms[(sem_vox >= 0.8e6) & (sem_vox <= 1.25e6)]
    at_end = sem_ms[sem_vox >= 0.9 * voxels]

    t0 = time.perf_counter()
    engine = runtime.session.engine()
    engine_s = time.perf_counter() - t0
    rss_engine = rss_mib() or 0.0
    query_ms: list[float] = []
    found = 0
    for text in QUERIES * 3:  # the first round pays the text encodings
        t0 = time.perf_counter()
        answer = runtime.query(text)
        query_ms.append((time.perf_counter() - t0) * 1e3)
        found += bool(answer.result.instances)
    rect, names = _first_room(scene)
    room = _room_answers(runtime, rect, names)
    peak_default = peak_rss_mib()  # mapping and queries
    path = args.work / f"scale_map_{budget_mb:.0f}.npz"
    t0 = time.perf_counter()
    runtime.save(path)
    save_s = time.perf_counter() - t0
    peak_save = peak_rss_mib()
    figures: dict[str, Any] = {
        "frames": frames,
        "frames_integrated": stats["frames_integrated"],
        "keyframes_segmented": stats["keyframes_segmented"],
        "surface_voxels": voxels,
        "replay_s": round(replay_s, 1),
        "rss_mb_before_runtime": round(rss_before_runtime, 1),
        "rss_mb_before_first_frame": round(rss_before, 1),
        "rss_mb_end": round(rss_end, 1),
        "peak_rss_mb_mapping": round(peak_mapping, 1),
        "peak_rss_mb_with_queries": round(peak_default, 1),
        "peak_rss_mb_with_save": round(peak_save, 1),
        "bytes_per_surface_voxel_all_in": round((rss_end - rss_before) * 2**20 / max(voxels, 1),
                                                1),
        "bytes_per_surface_voxel_with_query_engine": round(
            (rss_engine - rss_before) * 2**20 / max(voxels, 1), 1),
        "bytes_per_surface_voxel_geometry_index": round(
            (mapper.geometry_nbytes - _tsdf_bytes(mapper)) / max(voxels, 1), 1),
        "tsdf_working_set_mb": round(_tsdf_bytes(mapper) / 2**20, 1),
        "tsdf_blocks_evicted": mapper.stats.blocks_evicted,
        "bytes_per_surface_voxel_semantics": round(smap.semantic_nbytes / max(voxels, 1), 1),
        "bytes_per_surface_voxel_map_in_memory": round(smap.memory_nbytes / max(voxels, 1), 1),
        "integrate_ms_max": round(float(fusion_ms.max()), 1) if fusion_ms.size else None,
        "integrate_ms_p50": round(float(np.median(fusion_ms)), 1) if fusion_ms.size else None,
        "keyframe_semantic_ms_p50_1m": round(float(np.median(at_1m)), 1) if at_1m.size else None,
        "keyframe_semantic_ms_p50_end": round(float(np.median(at_end)), 1)
        if at_end.size else None,
        "keyframes_measured_1m": int(at_1m.size),
        "keyframes_measured_end": int(at_end.size),
        "query_engine_build_s_end": round(engine_s, 2),
        "query_voxels_searched_end": engine.snapshot.num_voxels,
        "query_voxels_not_searched_end": engine.snapshot.voxels_not_searched,
        "query_ms_p50_end": round(float(np.percentile(query_ms, 50)), 1),
        "query_ms_p95_end": round(float(np.percentile(query_ms, 95)), 1),
        "queries_with_instances": f"{found}/{len(query_ms)}",
        "save_s_end": round(save_s, 2),
        "map_file_mb": round(path.stat().st_size / 2**20, 1),
        "map_blocks_evicted": stats["map_blocks_evicted"],
        "map_blocks_reloaded": stats["map_blocks_reloaded"],
        "map_mb_spilled_end": stats["map_mb_spilled"],
        "memory_budget_short_keyframes": stats["memory_budget_short"],
        "first_room_answers": room,
        "voxel_size_m": smap.voxel_size_m,
    }
    if at_1m.size and at_end.size:
        figures["keyframe_semantic_ms_ratio_end_over_1m"] = round(
            float(np.median(at_end) / np.median(at_1m)), 3)
    if not budget_mb:
        # Load into a fresh process state as a user would: the runtime's map replaced.
        del engine, answer
        runtime.session.refresh()
        gc.collect()
        t0 = time.perf_counter()
        figures["loaded_voxels"] = runtime.load(path)
        figures["load_s_end"] = round(time.perf_counter() - t0, 2)
        figures["peak_rss_mb_with_save_load"] = round(peak_rss_mib(), 1)
    return figures


def _tsdf_bytes(mapper: Any) -> int:
    cfg = mapper.config
    return int(cfg.max_tsdf_blocks * cfg.block_resolution**3 * (12 if cfg.compact_tsdf else 20))


def _child(args: argparse.Namespace, budget_mb: float) -> dict[str, Any]:
    """One run in its own process (peak RSS is per process)."""
    out = args.work / f"run_{budget_mb:.0f}.json"
    cmd = [sys.executable, "-m", "bench.scale", "--run", "--budget-mb", str(budget_mb),
           "--partial", str(out), "--rooms", args.rooms, "--width", str(args.width),
           "--height", str(args.height), "--seed", str(args.seed),
           "--work", str(args.work)]  # fmt: skip
    subprocess.run(cmd, check=True)
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def _budget_figures(
    prefix: str, budget_mb: float, run: dict[str, Any], default: dict[str, Any]
) -> dict[str, Any]:
    """The keys of one budgeted run; ``prefix`` "" names the run the issue's keys are for
    (a budget of half the default run's peak)."""
    keys = {
        "memory_budget_mb": budget_mb,
        "budget_surface_voxels": run["surface_voxels"],
        "budget_peak_rss_mb": run["peak_rss_mb_with_queries"],
        "budget_peak_rss_mb_mapping": run["peak_rss_mb_mapping"],
        "budget_peak_rss_mb_with_save": run["peak_rss_mb_with_save"],
        "peak_rss_mb_over_budget_ratio": round(run["peak_rss_mb_with_queries"] / budget_mb, 3),
        "budget_rss_mb_before_first_frame": run["rss_mb_before_first_frame"],
        "budget_blocks_evicted": run["map_blocks_evicted"],
        "budget_blocks_reloaded": run["map_blocks_reloaded"],
        "budget_map_mb_spilled_end": run["map_mb_spilled_end"],
        "budget_bytes_per_surface_voxel_map_in_memory":
            run["bytes_per_surface_voxel_map_in_memory"],
        "budget_keyframes_over_budget": run["memory_budget_short_keyframes"],
        "budget_replay_s": run["replay_s"],
        "budget_integrate_ms_max": run["integrate_ms_max"],
        "budget_keyframe_semantic_ms_p50_end": run["keyframe_semantic_ms_p50_end"],
        "budget_query_ms_p95_end": run["query_ms_p95_end"],
        "budget_query_voxels_not_searched_end": run["query_voxels_not_searched_end"],
        "budget_save_s_end": run["save_s_end"],
        "revisit_answers_identical": _same_answers(
            default["first_room_answers"], run["first_room_answers"], default["voxel_size_m"]),
    }
    if not prefix:
        return keys
    return {(prefix + k.removeprefix("budget_")) if k.startswith("budget_") else prefix + k: v
            for k, v in keys.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", default="6x5", help="rooms along x by y (6x5: ~1200 m²)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/diff2scene_scale"))
    parser.add_argument("--name", default="scale", help="results file name")
    parser.add_argument("--budget-mb", type=float, default=0.0,
                        help="budget of the second run, MiB (default: half the default run's "
                             "peak RSS)")  # fmt: skip
    parser.add_argument("--second-budget-fraction", type=float, default=0.8,
                        help="a third run with this fraction of the default run's peak as its "
                             "budget (0: none)")  # fmt: skip
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--partial", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scene = _floor(args)
    if args.run:  # a child: one run, its figures to --partial
        args.partial.write_text(json.dumps(_run(args, scene, args.budget_mb)))
        return
    load_start = os.getloadavg()
    default = _child(args, 0.0)
    budget_mb = args.budget_mb or round(default["peak_rss_mb_with_queries"] / 2)
    bounded = _child(args, budget_mb)
    voxels = default["surface_voxels"]
    figures: dict[str, Any] = {
        "floor_rooms": args.rooms,
        "image_size": f"{args.width}x{args.height}",
        **{k: v for k, v in default.items() if k not in ("first_room_answers", "voxel_size_m")},
        "peak_rss_mb_default": default["peak_rss_mb_with_queries"],
        "bytes_per_surface_voxel_before_change_estimate": BYTES_PER_VOXEL_BEFORE,
        "revisit_classes_compared": len(default["first_room_answers"]),
        "revisit_instances_compared": sum(len(v) for v in default["first_room_answers"].values()),
    }
    runs = [("", budget_mb, bounded)]
    if args.second_budget_fraction:
        second_mb = round(default["peak_rss_mb_with_queries"] * args.second_budget_fraction)
        pct = round(100 * args.second_budget_fraction)
        runs.append((f"budget{pct}_", second_mb, _child(args, second_mb)))
    for prefix, mb, run in runs:
        figures.update(_budget_figures(prefix, mb, run, default))
    if voxels >= 10_000_000:  # the keys name the size they were measured at
        figures.update({
            "query_ms_p95_10m": default["query_ms_p95_end"],
            "keyframe_semantic_ms_ratio_10m_over_1m":
                default.get("keyframe_semantic_ms_ratio_end_over_1m"),
            "save_s_10m": default["save_s_end"],
            "load_s_10m": default["load_s_end"],
        })
    figures["load_avg_start"] = [round(v, 2) for v in load_start]
    figures["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    notes = (
        "Two processes replay the floor's bag through MappingRuntime, one after the other: the "
        "default run (default settings, no memory budget) and the budgeted run "
        "(pipeline.memory_budget_mb = `memory_budget_mb`, half the default run's peak RSS "
        "unless --budget-mb says otherwise; spill store in the work directory). Both in "
        "deterministic mode: the oracle with the quality benchmark's noise segments every "
        "keyframe inline; no 3D branch. RSS is whole-process (/proc/self/statm, peaks from "
        "getrusage). `bytes_per_surface_voxel_all_in` = (RSS at the end - RSS before the first "
        "frame) / surface voxels, the TSDF working set being allocated before the first frame "
        "(`tsdf_working_set_mb`). Keyframe semantic ms = the pipeline's 'unproject' stage "
        "(surface refresh + unprojection + membership merge) of keyframes while the map held "
        "0.8-1.25M voxels (`_1m`) and at least 90 % of its final size (`_end`). "
        "`peak_rss_mb_default` = the default run's peak over mapping, the query engine build "
        "and the queries; `peak_rss_mb_with_save_load` adds saving the map and loading it "
        "back into the same runtime. `peak_rss_mb_over_budget_ratio` = the budgeted run's peak "
        "over mapping and queries / the budget. `integrate_ms_max` = slowest single fusion of "
        "the run. Queries: class names, three rounds, after the engine build (in the budgeted "
        "run they search the voxels in memory and count the others in "
        "`budget_query_voxels_not_searched_end`). Revisit: the tour ends in the room where it "
        "started; every class with an object in that room is queried at the end of both runs, "
        "and `revisit_answers_identical` says whether the instances centred in that room are "
        "the same in number with centres and box corners within one voxel, every instance "
        "kept (no top-k, no pruning relative to the largest: both depend on the rest of the "
        "searched map) (the budgeted run's "
        "blocks of that room were spilled while the camera was elsewhere and reloaded when it "
        "came back; the default run never evicted anything)."
    )
    write_results(args.name, figures, title="Building floor through the runtime", notes=notes)
    print(figures)


if __name__ == "__main__":
    main()

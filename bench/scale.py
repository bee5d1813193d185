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
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_results
from diff2scene.io.bag import BagFrameSource
from diff2scene.replay_report import peak_rss_mib, rss_mib
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


def _floor(args: argparse.Namespace) -> Path:
    nx, ny = (int(v) for v in args.rooms.lower().split("x"))
    out = args.work / f"floor_{nx}x{ny}_{args.width}x{args.height}_seed{args.seed}"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", default="6x5", help="rooms along x by y (6x5: ~1200 m²)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/diff2scene_scale"))
    parser.add_argument("--name", default="scale", help="results file name")
    args = parser.parse_args()
    load_start = os.getloadavg()
    scene = _floor(args)
    bag = scene / BAG_DIR

    config = RuntimeConfig(segmenter=SegmenterConfig(
        kind="oracle"))  # the oracle's default noise: the typical preset
    config.pipeline.threaded = False  # every keyframe segmented, in bag order
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
    runtime.session.engine()
    engine_s = time.perf_counter() - t0
    rss_engine = rss_mib() or 0.0
    query_ms: list[float] = []
    found = 0
    for text in QUERIES * 3:  # the first round pays the text encodings
        t0 = time.perf_counter()
        answer = runtime.query(text)
        query_ms.append((time.perf_counter() - t0) * 1e3)
        found += bool(answer.result.instances)
    peak_default = peak_rss_mib()  # mapping and queries: the default run
    path = args.work / "scale_map.npz"
    t0 = time.perf_counter()
    runtime.save(path)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = runtime.load(path)
    load_s = time.perf_counter() - t0

    figures: dict[str, Any] = {
        "floor_rooms": args.rooms,
        "image_size": f"{args.width}x{args.height}",
        "frames": frames,
        "frames_integrated": stats["frames_integrated"],
        "keyframes_segmented": stats["keyframes_segmented"],
        "surface_voxels": voxels,
        "replay_s": round(replay_s, 1),
        "rss_mb_before_runtime": round(rss_before_runtime, 1),
        "rss_mb_before_first_frame": round(rss_before, 1),
        "rss_mb_end": round(rss_end, 1),
        "peak_rss_mb_mapping": round(peak_mapping, 1),
        "peak_rss_mb_default": round(peak_default, 1),
        "peak_rss_mb_with_save_load": round(peak_rss_mib(), 1),
        "bytes_per_surface_voxel_all_in": round((rss_end - rss_before) * 2**20 / max(voxels, 1),
                                                1),
        "bytes_per_surface_voxel_with_query_engine": round(
            (rss_engine - rss_before) * 2**20 / max(voxels, 1), 1),
        "bytes_per_surface_voxel_geometry_index": round(
            (mapper.geometry_nbytes - mapper.config.max_tsdf_blocks
             * mapper.config.block_resolution**3 * (12 if mapper.config.compact_tsdf else 20))
            / max(voxels, 1), 1),
        "tsdf_working_set_mb": round(mapper.config.max_tsdf_blocks
                                     * mapper.config.block_resolution**3
                                     * (12 if mapper.config.compact_tsdf else 20) / 2**20, 1),
        "tsdf_blocks_evicted": mapper.stats.blocks_evicted,
        "bytes_per_surface_voxel_semantics": round(smap.semantic_nbytes / max(voxels, 1), 1)
        if hasattr(smap, "semantic_nbytes") else None,
        "bytes_per_surface_voxel_before_change_estimate": BYTES_PER_VOXEL_BEFORE,
        "integrate_ms_max": round(float(fusion_ms.max()), 1) if fusion_ms.size else None,
        "integrate_ms_p50": round(float(np.median(fusion_ms)), 1) if fusion_ms.size else None,
        "keyframe_semantic_ms_p50_1m": round(float(np.median(at_1m)), 1) if at_1m.size else None,
        "keyframe_semantic_ms_p50_end": round(float(np.median(at_end)), 1)
        if at_end.size else None,
        "keyframes_measured_1m": int(at_1m.size),
        "keyframes_measured_end": int(at_end.size),
        "query_engine_build_s_end": round(engine_s, 2),
        "query_ms_p50_end": round(float(np.percentile(query_ms, 50)), 1),
        "query_ms_p95_end": round(float(np.percentile(query_ms, 95)), 1),
        "queries_with_instances": f"{found}/{len(query_ms)}",
        "save_s_end": round(save_s, 2),
        "load_s_end": round(load_s, 2),
        "map_file_mb": round(path.stat().st_size / 2**20, 1),
        "loaded_voxels": loaded,
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
    }
    if at_1m.size and at_end.size:
        figures["keyframe_semantic_ms_ratio_end_over_1m"] = round(
            float(np.median(at_end) / np.median(at_1m)), 3)
    if voxels >= 10_000_000:  # the keys name the size they were measured at
        figures.update({
            "query_ms_p95_10m": figures["query_ms_p95_end"],
            "keyframe_semantic_ms_ratio_10m_over_1m":
                figures.get("keyframe_semantic_ms_ratio_end_over_1m"),
            "save_s_10m": figures["save_s_end"],
            "load_s_10m": figures["load_s_end"],
        })
    notes = (
        "One process replays the floor's bag through MappingRuntime (default settings, "
        "deterministic mode: the oracle with the quality benchmark's noise segments every "
        "keyframe inline; no 3D branch). RSS is whole-process (/proc/self/statm); "
        "`bytes_per_surface_voxel_all_in` = (RSS at the end - RSS before the first frame) / "
        "surface voxels, the TSDF working set being allocated before the first frame "
        "(`tsdf_working_set_mb`). Keyframe semantic ms = the pipeline's 'unproject' stage "
        "(surface refresh + unprojection + membership merge) of keyframes while the map held "
        "0.8-1.25M voxels (`_1m`) and at least 90 % of its final size (`_end`). Peak RSS: "
        "`peak_rss_mb_mapping` after the replay, `peak_rss_mb_default` after the query engine "
        "build and the queries (the default run), `peak_rss_mb_with_save_load` after saving "
        "the map and loading it back into the same runtime (the old map, its query engine "
        "and the loaded map are alive together). "
        "`integrate_ms_max` = slowest single fusion of the run. Queries: class names, three "
        "rounds, after the engine build. The budgeted run (memory_budget_mb, spill) does not "
        "exist yet: no figures for it."
    )
    write_results(args.name, figures, title="Building floor through the runtime", notes=notes)
    print(figures)


if __name__ == "__main__":
    main()

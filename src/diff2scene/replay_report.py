"""Per-stage latencies of a replay, and the report files ``diff2scene replay`` writes.

A replay is the project's benchmarking tool: the same bag through the same pipeline a robot
runs, with every stage timed item by item. Totals hide what matters on a robot — a p95 of the
2D model far above its mean means keyframes pile up — so each stage keeps every latency it
measured and the report gives count, p50, p95, max and mean per stage.

Stages (names as in the report):

* ``read`` — reading the bag, deserialising and pairing colour/depth/pose until the next
  frame is ready (the bag source's work between two frames);
* ``decode`` — decoding and checking the images of one frame (the runtime's frame worker);
* ``fusion`` — TSDF integration of one frame into the map;
* ``segment2d`` — the 2D model on one keyframe;
* ``unproject`` — unprojecting one keyframe's masks into the map and merging memberships;
* ``net3d`` — one run of the 3D network over the map;
* ``query`` — one text query answered from the final map (the engine build of the first
  query is reported apart, as ``query_engine_build``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diff2scene.errors import InputError
from diff2scene.memory import peak_rss_mib, rss_mib

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from diff2scene.io.bag_writer import ResultBagWriter
    from diff2scene.mapping.render import RenderConfig
    from diff2scene.replay import ReplayConfig, ReplayRun
    from diff2scene.runtime import MappingRuntime

__all__ = [
    "STAGES",
    "StageTimes",
    "answer_query",
    "peak_rss_mib",
    "plot_timing",
    "rss_mib",
    "run_report",
    "skip_problems",
    "write_report",
]

#: Stages in pipeline order (others, if recorded, follow).
STAGES = (
    "read", "decode", "fusion", "segment2d", "unproject", "net3d",
    "query_engine_build", "query", "labelling",
)  # fmt: skip


class StageTimes:
    """Thread-safe record of (seconds since start, duration) per stage, plus RSS samples."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._items: dict[str, list[tuple[float, float]]] = {}
        self._rss: list[tuple[float, float]] = []

    def clear(self) -> None:
        """Forget everything recorded (a replay that starts again from a salvaged bag)."""
        with self._lock:
            self._items.clear()
            self._rss.clear()

    def add(self, stage: str, seconds: float) -> None:
        """Record one ``stage`` item that took ``seconds`` (ending now)."""
        now = time.perf_counter() - self._t0
        with self._lock:
            self._items.setdefault(stage, []).append((now, seconds))

    def sample_memory(self) -> None:
        """Record the current resident set size (for the memory curve of the plot)."""
        rss = rss_mib()
        if rss is not None:
            with self._lock:
                self._rss.append((time.perf_counter() - self._t0, rss))

    def durations_s(self, stage: str) -> list[float]:
        with self._lock:
            return [d for _, d in self._items.get(stage, [])]

    def series(self, stage: str) -> list[tuple[float, float]]:
        """(end time since start s, duration s) of each item of ``stage``."""
        with self._lock:
            return list(self._items.get(stage, []))

    def memory(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._rss)

    def stages(self) -> list[str]:
        with self._lock:
            seen = list(self._items)
        return [s for s in STAGES if s in seen] + sorted(s for s in seen if s not in STAGES)

    def summary_ms(self) -> dict[str, dict[str, float]]:
        """stage → count, p50_ms, p95_ms, max_ms, mean_ms, total_s."""
        out: dict[str, dict[str, float]] = {}
        for stage in self.stages():
            d = np.asarray(self.durations_s(stage), dtype=np.float64)
            if d.size == 0:
                continue
            out[stage] = {
                "count": int(d.size),
                "p50_ms": round(float(np.percentile(d, 50)) * 1e3, 3),
                "p95_ms": round(float(np.percentile(d, 95)) * 1e3, 3),
                "max_ms": round(float(d.max()) * 1e3, 3),
                "mean_ms": round(float(d.mean()) * 1e3, 3),
                "total_s": round(float(d.sum()), 4),
            }
        return out


# --------------------------------------------------------------------------- files


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown(report: Mapping[str, Any]) -> str:
    run = report["run"]
    lines = [
        f"# Replay of `{report['bag']}`",
        "",
        f"Mode **{run['mode']}**"
        + (f" at {run['realtime_rate']:g}x the bag's stamps" if run.get("realtime_rate") else "")
        + f"; 2D model: {run['segmenter']}; {run['conditions']}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| frames delivered by the bag / mapped / integrated | {report['frames']['delivered']} / "
        f"{report['frames']['mapped']} / {report['frames']['integrated']} |",
        f"| replay wall time (read → map closed) | {_fmt(run['wall_s'], 2)} s |",
        f"| frames/s (mapped frames over wall time) | {_fmt(run['frames_per_s'], 2)} |",
        f"| bag duration (first → last frame stamp) | {_fmt(run['bag_duration_s'], 2)} s |",
        *([f"| reader behind the pace at most (read + decode slower than RATE) | "
           f"{_fmt(run['reader_lag_s_max'], 3)} s |"] if run.get("realtime_rate") else []),
        f"| keyframes selected / segmented | {report['keyframes']['selected']} / "
        f"{report['keyframes']['segmented']} |",
        f"| dropped: frames (frame queue full) / keyframes (queue full) / keyframes abandoned | "
        f"{report['drops']['frame_queue_full']} / {report['drops']['keyframes_dropped']} / "
        f"{report['drops']['keyframes_abandoned']} |",
        f"| map voxels / masks | {report['map']['voxels']} / {report['map']['masks']} |",
        f"| peak RSS (whole process) | {_fmt(report['peak_rss_mib'])} MiB |",
        "",
        "## Stage latencies",
        "",
        "| stage | count | p50 ms | p95 ms | max ms | mean ms | total s |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, s in report["stages_ms"].items():
        lines.append(
            f"| {stage} | {s['count']} | {_fmt(s['p50_ms'])} | {_fmt(s['p95_ms'])} | "
            f"{_fmt(s['max_ms'])} | {_fmt(s['mean_ms'])} | {_fmt(s['total_s'], 3)} |"
        )
    lines += ["", "![timing](timing.png)", ""]
    skipped = report["frames"]["skipped"]
    if skipped:
        lines += ["## Frames not mapped, by reason", "", "| reason | frames |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(skipped.items())]
        lines.append("")
    problems: Sequence[str] = report["problems"]
    if problems:
        lines += ["## Problems with the bag", ""] + [f"- {p}" for p in problems] + [""]
    warnings: Sequence[str] = report.get("input_warnings", [])
    if warnings:
        lines += ["## Input warnings (first ones)", ""] + [f"- {w}" for w in warnings] + [""]
    queries: Sequence[Mapping[str, Any]] = report["queries"]
    if queries:
        lines += [
            "## Queries", "",
            "| query | instances | best | score | centre x y z m | matched voxels | ms "
            "| heat map |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for q in queries:
            if q.get("error"):
                lines.append(f"| {q['text']} | refused: {q['error']} | | | | | | |")
                continue
            best = q["instances"][0] if q["instances"] else None
            centre = " ".join(f"{v:.2f}" for v in best["centroid_m"]) if best else "–"
            lines.append(
                f"| {q['text']} | {len(q['instances'])} | {best['label'] if best else '–'} | "
                f"{_fmt(best['score'], 2) if best else '–'} | {centre} | "
                f"{q['matched_voxels']} | {_fmt(q['ms'])} | ![]({q['heatmap']}) |"
            )
        lines.append("")
    evaluation = report.get("evaluation")
    if evaluation:
        lines += ["## Evaluation against the bag's ground truth", "",
                  "| branch | mIoU all | head | common | tail |", "|---|---|---|---|---|"]
        for branch, e in evaluation["branches"].items():
            lines.append(
                f"| {branch} | " + " | ".join(
                    _fmt(None if e.get(k) is None else 100 * e[k])
                    for k in ("miou_all", "miou_head", "miou_common", "miou_tail")
                ) + " |"
            )  # fmt: skip
        lines += ["", "Per class and queries: [eval.md](eval.md).", ""]
    lines += ["## Files", ""] + [f"- `{p}`" for p in report["outputs"]] + [""]
    return "\n".join(lines)


#: Skip reasons that mean the bag's content is bad (others are policy: stride, queue full).
_BAD_INPUT_WORDS = ("undecodable", "bad_", "nan", "size_mismatch", "encoding", "truncated")


def skip_problems(counters: Mapping[str, int | float]) -> list[str]:
    """One sentence per kind of bad bag content the input counters show."""
    out = []
    for key, value in sorted(counters.items()):
        if not value or not key.startswith(("skipped_", "rejected_")):
            continue
        reason = key.split("_", 1)[1]
        if any(w in reason for w in _BAD_INPUT_WORDS):
            what = "frame(s) skipped" if key.startswith("skipped_") else "message(s) refused"
            out.append(f"{int(value)} {what}: {reason} (the warnings below name the first ones)")
    return out


def conditions() -> str:
    """The machine and thread settings a replay's timings were measured under."""
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    torch_mod = sys.modules.get("torch")
    torch_threads = f", torch {torch_mod.get_num_threads()} thread(s)" if torch_mod else ""
    return (
        f"{os.cpu_count()} CPU core(s) visible, OMP_NUM_THREADS={threads}{torch_threads}, "
        f"Python {platform.python_version()} on {platform.machine()}"
    )


def run_report(
    run: ReplayRun,
    config: ReplayConfig,
    *,
    bag: Path,
    map_voxels: int,
    map_masks: int,
    problems: list[str],
    answers: list[dict[str, Any]],
    evaluation: Mapping[str, Any] | None,
    output_bag_messages: Mapping[str, int],
    outputs: list[str],
) -> dict[str, Any]:
    """The contents of ``report.json``: how the run went, frame by frame and stage by stage."""
    stats = run.pipeline.stats_dict()
    counters = run.input_counters
    skipped = {k[len("skipped_"):]: int(v) for k, v in counters.items()
               if k.startswith("skipped_") and v}  # fmt: skip
    skipped.update({f"not_integrated_{k[len('frames_skipped_'):]}": int(v)
                    for k, v in stats.items() if k.startswith("frames_skipped_") and v})
    seg = config.segmenter
    return {
        "bag": str(bag),
        "bag_read": str(run.bag_read),
        "run": {
            "mode": run.mode,
            "realtime_rate": run.realtime_rate,
            "segmenter": seg.kind + (f" ({seg.profile})" if seg.kind == "diffusion" else ""),
            "conditions": conditions(),
            "wall_s": round(run.wall_s, 3),
            "frames_per_s": round(stats["frames_in"] / run.wall_s, 3) if run.wall_s else None,
            "bag_duration_s": round((run.last_stamp_ns - run.first_stamp_ns) / 1e9, 3),
            "reader_lag_s_max": round(run.reader_lag_s_max, 3) if run.realtime_rate else None,
            "topics": {"color": run.layout.color_topic, "depth": run.layout.depth_topic,
                       "camera_info": run.layout.camera_info_topic,
                       "pose": run.layout.pose_topic or "TF"},
            "close_completed": run.close.completed,
        },
        "frames": {
            "delivered": run.frames_delivered,
            "mapped": stats["frames_in"],
            "integrated": stats["frames_integrated"],
            "skipped": skipped,
        },
        "keyframes": {
            "selected": stats["keyframes_selected"],
            "segmented": stats["keyframes_segmented"],
        },
        "drops": {
            "frame_queue_full": int(counters.get("skipped_frame_queue_full", 0)),
            "keyframes_dropped": stats["keyframes_dropped"],
            "keyframes_abandoned": stats["keyframes_abandoned"],
        },
        "stages_ms": run.times.summary_ms(),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "map": {"voxels": map_voxels, "masks": map_masks, "frame_id": run.map_frame},
        "problems": problems,
        "input_warnings": run.input_warnings,
        "queries": answers,
        "evaluation": None if evaluation is None else {
            k: v for k, v in evaluation.items() if k != "queries"
        },
        "pipeline": stats,
        "input": counters,
        "output_bag_messages": dict(output_bag_messages),
        "outputs": [*outputs, "report.json", "report.md", "timing.png"],
    }


def write_report(report: Mapping[str, Any], out_dir: Path, times: StageTimes) -> list[Path]:
    """``report.json``, ``report.md`` and ``timing.png`` in ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(_markdown(report))
    png_path = plot_timing(times, out_dir / "timing.png", title=f"replay of {report['bag']}")
    return [json_path, md_path, png_path]


def plot_timing(times: StageTimes, path: Path, *, title: str = "") -> Path:
    """Three panels: latency of each item over the run, p50/p95/max per stage, memory."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    over_time, bars, memory = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    stages = times.stages()
    for stage in stages:
        series = times.series(stage)
        if series:
            t, d = zip(*series, strict=True)
            style = "-" if len(series) > 20 else "o-"
            over_time.plot(t, np.asarray(d) * 1e3, style, ms=3, lw=0.8, label=stage)
    over_time.set_yscale("log")
    over_time.set_xlabel("time since the replay started [s]")
    over_time.set_ylabel("latency of one item [ms]")
    over_time.set_title("latency per item")
    if stages:
        over_time.legend(fontsize="small")
    summary = times.summary_ms()
    x = np.arange(len(summary))
    for k, (key, label) in enumerate((("p50_ms", "p50"), ("p95_ms", "p95"), ("max_ms", "max"))):
        values = [max(s[key], 1e-3) for s in summary.values()]
        bars.bar(x + (k - 1) * 0.27, values, width=0.27, label=label)
    bars.set_xticks(x, list(summary), rotation=30, ha="right", fontsize="small")
    bars.set_yscale("log")
    bars.set_ylabel("ms")
    bars.set_title("per stage")
    bars.legend(fontsize="small")
    mem = times.memory()
    if mem:
        t, m = zip(*mem, strict=True)
        memory.plot(t, m, lw=1.0)
    memory.set_xlabel("time since the replay started [s]")
    memory.set_ylabel("resident set size [MiB]")
    memory.set_title("memory")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "query"


def _heat_colors(scores: NDArray[np.float32]) -> NDArray[np.uint8]:
    """(M, 3) uint8 colours of (M,) scores in [0, 1] (matplotlib's inferno map)."""
    from matplotlib import colormaps

    rgba = colormaps["inferno"](np.clip(np.nan_to_num(scores), 0.0, 1.0))
    return np.asarray(np.rint(rgba[:, :3] * 255), dtype=np.uint8)


def answer_query(
    runtime: MappingRuntime,
    text: str,
    *,
    index: int,
    stamp_ns: int,
    writer: ResultBagWriter,
    out: Path,
    times: StageTimes,
    render: RenderConfig,
) -> dict[str, Any]:
    """Ask ``text``; write its text, markers and result cloud to the bag and its heat map
    (``out/queries/NN_<query>.png``); returns its entry of the report."""
    from diff2scene.io.bag_writer import MARKERS_TOPIC, QUERY_CLOUD_TOPIC, QUERY_TEXT_TOPIC
    from diff2scene.mapping.render import render_map

    writer.write_text(QUERY_TEXT_TOPIC, stamp_ns, text)
    t0 = time.perf_counter()
    try:
        answer = runtime.query(text)
    except InputError as exc:  # a query the grammar or the limits refuse: reported, not fatal
        writer.write_markers(MARKERS_TOPIC, stamp_ns, [])
        return {"text": text, "error": str(exc), "instances": [], "matched_voxels": 0}
    elapsed_s = time.perf_counter() - t0
    times.add("query", elapsed_s)
    result, snap = answer.result, answer.snapshot
    writer.write_markers(MARKERS_TOPIC, stamp_ns, result.instances)
    writer.write_cloud(QUERY_CLOUD_TOPIC, stamp_ns, answer.points_m, rgb=answer.rgb,
                       labels=answer.rank_labels, scores=answer.scores)  # fmt: skip
    heatmap = Path("queries") / f"{index:02d}_{_slug(text)}.png"
    (out / "queries").mkdir(exist_ok=True)
    title = (f"'{text}': {len(result.instances)} instance(s), {answer.points_m.shape[0]} "
             "voxel(s) above the threshold (score heat map)")  # fmt: skip
    render_map(snap.points_m, out / heatmap, colors=_heat_colors(result.scores), title=title,
               config=render)
    return {
        "text": text,
        "target": result.parsed.target,
        "instances": [
            {"label": inst.label, "score": round(float(inst.score), 4),
             "centroid_m": [round(float(v), 3) for v in inst.centroid_m],
             "box_size_m": [round(float(v), 3) for v in inst.box_size_m],
             "num_points": inst.num_points}
            for inst in result.instances
        ],
        "matched_voxels": int(answer.points_m.shape[0]),
        # Voxels spilled to disk under a memory budget: not searched (0 without a budget).
        "voxels_not_searched": snap.voxels_not_searched,
        "ms": round(elapsed_s * 1e3, 2),
        "engine_timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
        "heatmap": str(heatmap),
        "bag_stamp_ns": stamp_ns,
    }

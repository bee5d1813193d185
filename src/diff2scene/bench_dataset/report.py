"""``DIR/dataset_report.{json,md,png}``: one table over every scene of a dataset benchmark.

Everything is read back from the scenes' own outputs (``DIR/scenes/<name>/report.json`` and
``eval.json``), so a scene resumed from an earlier run counts exactly like one replayed now.

* **Segmentation**: mIoU per branch and head/common/tail split, pooled over every scene's
  points (the scenes' confusion matrices are added before IoUs are computed, as the ScanNet
  benchmark and the paper do), with :mod:`diff2scene.eval.pooled`. A scene without
  ``eval.json`` (no ground truth, or an empty map) is listed and left out of the pool.
* **Queries**: precision and recall from the scenes' match counts, added.
* **Speed**: ``wall_s`` runs from Ray connected to the last scene's result; frames/s of
  each replay and of the run (frames replayed now over ``wall_s``); per stage, the total
  count and mean, the median of the scenes' p50 and the 95th percentile of their p95 (each
  replay keeps only its own percentiles), and the maximum.
* **Failures**: each failed or cancelled scene with the error of its last attempt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diff2scene.atomic_file import atomic_write
from diff2scene.bench_dataset.runner import SceneResult
from diff2scene.bench_dataset.scenes import SCENES_DIR, Scene, one_line, read_json
from diff2scene.eval.pooled import pool_reports

REPORT_NAME = "dataset_report"
_SPLITS = ("all", "head", "common", "tail")


def _scene_row(scene: Scene, out: Path, status: str, result: SceneResult | None
               ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The scene's row, and its evaluation when it has one."""
    scene_dir = out / SCENES_DIR / scene.name
    row: dict[str, Any] = {"name": scene.name, "bag": str(scene.bag), "status": status,
                           "outputs": str(scene_dir)}  # fmt: skip
    if result is not None and result.attempts:
        last = result.attempts[-1]
        row["attempts"] = len(result.attempts)
        row["task_s"] = round(last.task_s, 3)
        row["task_cpu_s"] = round(last.cpu_s, 3)
        row["host"] = last.host
        if not last.ok:
            row["error"] = last.error
            row["errors"] = [a.error for a in result.attempts]
            row["traceback"] = last.traceback
    if status not in ("done", "resumed"):
        return row, None
    report = read_json(scene_dir / "report.json") or {}
    run = report.get("run", {})
    row.update({
        "frames_mapped": report.get("frames", {}).get("mapped"),
        "replay_wall_s": run.get("wall_s"),
        "frames_per_s": run.get("frames_per_s"),
        "voxels": report.get("map", {}).get("voxels"),
        "problems": report.get("problems", []),
    })  # fmt: skip
    evaluation = read_json(scene_dir / "eval.json")
    if evaluation is not None:
        row["miou"] = {b: e.get("miou_all") for b, e in evaluation.get("branches", {}).items()}
        row["query_precision"] = evaluation.get("query_precision")
        row["query_recall"] = evaluation.get("query_recall")
    return row, evaluation


def _stages(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage over scenes: count and mean (exact), median of the scenes' p50, 95th
    percentile of their p95, max."""
    per_stage: dict[str, list[Mapping[str, float]]] = {}
    for report in reports:
        for stage, s in (report.get("stages_ms") or {}).items():
            per_stage.setdefault(stage, []).append(s)
    out: dict[str, dict[str, float]] = {}
    for stage, items in per_stage.items():
        count = sum(int(s["count"]) for s in items)
        p95s = [float(s["p95_ms"]) for s in items]
        total_s = sum(float(s["total_s"]) for s in items)
        out[stage] = {
            "scenes": len(items),
            "count": count,
            "mean_ms": round(1e3 * total_s / count, 3) if count else 0.0,
            "p50_ms_median_over_scenes": round(float(np.median([s["p50_ms"] for s in items])), 3),
            "p95_ms_p95_over_scenes": round(float(np.percentile(p95s, 95)), 3),
            "max_ms": round(max(float(s["max_ms"]) for s in items), 3),
        }
    return out


def build_report(
    out: Path,
    scenes: Sequence[Scene],
    results: Mapping[str, SceneResult],
    *,
    resumed: Sequence[str],
    wall_s: float,
    cluster: Mapping[str, Any],
    interrupted: bool = False,
    net3d: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The contents of ``dataset_report.json`` (see the module doc)."""
    rows, evaluations, reports = [], {}, []
    for scene in scenes:
        result = results.get(scene.name)
        status = "resumed" if scene.name in resumed else result.status if result else "cancelled"
        row, evaluation = _scene_row(scene, out, status, result)
        rows.append(row)
        if evaluation is not None:
            evaluations[scene.name] = evaluation
        if status in ("done", "resumed"):
            reports.append(read_json(out / SCENES_DIR / scene.name / "report.json") or {})
    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("done", "resumed", "failed", "cancelled")}  # fmt: skip
    frames = sum(int(r.get("frames_mapped") or 0) for r in rows)
    frames_now = sum(int(r.get("frames_mapped") or 0) for r in rows if r["status"] == "done")
    replay_s = sum(float(r.get("replay_wall_s") or 0.0) for r in rows)
    pooled = pool_reports(evaluations) if evaluations else None
    return {
        "out": str(out),
        "scenes_total": len(scenes),
        **counts,
        "replayed_now": counts["done"],
        "interrupted": interrupted,
        "wall_s": round(wall_s, 3),
        "cluster": dict(cluster),
        "net3d": dict(net3d) if net3d else None,
        "evaluation": None if pooled is None else {
            "scenes_pooled": list(evaluations),
            "scenes_without_evaluation": [r["name"] for r in rows
                                          if r["status"] in ("done", "resumed")
                                          and r["name"] not in evaluations],
            **{k: v for k, v in pooled.items() if k not in ("queries", "scenes")},
        },
        "speed": {
            "frames_mapped": frames,
            "replay_s_sum": round(replay_s, 3),
            "frames_per_s_per_replay": round(frames / replay_s, 3) if replay_s else None,
            # Frames replayed in this run over its wall time: what the cluster delivered.
            "frames_per_s_run": round(frames_now / wall_s, 3) if wall_s else None,
        },
        "stages_ms": _stages(reports),
        "scenes": rows,
        "failures": [{"name": r["name"], "bag": r["bag"], "status": r["status"],
                      "error": r.get("error", "cancelled before it finished"),
                      "attempts": r.get("attempts", 0)}
                     for r in rows if r["status"] in ("failed", "cancelled")],
    }


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}"


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def markdown(report: Mapping[str, Any]) -> str:
    """``dataset_report.md``: the pooled table in the paper's layout, then scene by scene."""
    lines = [f"# Dataset benchmark: {report['scenes_total']} scene(s)", ""]
    lines.append(
        f"{report['done']} replayed, {report['resumed']} kept from an earlier run, "
        f"{report['failed']} failed, {report['cancelled']} cancelled"
        + (" (interrupted)" if report["interrupted"] else "")
        + f"; {report['wall_s']:.1f} s on {report['cluster'].get('address')} Ray "
        f"({report['cluster'].get('cpus', 0):g} CPUs, {report['cluster'].get('gpus', 0):g} GPUs)."
    )
    ev = report["evaluation"]
    lines += ["", "## Segmentation, pooled over every scene's points", ""]
    if ev is None:
        lines.append("No scene had an evaluation (ground truth beside its bag).")
    else:
        lines += ["| branch | " + " | ".join(f"mIoU {s}" for s in _SPLITS) + " |",
                  "|---" * (len(_SPLITS) + 1) + "|"]  # fmt: skip
        for branch, e in ev["branches"].items():
            lines.append(f"| {branch} | "
                         + " | ".join(_pct(e.get(f"miou_{s}")) for s in _SPLITS) + " |")
        lines += ["", f"Pooled over {len(ev['scenes_pooled'])} scene(s); query precision "
                  f"{_pct(ev['query_precision'])} %, recall {_pct(ev['query_recall'])} %; "
                  f"relation queries {_pct(ev['relation_query_precision'])} % / "
                  f"{_pct(ev['relation_query_recall'])} % (instance IoU >= 0.25)."]  # fmt: skip
        if ev["scenes_without_evaluation"]:
            lines.append(f"Not evaluated: {', '.join(ev['scenes_without_evaluation'])}.")
    speed = report["speed"]
    lines += ["", "## Scenes", "",
              "| scene | status | frames | frames/s | voxels | "
              + " | ".join(f"mIoU {b}" for b in (ev or {}).get("branches", {}))
              + " | query P | query R | attempts |",
              "|---" * (8 + len((ev or {}).get("branches", {}))) + "|"]  # fmt: skip
    for r in report["scenes"]:
        mious = [_pct((r.get("miou") or {}).get(b)) for b in (ev or {}).get("branches", {})]
        lines.append(f"| {r['name']} | {r['status']} | {r.get('frames_mapped', '–')} | "
                     f"{_num(r.get('frames_per_s'), 2)} | {r.get('voxels', '–')} | "
                     + "".join(f"{m} | " for m in mious)
                     + f"{_pct(r.get('query_precision'))} | {_pct(r.get('query_recall'))} | "
                     f"{r.get('attempts', 0)} |")  # fmt: skip
    lines += ["", f"{speed['frames_mapped']} frames mapped; "
              f"{_num(speed['frames_per_s_per_replay'], 2)} frames/s per replay, "
              f"{_num(speed['frames_per_s_run'], 2)} frames/s replayed over this run's wall time."]
    if report["stages_ms"]:
        lines += ["", "## Stages across scenes (ms)", "",
                  "| stage | items | mean | median of scene p50 | p95 of scene p95 | max |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for stage, s in report["stages_ms"].items():
            lines.append(f"| {stage} | {s['count']} | {_num(s['mean_ms'])} | "
                         f"{_num(s['p50_ms_median_over_scenes'])} | "
                         f"{_num(s['p95_ms_p95_over_scenes'])} | {_num(s['max_ms'])} |")
    if report["failures"]:
        lines += ["", "## Failures", ""]
        for f in report["failures"]:
            lines.append(f"- **{f['name']}** ({f['status']}, {f['attempts']} attempt(s)): "
                         f"{one_line(f['error'])}")
    return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], path: Path) -> Path:
    """Pooled mIoU per branch and split (left), each scene's frames/s (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    branches = (report["evaluation"] or {}).get("branches", {})
    width = 0.8 / max(1, len(branches))
    for j, (branch, e) in enumerate(branches.items()):
        values = [100 * (e.get(f"miou_{s}") or 0.0) for s in _SPLITS]
        left.bar(np.arange(len(_SPLITS)) + j * width, values, width, label=branch)
    left.set_xticks(np.arange(len(_SPLITS)) + width * (len(branches) - 1) / 2)
    left.set_xticklabels(_SPLITS)
    left.set_ylabel("pooled mIoU (%)")
    left.set_title("segmentation, pooled over scenes")
    if branches:
        left.legend()
    rows = report["scenes"]
    fps = [float(r.get("frames_per_s") or 0.0) for r in rows]
    colours = ["tab:green" if r["status"] in ("done", "resumed") else "tab:red" for r in rows]
    right.bar(np.arange(len(rows)), fps, color=colours)
    right.set_xticks(np.arange(len(rows)))
    right.set_xticklabels([r["name"] for r in rows], rotation=45, ha="right", fontsize=7)
    right.set_ylabel("frames/s")
    right.set_title("replay speed per scene (red: failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: Mapping[str, Any], out: Path) -> list[Path]:
    """``dataset_report.json``, ``.md`` and ``.png`` in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=float) + "\n"
    # Written last and atomically: a script waiting for it never reads half a report.
    md_path = out / f"{REPORT_NAME}.md"
    md_path.write_text(markdown(report))
    png_path = plot(report, out / f"{REPORT_NAME}.png")
    json_path = atomic_write(out / f"{REPORT_NAME}.json", lambda f: f.write(text.encode()))
    return [json_path, md_path, png_path]

"""Shared output for benchmarks: a flat JSON of named figures and a markdown table beside it.

Units are part of each figure's name (``query_ms_warm_1m``); ratios against a baseline measured
in the same run are preferred over absolute numbers because these machines are noisy.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


REPO = Path(__file__).resolve().parents[1]


def code_version() -> dict[str, Any]:
    """The commit a result was measured at, whether the tree differed from it, and the
    command that ran: a figure is only as good as the code it names."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status),
        "command": _command_line(),
    }


def _command_line() -> str:
    """How this benchmark was started, as a user would type it (``python -m bench.x ...``)."""
    script = Path(sys.argv[0]).resolve()
    if script.suffix == ".py" and script.is_relative_to(REPO):
        module = ".".join(script.relative_to(REPO).with_suffix("").parts)
        return " ".join(["python", "-m", module, *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def write_results(
    name: str,
    figures: Mapping[str, float | int | str | list[Any]],
    *,
    title: str,
    notes: str = "",
    out_dir: Path = RESULTS_DIR,
) -> Path:
    """Write ``<name>.json`` (flat figures + machine info) and ``<name>.md`` (a table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = dict(figures)
    record["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    record["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record.update(code_version())
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    lines = [f"# {title}", "", "| figure | value |", "|---|---|"]
    for key, value in record.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| `{key}` | {shown} |")
    if notes:
        lines += ["", notes]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    return json_path

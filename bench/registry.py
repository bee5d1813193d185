"""Every benchmark, what it measures and how it is run: one table for ``make bench``, the
staleness check of committed results and ``bench/results/STALE.md``.

A committed figure is only worth what the code it was measured on is: each benchmark lists the
files whose change can move its figures, and a result whose ``git_commit`` is older than the
last commit touching them is stale. ``make bench`` reruns every benchmark of kind ``bench``;
the GPU ones (a lent device only), the long ones (20 minutes and more) and the manual ones
(several GB of files) have their own targets and are listed in ``STALE.md`` when stale.

``python -m bench.registry`` rewrites ``bench/results/STALE.md``; ``--check`` says whether it is
current (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
STALE_MD = RESULTS / "STALE.md"

#: The core code every runtime benchmark goes through.
_CORE = ("src/diff2scene/mapping", "src/diff2scene/pipeline.py", "src/diff2scene/runtime.py")
_QUERY = ("src/diff2scene/query", "src/diff2scene/segmentation/text.py",
          "src/diff2scene/segmentation/clip.py", "src/diff2scene/mapping/snapshot.py")


@dataclass(frozen=True)
class Benchmark:
    #: Results file stem in bench/results (``<name>.json``).
    name: str
    #: ``python -m`` module that writes it.
    module: str
    #: Paths (files or directories) whose change can move its figures.
    measures: tuple[str, ...]
    #: "bench": run by ``make bench``; "gpu": needs a CUDA device (bench/gpu.sh); "long": 20
    #: minutes or more (own make target); "manual": several GB of files, run by hand.
    kind: Literal["bench", "gpu", "long", "manual"] = "bench"
    #: Extra command-line arguments of the ``make bench`` run.
    args: tuple[str, ...] = ()


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("mapping", "bench.mapping", (*_CORE, "src/diff2scene/query/ensemble.py",
                                           "bench/mapping.py")),
    Benchmark("segmenter2d", "bench.segmenter2d", ("src/diff2scene/segmentation/diffusion",
                                                   "bench/segmenter2d.py")),
    Benchmark("net3d", "bench.net3d", ("src/diff2scene/net3d", "bench/net3d.py")),
    Benchmark("query", "bench.query", (*_QUERY, "bench/query.py")),
    Benchmark("decode", "bench.decode", ("src/diff2scene/io", "bench/decode.py")),
    Benchmark("dds_input", "bench.dds_input", ("diff2scene_ros", "src/diff2scene/io",
                                               "bench/dds_input.py")),
    Benchmark("query_live", "bench.query_live", (*_CORE, *_QUERY, "diff2scene_ros",
                                                 "bench/query_live.py")),
    Benchmark("dataset", "bench.dataset", (*_CORE, "src/diff2scene/bench_dataset",
                                           "src/diff2scene/replay.py", "bench/dataset.py")),
    Benchmark("quality", "bench.quality", (*_CORE, *_QUERY, "src/diff2scene/eval",
                                           "src/diff2scene/segmentation/oracle.py",
                                           "src/diff2scene/net3d", "src/diff2scene/synth",
                                           "bench/quality.py"), kind="long"),
    Benchmark("scale", "bench.scale", (*_CORE, *_QUERY, "src/diff2scene/synth",
                                       "bench/scale.py"), kind="long"),
    Benchmark("soak", "bench.soak", (*_CORE, "diff2scene_ros", "src/diff2scene/io",
                                     "src/diff2scene/errors.py", "bench/soak.py",
                                     "bench/soak_faults.py"), kind="long"),
    Benchmark("gpu", "bench.gpu", ("src/diff2scene", "bench/gpu.py", "bench/gpu.sh"),
              kind="gpu"),
    Benchmark("real_weights", "bench.real_weights", ("src/diff2scene/segmentation",
                                                     "bench/real_weights.py"), kind="manual"),
    Benchmark("query_torch2", "bench.query", (*_QUERY, "bench/query.py"), kind="manual"),
)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=False).stdout.strip()


def last_change(bench: Benchmark) -> str:
    """The newest commit touching what ``bench`` measures."""
    return _git("log", "-1", "--format=%H", "--", *bench.measures)


def staleness(bench: Benchmark) -> str:
    """Why ``bench``'s committed result is stale, or "" when it is current."""
    path = RESULTS / f"{bench.name}.json"
    if not path.is_file():
        return "no committed result"
    commit = json.loads(path.read_text()).get("git_commit", "")
    if not commit:
        return "measured before results recorded their commit"
    changed = last_change(bench)
    if changed and subprocess.run(["git", "merge-base", "--is-ancestor", changed, commit],
                                  cwd=REPO, check=False).returncode != 0:
        return f"measured at {commit[:10]}; {changed[:10]} changed what it measures since"
    return ""


def stale_md() -> str:
    """``STALE.md``: every stale committed result, with why."""
    rows = [(b, staleness(b)) for b in BENCHMARKS]
    lines = ["# Stale results", "",
             "Committed results whose code changed since they were measured (generated by "
             "`python -m bench.registry`; `make bench` reruns the `bench` kind).", "",
             "| result | kind | why |", "|---|---|---|"]
    lines += [f"| `{b.name}.json` | {b.kind} | {why} |" for b, why in rows if why]
    if len(lines) == 6:
        lines.append("| (none) | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if STALE.md is not current")
    args = parser.parse_args(argv)
    text = stale_md()
    if args.check:
        current = STALE_MD.read_text() if STALE_MD.is_file() else ""
        if current != text:
            print("bench/results/STALE.md is not current: run python -m bench.registry",
                  file=sys.stderr)
            return 1
        return 0
    STALE_MD.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make bench``: every benchmark of kind ``bench`` in :mod:`bench.registry`, each in its own
process (peak memory is per process), then ``bench/results/STALE.md`` rewritten.

Figures land in ``bench/results/<name>.json`` + ``.md``. The long ones (the quality table, the
building floor, the soak), the GPU and the manual ones have their own targets.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.registry import BENCHMARKS
from bench.registry import main as write_stale


def main() -> int:
    failed = []
    for bench in BENCHMARKS:
        if bench.kind != "bench":
            continue
        print(f"=== {bench.module}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", bench.module, *bench.args])
        print(f"=== {bench.module}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(bench.module)
    write_stale([])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

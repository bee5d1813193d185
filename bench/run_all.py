"""``make bench``: every benchmark, each in its own process (peak memory is per process).

Figures land in ``bench/results/<name>.json`` + ``.md``. The quality table (``make
bench-quality``) is separate because it trains the 3D network on several scenes.
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = (
    "bench.mapping",
    "bench.segmenter2d",
    "bench.net3d",
    "bench.query",
    "bench.decode",
    "bench.dds_input",
)


def main() -> int:
    failed = []
    for module in BENCHMARKS:
        print(f"=== {module}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", module])
        print(f"=== {module}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

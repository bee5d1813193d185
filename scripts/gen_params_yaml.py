"""Write the node's parameter file, launch/config/diff2scene.yaml, from NodeConfig.

    python scripts/gen_params_yaml.py           # rewrite the file
    python scripts/gen_params_yaml.py --check   # exit 1 if the file is out of date

Run it in the Makefile's environment (the ROS 2 wheels and the built interfaces importable)
after changing NodeConfig or any config inside it; a test fails while the file is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "launch" / "config" / "diff2scene.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare; print a diff and exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=TARGET, help="file to write or check")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "src")]
    from diff2scene_ros.params import node_params_file_text, write_or_check

    return write_or_check(args.out, node_params_file_text(), check=args.check,
                          regenerate="python scripts/gen_params_yaml.py")


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``diff2scene`` command line: one subcommand per module, registered below.

A subcommand module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Adding a tool is
one module plus one line in ``SUBCOMMANDS``. Only the module of the command being run is
imported, so ``diff2scene synth`` does not pay for torch or Open3D it never uses.

Any :class:`~diff2scene.errors.Diff2SceneError` a command raises (a bad config, an unreadable
file, model weights not on this machine) ends it with exit status 2 and its message after
``diff2scene COMMAND: error:``, without a traceback: those messages say what to do.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from diff2scene.errors import Diff2SceneError

#: command name → (module that registers it, one-line help for the overview).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("diff2scene.synth.cli", "a synthetic room or floor as a ROS 2 bag + ground truth"),
    "import": ("diff2scene.datasets.cli", "write a ScanNet or Replica sequence as a bag to replay"),
    "bag-info": ("diff2scene.io.cli", "list a bag's topics and replay it through the frame source"),
    "replay": ("diff2scene.replay", "replay a bag into a saved semantic map"),
    "map-info": ("diff2scene.mapping.cli", "summarise a saved semantic map"),
    "map-render": ("diff2scene.mapping.cli", "draw a saved map to a PNG"),
    "convert-odise": ("diff2scene.segmentation.cli", "convert the ODISE head checkpoint"),
    "models": ("diff2scene.segmentation.models_cli", "list the 2D model profiles found, and where"),
    "train": ("diff2scene.net3d.cli", "distil 2D masks into the 3D network"),
    "eval": ("diff2scene.eval.cli", "score a saved map against ground truth"),
    "bench-dataset": ("diff2scene.bench_dataset.cli", "replay many scenes on Ray into one table"),
    # the ROS 2 tools: their module imports rclpy only when the command runs
    "query": ("diff2scene_ros.cli", "ask a running node where something is (~/text_query)"),
    "bringup": ("diff2scene_ros.cli", "start the node as `ros2 launch diff2scene bringup` does"),
    "play": ("diff2scene_ros.player", "publish a bag's messages on live topics (ros2 bag play)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command``'s module registered (every module when None)."""
    parser = argparse.ArgumentParser(
        prog="diff2scene",
        description="Open-vocabulary 3D semantic mapping (Diff2Scene).",
        epilog="commands:\n" + "\n".join(f"  {n:<14} {h}" for n, (_, h) in SUBCOMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = (
        [SUBCOMMANDS[command][0]] if command in SUBCOMMANDS
        else list(dict.fromkeys(m for m, _ in SUBCOMMANDS.values()))
    )
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except Diff2SceneError as exc:
        print(f"diff2scene {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

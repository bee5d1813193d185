"""The ``diff2scene`` command line: one subcommand per module, registered below.

A subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Adding a tool is
one module plus one line in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from diff2scene.errors import Diff2SceneError

SUBCOMMANDS: tuple[str, ...] = (
    "diff2scene.synth.cli",
    "diff2scene.io.cli",
    "diff2scene.replay",
    "diff2scene.mapping.cli",
    "diff2scene.segmentation.cli",
    "diff2scene.net3d.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diff2scene", description="Open-vocabulary 3D semantic mapping (Diff2Scene)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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

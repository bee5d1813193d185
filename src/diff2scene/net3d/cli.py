"""``diff2scene train CONFIG``: mask-distillation training of the 3D network.

The same command runs under ``torchrun`` for several processes or machines, e.g.
``torchrun --nproc_per_node 2 -m diff2scene.cli train cfg.yaml``.

A minimal CONFIG (every other field of ``TrainConfig`` has a default)::

    scenes: [bags/room_000, bags/room_001]   # bag dirs (cached on first use) or .safetensors
    out_dir: runs/net3d
    epochs: 200
    batch_size: 8
    segmenter: {kind: oracle, oracle: {boundary_px: 2, embedding_noise: 0.2}}
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from diff2scene.config import load_config
    from diff2scene.net3d.train import TrainConfig, train

    config = load_config(TrainConfig, args.config)
    if args.out is not None:
        config.out_dir = args.out
    result = train(config, resume=args.resume, progress=not args.no_progress)
    print(
        f"trained {result.step} steps, last loss {result.losses[-1]:.4f}"
        if result.losses
        else "nothing to train"
    )
    return 0


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="distil 2D masks into the 3D network",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="YAML file with TrainConfig fields")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    parser.add_argument("--out", type=Path, default=None, help="override out_dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


"""``diff2scene convert-odise CKPT OUT``: ODISE's released head → our safetensors head."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert-odise",
        help="convert ODISE's odise_label_coco_50e checkpoint to a safetensors head",
        description=(
            "Map the released ODISE head checkpoint (a detectron2 .pth, read with "
            "torch.load(weights_only=True)) onto the diffusion segmenter's modules and write "
            "safetensors. Fails on any unmapped, missing or mis-shaped tensor."
        ),
    )
    parser.add_argument(
        "checkpoint", help="ODISE checkpoint, e.g. odise_label_coco_50e-b67d2efc.pth"
    )
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument(
        "--profile",
        default="odise_sd15",
        help="model profile name or YAML path whose architecture the head must fit "
        "(default: odise_sd15)",
    )
    parser.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from diff2scene.segmentation.convert_odise import convert_odise
    from diff2scene.segmentation.profiles import load_profile

    state = convert_odise(args.checkpoint, args.out, load_profile(args.profile))
    params = sum(v.numel() for v in state.values())
    print(f"wrote {args.out}: {len(state)} tensors, {params / 1e6:.1f}M parameters")
    return 0

"""``diff2scene map-info MAP`` and ``diff2scene map-render MAP PNG``: inspect a saved map."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from diff2scene.mapping.render import RenderConfig, render_map
from diff2scene.mapping.semantic_map import SemanticMap


def register(subparsers: Any) -> None:
    info = subparsers.add_parser("map-info", help="summarise a saved semantic map (.npz)")
    info.add_argument("map", help="map file written by SemanticMap.save / the save_map service")
    info.set_defaults(func=run_info)
    render = subparsers.add_parser(
        "map-render", help="draw a saved map to a PNG (top-down + perspective), no display needed"
    )
    render.add_argument("map", help="map file (.npz)")
    render.add_argument("png", help="output picture")
    render.add_argument(
        "--color-by",
        choices=("rgb", "mask"),
        default="rgb",
        help="fused camera colour, or the voxel's strongest 2D mask (grey: none)",
    )
    render.add_argument(
        "--max-z-m", type=float, default=None, help="leave points above this out of the top view"
    )
    render.set_defaults(func=run_render)


def map_summary(smap: SemanticMap) -> dict[str, Any]:
    """Counts and extents of a map, JSON-serialisable."""
    summary: dict[str, Any] = {
        "voxels": smap.num_voxels,
        "voxel_size_m": smap.voxel_size_m,
        "masks": smap.mask_bank.num_masks,
        "keyframes": int(np.unique(smap.mask_bank.keyframe_ids).size),
        "embedding_spaces": {s: int(e.shape[1]) for s, e in smap.mask_bank.embeddings.items()},
        "features_3d": {s: int(f.shape[1]) for s, f in smap.features_3d.items()},
        "voxels_with_masks": int(np.sum(smap.member_ids[:, 0] >= 0)),
        "voxels_never_seen_in_keyframes": int(np.sum(smap.view_counts == 0)),
        "metadata": smap.metadata,
    }
    if smap.num_voxels:
        pts = smap.points_m
        summary["bounds_min_m"] = pts.min(axis=0).round(3).tolist()
        summary["bounds_max_m"] = pts.max(axis=0).round(3).tolist()
    return summary


def run_info(args: argparse.Namespace) -> int:
    print(json.dumps(map_summary(SemanticMap.load(args.map)), indent=2))
    return 0


def run_render(args: argparse.Namespace) -> int:
    smap = SemanticMap.load(args.map)
    cfg = RenderConfig(top_down_max_z_m=args.max_z_m)
    title = f"{args.map}: {smap.num_voxels} voxels"
    if args.color_by == "rgb":
        out = render_map(smap.points_m, args.png, colors=smap.colors, title=title, config=cfg)
    else:
        out = render_map(
            smap.points_m, args.png, labels=smap.strongest_mask(), title=title, config=cfg
        )
    print(out)
    return 0

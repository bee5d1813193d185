"""``diff2scene bag-info BAG``: what a bag holds and what the frame source makes of it."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from diff2scene.io.bag import BagFrameSource, BagSourceConfig


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bag-info", help="list a bag's topics and replay it through the frame source"
    )
    parser.add_argument("bag", help="rosbag2 directory or file (sqlite3 or MCAP)")
    parser.add_argument("--slop-s", type=float, default=0.02, help="colour/depth sync slop, s")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = BagFrameSource(args.bag, BagSourceConfig(sync_slop_s=args.slop_s))
    topics = source.topics()
    n = 0
    valid_ratio = 0.0
    path_m = 0.0
    last_xyz: np.ndarray | None = None
    first = None
    for frame in source:
        first = first or frame
        n += 1
        valid_ratio += float(np.mean(frame.depth_m > 0))
        xyz = frame.T_world_camera[:3, 3]
        if last_xyz is not None:
            path_m += float(np.linalg.norm(xyz - last_xyz))
        last_xyz = xyz
    summary: dict[str, Any] = {
        "bag": str(args.bag),
        "topics": {t: {"type": ty, "messages": c} for t, (ty, c) in sorted(topics.items())},
        "frames": source.stats.as_dict(),
        "mean_valid_depth_ratio": valid_ratio / max(n, 1),
        "camera_path_m": path_m,
    }
    if first is not None:
        k = first.intrinsics
        summary["camera"] = {"width": k.width, "height": k.height, "fx": k.fx, "fy": k.fy}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"bag: {args.bag}")
    for topic, info in summary["topics"].items():
        print(f"  {topic:<36} {info['type']:<34} {info['messages']:>6} msgs")
    stats = summary["frames"]
    print(f"synchronised frames: {stats['delivered']}  skipped: {stats['skipped_total']}")
    for key, value in stats.items():
        if key.startswith("skipped_") and key != "skipped_total":
            print(f"  {key[8:]}: {value}")
    if "camera" in summary:
        c = summary["camera"]
        print(f"camera: {c['width']}x{c['height']} fx={c['fx']:.1f} fy={c['fy']:.1f}")
    print(
        f"mean valid depth: {100 * summary['mean_valid_depth_ratio']:.1f} %   "
        f"camera path: {path_m:.2f} m"
    )
    return 0

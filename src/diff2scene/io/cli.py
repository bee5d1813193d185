"""``diff2scene bag-info BAG``: what a bag holds, what the frame source makes of it, and the
topic configuration it proposes for ``replay``."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

import numpy as np
import yaml

from diff2scene.config import to_dict
from diff2scene.io.assembler import InputConfig
from diff2scene.io.bag import (
    CAMERA_INFO_TYPE,
    IMAGE_TYPES,
    POSE_TYPES,
    TF_TYPE,
    BagFrameSource,
    BagSourceConfig,
)


def add_topic_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override where a bag's frames are (shared by bag-info and replay)."""
    group = parser.add_argument_group("topics (default: the config's, else chosen from the bag)")
    group.add_argument("--color-topic", help="colour Image or CompressedImage topic")
    group.add_argument("--depth-topic", help="depth Image or compressedDepth topic")
    group.add_argument("--camera-info-topic", help="CameraInfo of the colour camera")
    group.add_argument(
        "--pose-topic", help="PoseStamped/Odometry/TransformStamped topic ('tf' = use /tf only)"
    )
    group.add_argument("--world-frame", help="map frame for TF lookups (default: map)")


def apply_topic_flags(
    config: BagSourceConfig, input_config: InputConfig, args: argparse.Namespace
) -> tuple[BagSourceConfig, InputConfig]:
    """``config`` and ``input_config`` with the topic flags given on the command line written
    in (``--pose-topic tf`` and ``--world-frame`` are input settings)."""
    changes: dict[str, Any] = {}
    for flag in ("color_topic", "depth_topic", "camera_info_topic"):
        value = getattr(args, flag, None)
        if value:
            changes[flag] = value
    pose = getattr(args, "pose_topic", None)
    if pose == "tf":
        input_config = replace(input_config, pose_source="tf")
    elif pose:
        changes["pose_topic"] = pose
    changes["required_topics"] = (*config.required_topics, *changes.values())
    world = getattr(args, "world_frame", None)
    if world:
        input_config = replace(input_config, world_frame=world)
    return replace(config, **changes), input_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bag-info", help="list a bag's topics, replay it through the frame source, propose a "
        "topic config"
    )
    parser.add_argument("bag", help="rosbag2 directory or file (sqlite3 or MCAP)")
    add_topic_flags(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _candidates(topics: dict[str, tuple[str, int]]) -> dict[str, list[str]]:
    kinds = {
        "images": IMAGE_TYPES,
        "camera_info": (CAMERA_INFO_TYPE,),
        "poses": POSE_TYPES,
        "tf": (TF_TYPE,),
    }
    return {
        kind: sorted(t for t, (ty, _) in topics.items() if ty in types)
        for kind, types in kinds.items()
    }


def run(args: argparse.Namespace) -> int:
    config, input_config = apply_topic_flags(BagSourceConfig(), InputConfig(), args)
    source = BagFrameSource(args.bag, config, input_config=input_config)
    topics = source.topics()
    layout = source.layout
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
    proposal = layout.as_config(config)
    proposed = {
        "source": {
            k: v for k, v in to_dict(proposal).items()
            if k in ("color_topic", "depth_topic", "camera_info_topic", "pose_topic",
                     "instance_topic")
        }
    }
    proposed["input"] = {
        "pose_source": layout.input_config(source.input_config).pose_source,
        "world_frame": source.assembler.map_frame,
    }
    summary: dict[str, Any] = {
        "bag": str(args.bag),
        "topics": {t: {"type": ty, "messages": c} for t, (ty, c) in sorted(topics.items())},
        "candidates": _candidates(topics),
        "chosen": {
            "color_topic": layout.color_topic,
            "depth_topic": layout.depth_topic,
            "camera_info_topic": layout.camera_info_topic,
            "pose": layout.pose_topic or "tf",
            "notes": list(layout.notes),
        },
        "frames": source.stats.as_dict(),
        "counters": source.assembler.counters(),
        "mean_valid_depth_ratio": valid_ratio / max(n, 1),
        "camera_path_m": path_m,
        "proposed_config": proposed,
    }
    if first is not None:
        k = first.intrinsics
        summary["camera"] = {"width": k.width, "height": k.height, "fx": k.fx, "fy": k.fy}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"bag: {args.bag}")
    width = max((len(t) for t in topics), default=0)
    for topic, info in summary["topics"].items():
        print(f"  {topic:<{width}} {info['type']:<34} {info['messages']:>6} msgs")
    print("chosen:")
    for key in ("color_topic", "depth_topic", "camera_info_topic", "pose"):
        print(f"  {key:<18} {summary['chosen'][key]}")
    for note in layout.notes:
        print(f"  (auto) {note}")
    stats = summary["frames"]
    counters = summary["counters"]
    print(
        f"frames: {stats['delivered']}  skipped: {stats['skipped_total']}  "
        f"stamp gaps: {counters['input_gaps']}  (colour images: {counters.get('color_msgs', 0)})"
    )
    for key, value in stats.items():
        if key.startswith("skipped_") and key != "skipped_total":
            print(f"  {key[8:]}: {value}")
    if "camera" in summary:
        c = summary["camera"]
        print(f"camera: {c['width']}x{c['height']} fx={c['fx']:.1f} fy={c['fy']:.1f}")
    print(
        f"mean valid depth: {100 * summary['mean_valid_depth_ratio']:.1f} %   "
        f"camera path: {path_m:.2f} m   map frame: {source.assembler.map_frame}"
    )
    print("proposed replay config (diff2scene replay BAG --config FILE):")
    print("  " + yaml.safe_dump(proposed, sort_keys=False).replace("\n", "\n  ").rstrip())
    return 0

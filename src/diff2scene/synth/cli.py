"""``diff2scene synth``: write one synthetic scene (a room or a building floor) as an MCAP bag
plus ground truth."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from diff2scene.config import from_dict, load_yaml
from diff2scene.errors import ConfigError
from diff2scene.synth.bag import LAYOUTS
from diff2scene.synth.dataset import SynthConfig, SynthPlan, synthesize
from diff2scene.synth.floor import FloorConfig


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic indoor scene as a ROS 2 bag (MCAP) with ground truth",
        description=(
            "Generate a procedural room for SEED (or, with --floor, a building floor of "
            "furnished rooms along corridors), render RGB-D along a camera path and write "
            "OUT/bag (rosbag2, MCAP), OUT/scene.json and OUT/gt_points.npz. The camera flies "
            "the whole path whatever --frames is, no faster than render.max_camera_speed_m_s "
            "(2 m/s) and render.max_camera_angular_speed_deg_s (180 deg/s), so every bag "
            "replays within the mapper's default pose-jump limits. On a floor the camera "
            "walks the corridors, sweeps every room and ends with a second sweep of the first "
            "room it entered (scene.json's metadata.route says which frames)."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument(
        "--frames",
        type=int,
        help="number of frames along the camera loop (default 300; on a floor: along the "
        "route, default from its length). The whole path is always flown: fewer frames sample "
        "it more sparsely, at the config's rate_hz (30 Hz) unless that would move the camera "
        "faster than its speed limits, in which case the stamps spread out to a lower, "
        "constant frame rate (--frames 30: 6-8 Hz in the default rooms); the rate used is "
        "printed",
    )
    parser.add_argument(
        "--floor",
        metavar="NXxNY",
        help="a building floor of NX rooms along x by NY along y (e.g. 6x5: about 1200 m² with "
        "the default room sizes) instead of one room; the frame count follows from the route "
        "(a frame every floor.route.frame_spacing_m = 0.1 m walked or frame_spacing_deg = 4 "
        "deg turned) unless --frames is given, and is printed before rendering starts",
    )
    parser.add_argument(
        "--room-size",
        metavar="WxD",
        help="room width (x) and depth (y) in metres, e.g. 6x5, replacing the config's ranges "
        "(default 4.5-7 x 4-6 m, drawn per room, or on a floor per column and row)",
    )
    parser.add_argument("--width", type=int, help="image width, pixels (default 640)")
    parser.add_argument("--height", type=int, help="image height, pixels (default 480)")
    parser.add_argument(
        "--config", type=Path, help="YAML file with a SynthConfig (scene/render/topics/...)"
    )
    parser.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        help="topics and transports of the bag, replacing the config's: 'default' (raw Image "
        "topics, PoseStamped + /tf) or 'realsense' (realsense-ros 4.x recorded through "
        "image_transport: JPEG colour, compressedDepth aligned depth, pose only from /tf + "
        "/tf_static)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing bag")
    parser.add_argument(
        "--no-compress", action="store_true", help="write the MCAP bag without zstd chunks"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace) -> SynthConfig:
    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    config = from_dict(SynthConfig, data, where=str(args.config or "synth"))
    if args.floor:
        rooms_x, rooms_y = _pair(args.floor, int, "--floor")
        try:
            config.floor = dataclasses.replace(
                config.floor or FloorConfig(), rooms_x=rooms_x, rooms_y=rooms_y
            )
        except ValueError as exc:
            raise ConfigError(f"--floor {args.floor}: {exc}") from exc
    # A room's frames sample its loop; a floor's its route.
    room_frames = args.frames if config.floor is None else None
    if config.floor is not None and args.frames is not None:
        try:
            config.floor.route = dataclasses.replace(config.floor.route, n_frames=args.frames)
        except ValueError as exc:
            raise ConfigError(f"--frames {args.frames}: {exc}") from exc
    overrides = {
        name: value
        for name, value in (
            ("n_frames", room_frames),
            ("width", args.width),
            ("height", args.height),
        )
        if value is not None
    }
    if overrides:
        try:
            config.render = dataclasses.replace(config.render, **overrides)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if args.room_size:
        width_m, depth_m = _pair(args.room_size, float, "--room-size")
        try:
            config.scene = dataclasses.replace(
                config.scene,
                room_width_range_m=(width_m, width_m),
                room_depth_range_m=(depth_m, depth_m),
            )
        except ValueError as exc:
            raise ConfigError(f"--room-size {args.room_size}: {exc}") from exc
    if args.layout:
        config.topics = LAYOUTS[args.layout]()
    if args.no_compress:
        config.compress = False
    return config


def _pair(text: str, kind: type[float] | type[int], option: str) -> tuple[Any, Any]:
    """``"6x5"`` → (6, 5) of ``kind``; ConfigError naming ``option`` otherwise."""
    parts = text.lower().split("x")
    try:
        a, b = (kind(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{option}: expected two numbers such as 6x5, got {text!r}") from None
    if a <= 0 or b <= 0:
        raise ConfigError(f"{option}: both numbers must be positive, got {text!r}")
    return a, b


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    plan: list[SynthPlan] = []
    start = time.perf_counter()

    def announce(p: SynthPlan) -> None:
        nonlocal start
        start = time.perf_counter()  # the rate counts rendering and writing only
        plan.append(p)
        if args.quiet:
            return
        what = (f"floor of {config.floor.rooms_x}x{config.floor.rooms_y} rooms"
                if config.floor else "room")
        print(
            f"synth: {what}, {p.area_m2:.0f} m²: {p.n_frames} frames of {p.width}x{p.height} "
            f"at {p.frame_rate_hz:.3g} Hz ({p.duration_s:.0f} s), images "
            f"{p.raw_image_bytes / 1e9:.2f} GB before compression",
            file=sys.stderr,
            flush=True,
        )

    def progress(done: int) -> None:
        total = plan[0].n_frames
        if args.quiet or (done % max(1, total // 10) and done != total):
            return
        elapsed = time.perf_counter() - start
        rate = done / max(elapsed, 1e-9)
        print(
            f"synth: frame {done}/{total} ({rate:.1f} frames/s, "
            f"{(total - done) / max(rate, 1e-9):.0f} s left)",
            file=sys.stderr,
            flush=True,
        )

    result = synthesize(
        args.out, args.seed, config, force=args.force, progress=progress, announce=announce
    )
    gt = result.groundtruth
    counts = Counter(inst.class_name for inst in gt.instances)
    size_mb = sum(p.stat().st_size for p in result.bag_path.iterdir()) / 1e6
    print(
        f"bag: {result.bag_path} ({result.bag.frames} frames at {result.frame_rate_hz:.3g} Hz, "
        f"{size_mb:.1f} MB)"
    )
    for topic, n in result.bag.messages.items():
        print(f"  {topic}: {n}")
    print(
        f"ground truth: {result.out_dir} ({len(gt.instances)} instances, "
        f"{len(counts)} classes, {len(gt.points)} labelled points)"
    )
    print("  " + ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())))
    print(f"done in {result.elapsed_s:.1f} s")
    return 0

"""``diff2scene import DATASET DIR --out BAG``: a dataset sequence into a rosbag2 bag that
replays as is. A dataset plugs in by its reader module and one line in :data:`DATASETS`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diff2scene.datasets.sequence import (
    DatasetSequence,
    ImportConfig,
    ImportResult,
    import_sequence,
    summary_path,
)
from diff2scene.errors import ConfigError


def _scannet(args: argparse.Namespace) -> DatasetSequence:
    from diff2scene.datasets.scannet import ScanNetSequence

    if args.camera is not None:
        raise ConfigError("--camera is for replica; ScanNet's calibration is in intrinsic/")
    return ScanNetSequence(args.dir, ground_truth_dir=args.ground_truth)


def _replica(args: argparse.Namespace) -> DatasetSequence:
    from diff2scene.datasets.replica import ReplicaSequence

    if args.camera is None:
        raise ConfigError("import replica needs --camera FILE (H, W, fx, fy, cx, cy, "
                          "png_depth_scale; NICE-SLAM's configs/Replica/replica.yaml)")  # fmt: skip
    return ReplicaSequence(args.dir, args.camera, ground_truth_dir=args.ground_truth)


#: Dataset name → reader of the command's arguments.
DATASETS: dict[str, Callable[[argparse.Namespace], DatasetSequence]] = {
    "scannet": _scannet,
    "replica": _replica,
}

_DESCRIPTION = """\
Write one dataset sequence as a rosbag2 bag (MCAP) with the topics a robot records: JPEG
colour on /camera/color/image_raw/compressed, compressedDepth PNG depth on
/camera/depth/image_rect_raw/compressedDepth, /camera/color/camera_info, and the pose as
map -> camera_color_optical_frame on /tf. `diff2scene replay BAG` reads it with no topic
configuration.

scannet DIR: a scene exported by ScanNet's SensReader: color/N.jpg, depth/N.png (uint16 mm),
  pose/N.txt (4x4 camera-to-world; rows of -inf mark invalid poses), intrinsic/
  intrinsic_color.txt and intrinsic_depth.txt. The colour is resampled onto the depth camera,
  whose calibration the bag carries. Ground truth: <scene>_vh_clean_2.labels.ply,
  <scene>.aggregation.json, <scene>_vh_clean_2.0.010000.segs.json.
replica DIR: a NICE-SLAM Replica sequence: results/frame%06d.jpg, results/depth%06d.png
  (png_depth_scale units per metre), traj.txt (16 numbers per line, camera-to-world,
  row-major), and --camera FILE. Ground truth: [habitat/]mesh_semantic.ply and
  info_semantic.json of the Replica scene.

Frame N is stamped N / --rate-hz seconds after a fixed start, so a stride keeps the
sequence's timing, and a frame skipped for an invalid pose (counted) leaves the gap a dropped
frame leaves. The ground truth is linked (copied where links fail) into the bag's parent
directory, where the evaluation looks for it, so give each scene its own:
--out bags/scene0000_00/bag. A summary goes to <bag>.import.json beside the bag.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import",
        help="write a ScanNet or Replica sequence as a rosbag2 bag for replay",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=sorted(DATASETS), help="the sequence's layout")
    parser.add_argument("dir", type=Path, metavar="DIR",
                        help="the sequence: a ScanNet scene export or a Replica sequence")
    parser.add_argument("--out", type=Path, required=True, metavar="BAG",
                        help="the bag directory to write (must not exist unless --force)")
    parser.add_argument("--camera", type=Path, default=None, metavar="FILE",
                        help="replica: YAML with H, W, fx, fy, cx, cy, png_depth_scale (flat "
                        "or under cam:, as in NICE-SLAM's configs/Replica/replica.yaml)")
    parser.add_argument("--ground-truth", type=Path, default=None, metavar="GT_DIR",
                        help="directory holding the scene's ground-truth files (default: DIR, "
                        "where missing ground truth is no error)")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="keep every N-th frame of the sequence (default 1: all)")
    parser.add_argument("--max-frames", type=int, default=0, metavar="N",
                        help="stop after N frames are written (default 0: no limit)")
    parser.add_argument("--rate-hz", type=float, default=30.0, metavar="HZ",
                        help="nominal frame rate of the stamps: frame N at N / HZ seconds "
                        "(default 30, ScanNet's capture rate; Replica's renders have none)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing bag (and links to other ground truth)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")  # fmt: skip
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = ImportConfig(every=args.every, max_frames=args.max_frames, rate_hz=args.rate_hz)
    sequence = DATASETS[args.dataset](args)
    result = import_sequence(sequence, args.out, config, force=args.force,
                             progress=not args.no_progress)  # fmt: skip
    _print(result, Path(args.out))
    return 0


def _print(result: ImportResult, bag: Path) -> None:
    size_mb = sum(p.stat().st_size for p in bag.iterdir()) / 1e6
    print(f"bag: {bag} ({result.frames_written} frames of {result.frames_in_sequence}, "
          f"numbers {result.first_frame}..{result.last_frame}, stamped at {result.rate_hz:g} "
          f"Hz, {size_mb:.1f} MB)")  # fmt: skip
    for topic, n in result.messages.items():
        print(f"  {topic}: {n}")
    if result.invalid_pose_frames:
        shown = ", ".join(map(str, result.invalid_pose_frames[:10]))
        more = len(result.invalid_pose_frames) - 10
        print(f"skipped: {len(result.invalid_pose_frames)} frame(s) with an invalid pose "
              f"({shown}{f', ... {more} more' if more > 0 else ''})")  # fmt: skip
    for linked in result.ground_truth:
        print(f"ground truth: {linked.destination} ({linked.how} of {linked.source})")
    if not result.ground_truth:
        print(f"ground truth: none found for {result.scene}")
    print(f"summary: {summary_path(bag)}")

"""``diff2scene query`` and ``diff2scene bringup``: the command-line tools that talk ROS 2.

Registered in the core's command table like every other tool, but this module imports nothing
of ROS at import time, so ``diff2scene --help`` works where rclpy is not installed; rclpy and
the interfaces are imported when one of these commands runs, and their absence is reported as
a setup problem, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diff2scene.errors import ConfigError

if TYPE_CHECKING:
    from diff2scene_ros.bringup import InputTopic
    from diff2scene_ros.client import QueryAnswer


def register(subparsers: Any) -> None:
    query = subparsers.add_parser(
        "query",
        help="ask a running diff2scene node where something is (its ~/text_query service)",
        description="Ask a running diff2scene node where something is. Prints the matching "
        "instances as a table (or JSON); exits 1 when the node answers that it cannot, 2 when "
        "it is absent or does not answer in time.",
    )
    query.add_argument("text", help='free-text query, e.g. "the mug on the table"')
    query.add_argument("--top-k", type=int, default=0,
                       help="at most this many instances, best first (default 0: all)")
    query.add_argument("--threshold", type=float, default=0.0,
                       help="match probability a point needs, in [0, 1] (default 0: the node's "
                       "query.score_threshold)")
    query.add_argument("--node", default="/diff2scene",
                       help="the node's name, with its namespace (default /diff2scene)")
    query.add_argument("--timeout", type=float, default=10.0, metavar="S",
                       help="seconds to wait for the node to appear and again for its answer")
    query.add_argument("--json", action="store_true", help="print the answer as JSON")
    query.add_argument("--points", action="store_true",
                       help="with --json: include the matching points [x, y, z, label, score]")
    query.set_defaults(func=run_query)

    bringup = subparsers.add_parser(
        "bringup",
        help="start the mapping node as `ros2 launch diff2scene bringup.launch.py` does",
        description="Start the diff2scene mapping node exactly as `ros2 launch diff2scene "
        "bringup.launch.py` does (same parameter file, node name and remappings, read from the "
        "launch file), without needing `launch`. Each launch argument has a flag of the same "
        "name; rviz is not started.",
    )
    bringup.add_argument("--params", type=Path, default=None, metavar="FILE",
                         help="ROS 2 parameter file (launch: params_file; default: the "
                         "package's config/diff2scene.yaml)")
    bringup.add_argument("--namespace", default="", metavar="NS",
                         help="node namespace (launch: namespace)")
    bringup.add_argument("--use-sim-time", action="store_true",
                         help="use /clock, e.g. for bag replay (launch: use_sim_time)")
    for topic in _input_topics():
        bringup.add_argument(topic.flag, dest=topic.argument, default=None, metavar="TOPIC",
                             help=f"remaps the node's {topic.node_topic} (launch: "
                             f"{topic.argument}; default {topic.default})")
    bringup.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                         help="a further remapping (repeatable)")
    bringup.add_argument("--print", action="store_true", dest="dry_run",
                         help="check the parameter file, print the node's command and exit")
    bringup.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], metavar="ARGS",
                         help="everything after it goes to the node, e.g. --ros-args -p "
                         "segmenter_profile:=tiny --log-level debug")
    bringup.set_defaults(func=run_bringup)


def _input_topics() -> tuple[InputTopic, ...]:
    """The launch file's inputs (one flag each); none if it cannot be found, in which case
    running the command reports why."""
    from diff2scene_ros.bringup import read_launch_table

    try:
        return read_launch_table().input_topics
    except ConfigError:
        return ()


def _ros_missing(exc: ImportError) -> ConfigError:
    return ConfigError(
        f"the ROS 2 Python packages are not importable ({exc}): run inside the Makefile's "
        "environment (make setup, then the RUN_ENV variables of the Makefile) or source a "
        "ROS 2 Jazzy workspace with diff2scene_interfaces built"
    )


def run_query(args: argparse.Namespace) -> int:
    try:
        from diff2scene_ros.client import QueryClient
    except ImportError as exc:
        raise _ros_missing(exc) from exc
    with QueryClient(args.node, timeout_s=args.timeout) as client:
        answer = client.query(args.text, top_k=args.top_k, score_threshold=args.threshold)
    if args.json:
        print(json.dumps(answer.to_dict(with_points=args.points), indent=2))
    else:
        print(format_answer(answer))
    if not answer.success:
        print(f"diff2scene query: the node could not answer: {answer.message}", file=sys.stderr)
        return 1
    return 0


def format_answer(answer: QueryAnswer) -> str:
    """The answer as an aligned table, one instance a row, best first."""
    head = (f"{answer.query!r}: {answer.message} ({answer.points.points_m.shape[0]} points in "
            f"{answer.frame_id or '-'}, {answer.latency_s * 1000:.0f} ms)")
    if not answer.instances:
        return head + "\nno instances"
    rows = [("#", "label", "score", "centroid x y z [m]", "box x y z [m]", "points")]
    for rank, inst in enumerate(answer.instances, 1):
        rows.append((
            str(rank), inst.label, f"{inst.score:.3f}",
            " ".join(f"{v:7.2f}" for v in inst.centroid_m),
            " ".join(f"{v:6.2f}" for v in inst.box_size_m),
            str(inst.num_points),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = (True, False, True, True, True, True)
    lines = [
        "  ".join(cell.rjust(w) if num else cell.ljust(w)
                  for cell, w, num in zip(row, widths, numeric, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join([head, *lines])


def run_bringup(args: argparse.Namespace) -> int:
    try:
        from diff2scene_ros.bringup import BringupOptions, run
    except ImportError as exc:
        raise _ros_missing(exc) from exc
    options = BringupOptions(
        params_file=args.params,
        namespace=args.namespace,
        use_sim_time=args.use_sim_time,
        topics={t.argument: getattr(args, t.argument) for t in _input_topics()
                if getattr(args, t.argument) is not None},
        remaps=list(args.remap),
        ros_args=list(args.ros_args),
    )
    try:
        return run(options, dry_run=args.dry_run)
    except ImportError as exc:
        raise _ros_missing(exc) from exc

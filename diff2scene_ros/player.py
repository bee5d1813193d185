"""Play a ROS 2 bag onto live topics: ``diff2scene play BAG`` (``ros2 bag play`` for a pip
install, where ros2cli is not available).

Messages go out as the CDR bytes stored in the bag (rclpy publishes serialized messages), so
what a subscriber receives is byte for byte what was recorded. Messages keep their recorded
header stamps; the pace follows the log times, scaled by ``--rate``. ``/tf_static`` is published
latched (transient local), as tf2's static broadcaster does.

``--loops N --restamp`` plays a bag N times as one stream moving forward in time: every header
stamp (and every ``/tf`` transform's stamp) of loop ``i`` is shifted by ``i`` times the bag's
span plus one mean period, so a subscriber sees a long recording rather than time jumping back
at each loop (which a mapping node treats as stale stamps or a time reset). Those messages are
deserialized, restamped and serialized again; everything else still goes out byte for byte.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diff2scene.errors import DataFormatError

#: QoS names accepted by ``--qos`` (the image/pose topics; /tf_static is always latched).
QOS_CHOICES = ("reliable", "sensor_data")


@dataclass
class PlayReport:
    """What was published, per topic."""

    published: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    #: Topics whose subscribers had not acknowledged everything after 10 s (reliable QoS).
    unacknowledged: list[str] = field(default_factory=list)


def message_class(msgtype: str) -> Any:
    """The rclpy message class of a type string such as ``sensor_msgs/msg/Image``."""
    try:
        package, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ValueError, ImportError, AttributeError) as exc:
        raise DataFormatError(
            f"message type {msgtype} is not available in this ROS environment: {exc}"
        ) from exc


def play(
    bag: Path,
    *,
    rate: float = 1.0,
    qos: str = "reliable",
    topics: Sequence[str] = (),
    loops: int = 1,
    wait_for_subscribers_s: float = 0.0,
    node_name: str = "diff2scene_player",
    restamp: bool = False,
) -> PlayReport:
    """Publish the bag's messages in log order at ``rate`` × recorded speed; with ``restamp``
    each loop after the first is shifted forward in time (see the module docstring)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.qos import (
        DurabilityPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if rate <= 0:
        raise ValueError("rate must be > 0")
    if qos not in QOS_CHOICES:
        raise ValueError(f"qos must be one of {QOS_CHOICES}")
    try:
        reader = AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_JAZZY))
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for bad bags
        raise DataFormatError(f"cannot open bag {bag}: {exc}") from exc
    context = Context()
    rclpy.init(context=context)
    report = PlayReport()
    try:
        node = rclpy.create_node(node_name, context=context)
        profile = (qos_profile_sensor_data if qos == "sensor_data"
                   else QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        connections = [c for c in reader.connections if not topics or c.topic in topics]
        publishers = {}
        for conn in connections:
            if conn.topic not in publishers:
                publishers[conn.topic] = node.create_publisher(
                    message_class(conn.msgtype), conn.topic,
                    latched if conn.topic == "/tf_static" else profile,
                )
        deadline = time.monotonic() + wait_for_subscribers_s
        while time.monotonic() < deadline and not all(
            p.get_subscription_count() > 0 for t, p in publishers.items() if t != "/tf_static"
        ):
            time.sleep(0.05)
        loop_offset_ns = _loop_period_ns(reader, connections) if restamp else 0
        classes = {c.topic: message_class(c.msgtype) for c in connections}
        start = time.monotonic()
        for loop in range(max(loops, 1)):
            shift_ns = loop * loop_offset_ns
            first_log_ns: int | None = None
            loop_start = time.monotonic()
            for conn, log_ns, raw in reader.messages(connections=connections):
                first_log_ns = log_ns if first_log_ns is None else first_log_ns
                due = loop_start + (log_ns - first_log_ns) / 1e9 / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if shift_ns and conn.topic != "/tf_static":
                    publishers[conn.topic].publish(_shifted(raw, classes[conn.topic], shift_ns))
                else:
                    publishers[conn.topic].publish(bytes(raw))
                report.published[conn.topic] += 1
        report.duration_s = time.monotonic() - start
        # A reliable writer repairs lost samples until its readers acknowledge them (Fast DDS
        # heartbeats every 3 s): leaving earlier loses the tail of the bag.
        if qos == "reliable":
            from rclpy.duration import Duration

            for topic, publisher in publishers.items():
                if not publisher.wait_for_all_acked(Duration(seconds=10.0)):
                    report.unacknowledged.append(topic)
        node.destroy_node()
    finally:
        reader.close()
        context.try_shutdown()
    return report


def _loop_period_ns(reader: Any, connections: Sequence[Any]) -> int:
    """Time between the starts of two restamped loops: the span of the log times plus one mean
    period of the busiest topic, so the first message of a loop follows the last of the
    previous one as the next sample of the stream would."""
    stamps: dict[str, list[int]] = {}
    for conn, log_ns, _raw in reader.messages(connections=connections):
        stamps.setdefault(conn.topic, []).append(log_ns)
    if not stamps:
        return 0
    busiest = max(stamps.values(), key=len)
    first = min(s[0] for s in stamps.values())
    last = max(s[-1] for s in stamps.values())
    period = (busiest[-1] - busiest[0]) // max(len(busiest) - 1, 1)
    return last - first + max(period, 1)


def _shift_stamp(stamp: Any, shift_ns: int) -> None:
    sec, nanosec = divmod(stamp.sec * 1_000_000_000 + stamp.nanosec + shift_ns, 1_000_000_000)
    stamp.sec, stamp.nanosec = sec, nanosec


def _shifted(raw: bytes | memoryview, msg_class: Any, shift_ns: int) -> Any:
    """The message of ``raw`` with its header stamp (or its transforms' stamps) moved by
    ``shift_ns``; a message without a stamp comes back unchanged."""
    from rclpy.serialization import deserialize_message

    msg = deserialize_message(bytes(raw), msg_class)
    if hasattr(msg, "header"):
        _shift_stamp(msg.header.stamp, shift_ns)
    for transform in getattr(msg, "transforms", ()):
        _shift_stamp(transform.header.stamp, shift_ns)
    return msg


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("play", help="publish a bag's messages on live topics")
    parser.add_argument("bag", type=Path, help="rosbag2 directory or file (sqlite3 or MCAP)")
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor (1 = recorded)")
    parser.add_argument("--qos", choices=QOS_CHOICES, default="reliable",
                        help="reliability of the publishers (/tf_static is always latched)")
    parser.add_argument("--topics", nargs="*", default=(), help="only these topics")
    parser.add_argument("--loops", type=int, default=1, help="play the bag this many times")
    parser.add_argument("--wait-for-subscribers-s", type=float, default=0.0,
                        help="wait up to this long for a subscriber on every topic")
    parser.add_argument("--restamp", action="store_true",
                        help="shift the stamps of each loop forward by the bag's span, so a "
                             "looped bag is one stream moving forward in time")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    report = play(args.bag, rate=args.rate, qos=args.qos, topics=args.topics, loops=args.loops,
                  wait_for_subscribers_s=args.wait_for_subscribers_s, restamp=args.restamp)
    for topic, count in sorted(report.published.items()):
        print(f"{topic:<52} {count:>7} published")
    print(f"played in {report.duration_s:.2f} s")
    if report.unacknowledged:
        print(f"not acknowledged by every subscriber: {', '.join(report.unacknowledged)}")
    return 0

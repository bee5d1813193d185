"""``diff2scene play --restamp``: a looped bag moves forward in time (no DDS needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tf2_msgs", reason="tf2_msgs is not built: run `make setup`")

from rclpy.serialization import serialize_message
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from diff2scene_ros.player import _loop_period_ns, _shifted
from tests.diff2scene.io.bagfactory import bag, image, tf_message, transform

T0 = 1_000_000_000_999_999_000
PERIOD = 100_000_000


def test_shifted_moves_header_and_transform_stamps() -> None:
    msg = Image(height=1, width=1, encoding="mono8", step=1, data=b"\x07")
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(T0, 1_000_000_000)
    out = _shifted(serialize_message(msg), Image, 2_500)
    assert out.header.stamp.sec * 10**9 + out.header.stamp.nanosec == T0 + 2_500
    assert bytes(out.data) == b"\x07"

    tf = TFMessage()
    tf.transforms = [_tf(T0), _tf(T0 + 5)]
    out_tf = _shifted(serialize_message(tf), TFMessage, 10**9)
    stamps = [t.header.stamp.sec * 10**9 + t.header.stamp.nanosec for t in out_tf.transforms]
    assert stamps == [T0 + 10**9, T0 + 5 + 10**9]


def _tf(stamp_ns: int) -> object:
    from geometry_msgs.msg import TransformStamped

    t = TransformStamped()
    t.header.stamp.sec, t.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    t.header.frame_id, t.child_frame_id = "map", "cam"
    return t


def test_loop_period_is_span_plus_one_period(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    n = 5
    with bag(path) as b:
        for i in range(n):
            t = T0 + i * PERIOD
            b.write("/tf", t, tf_message(transform(t, "map", "cam", (0.0, 0.0, 0.0))))
            b.write("/img", t + 1_000, image(t + 1_000, np.zeros((2, 2), np.uint8), "mono8"))
    with AnyReader([path]) as reader:
        period = _loop_period_ns(reader, reader.connections)
    # span: first /tf to last image; plus one mean period of a busiest topic
    assert period == (n - 1) * PERIOD + 1_000 + PERIOD

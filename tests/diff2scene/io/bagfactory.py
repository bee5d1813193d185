"""Builds small ROS 2 bags message by message, so frame-source tests control every field."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types


def header(stamp_ns: int, frame_id: str) -> Any:
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](
            sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000
        ),
        frame_id=frame_id,
    )


def image(
    stamp_ns: int,
    array: np.ndarray,
    encoding: str,
    frame_id: str = "cam_optical",
    *,
    step_pad: int = 0,
) -> Any:
    h, w = array.shape[:2]
    row = array.reshape(h, -1).view(np.uint8)
    if step_pad:
        row = np.concatenate([row, np.zeros((h, step_pad), np.uint8)], axis=1)
    return T["sensor_msgs/msg/Image"](
        header=header(stamp_ns, frame_id),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=row.shape[1],
        data=np.ascontiguousarray(row).reshape(-1),
    )


def camera_info(stamp_ns: int, w: int, h: int, f: float = 50.0) -> Any:
    k = np.array([f, 0, (w - 1) / 2, 0, f, (h - 1) / 2, 0, 0, 1], np.float64)
    p = np.array([f, 0, (w - 1) / 2, 0, 0, f, (h - 1) / 2, 0, 0, 0, 1, 0], np.float64)
    roi = T["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return T["sensor_msgs/msg/CameraInfo"](
        header=header(stamp_ns, "cam_optical"),
        height=h,
        width=w,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=k,
        r=np.eye(3).reshape(-1),
        p=p,
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def _pose(xyz: tuple[float, float, float], q: tuple[float, float, float, float]) -> Any:
    return T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=xyz[0], y=xyz[1], z=xyz[2]),
        orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
    )


def pose_stamped(
    stamp_ns: int,
    xyz: tuple[float, float, float],
    q: tuple[float, float, float, float] = (0, 0, 0, 1),
) -> Any:
    return T["geometry_msgs/msg/PoseStamped"](header=header(stamp_ns, "map"), pose=_pose(xyz, q))


def transform(
    stamp_ns: int,
    parent: str,
    child: str,
    xyz: tuple[float, float, float],
    q: tuple[float, float, float, float] = (0, 0, 0, 1),
) -> Any:
    return T["geometry_msgs/msg/TransformStamped"](
        header=header(stamp_ns, parent),
        child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=xyz[0], y=xyz[1], z=xyz[2]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
        ),
    )


def tf_message(*transforms: Any) -> Any:
    return T["tf2_msgs/msg/TFMessage"](transforms=list(transforms))


class BagBuilder:
    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._conns: dict[str, Any] = {}

    def write(self, topic: str, log_ns: int, msg: Any) -> None:
        msgtype = msg.__msgtype__
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=TS)
        self._writer.write(self._conns[topic], log_ns, TS.serialize_cdr(msg, msgtype))

    def write_raw(self, topic: str, msgtype: str, log_ns: int, raw: bytes) -> None:
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=TS)
        self._writer.write(self._conns[topic], log_ns, raw)


@contextmanager
def bag(path: Path, *, mcap: bool = True) -> Iterator[BagBuilder]:
    plugin = StoragePlugin.MCAP if mcap else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        yield BagBuilder(writer)


def write_sequence(
    builder: BagBuilder,
    n: int,
    *,
    w: int = 8,
    h: int = 6,
    period_ns: int = 33_333_333,
    t0_ns: int = 1_000_000_000,
    depth_offset_ns: int = 2_000_000,
    color_encoding: str = "rgb8",
    pose: str = "topic",
) -> None:
    """n frames moving along +x at 1 m/s: colour, depth (16UC1 = 1000 + i mm), info, pose."""
    for i in range(n):
        t = t0_ns + i * period_ns
        rgb = np.full((h, w, 3), (i, 2 * i, 3 * i), np.uint8)
        if color_encoding == "bgr8":
            rgb = rgb[:, :, ::-1].copy()
        builder.write("/camera/color/camera_info", t, camera_info(t, w, h))
        builder.write("/camera/color/image_raw", t, image(t, rgb, color_encoding))
        depth = np.full((h, w), 1000 + i, np.uint16)
        builder.write(
            "/camera/depth/image_rect_raw",
            t + depth_offset_ns,
            image(t + depth_offset_ns, depth, "16UC1"),
        )
        x = t * 1e-9
        if pose == "topic":
            builder.write("/camera/pose", t, pose_stamped(t, (x, 0.0, 0.0)))
        elif pose == "tf":
            builder.write("/tf", t, tf_message(transform(t, "odom", "base_link", (x, 0.0, 0.0))))
    if pose == "tf":
        builder.write(
            "/tf_static",
            t0_ns,
            tf_message(
                transform(t0_ns, "map", "odom", (0.0, 1.0, 0.0)),
                transform(
                    t0_ns, "base_link", "cam_optical", (0.0, 0.0, 0.5), (-0.5, 0.5, -0.5, 0.5)
                ),
            ),
        )

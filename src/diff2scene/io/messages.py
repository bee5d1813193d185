"""Plain records of the input messages, and readers that fill them from any ROS 2 message.

The frame assembler works on these records, never on message classes, so one code path serves
both front ends: rclpy messages (the live node) and rosbags messages (bag replay) have the same
field names, and the readers below only read fields. Nothing here decodes pixels: a record
holds a reference to the message's payload, so making one is cheap enough for a callback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError
from diff2scene.io.transforms import pose_to_matrix

Payload = bytes | bytearray | memoryview | NDArray[np.uint8]


@dataclass(frozen=True)
class ImageData:
    """A ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``, not yet decoded.

    For a compressed image ``encoding`` holds the message's ``format`` string (e.g.
    ``"bgr8; jpeg compressed bgr8"`` or ``"16UC1; compressedDepth png"``) and the size fields
    are 0: the size is only known after decoding.
    """

    stamp_ns: int
    frame_id: str
    encoding: str
    data: Payload
    height: int = 0
    width: int = 0
    step: int = 0
    is_bigendian: bool = False
    compressed: bool = False


@dataclass(frozen=True)
class CameraInfoData:
    """The calibration fields of a ``sensor_msgs/CameraInfo`` that the map needs."""

    stamp_ns: int
    frame_id: str
    width: int
    height: int
    k: tuple[float, ...]  # 9, row-major
    p: tuple[float, ...]  # 12, row-major
    binning_x: int = 0
    binning_y: int = 0
    #: (x_offset, y_offset, width, height) of the region of interest; zeros = full image.
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class PoseData:
    """``T_parent_child`` at ``stamp_ns``; ``child`` is empty for a PoseStamped."""

    stamp_ns: int
    parent: str
    child: str
    T_parent_child: NDArray[np.float64]  # (4, 4)


def stamp_ns_of(header: Any) -> int:
    """Nanoseconds of a ``std_msgs/Header`` stamp."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def read_image(msg: Any) -> ImageData:
    """Record of a ``sensor_msgs/Image`` (rclpy or rosbags message)."""
    return ImageData(
        stamp_ns=stamp_ns_of(msg.header),
        frame_id=str(msg.header.frame_id).lstrip("/"),
        encoding=str(msg.encoding),
        data=_payload(msg.data),
        height=int(msg.height),
        width=int(msg.width),
        step=int(msg.step),
        is_bigendian=bool(msg.is_bigendian),
    )


def read_compressed_image(msg: Any) -> ImageData:
    """Record of a ``sensor_msgs/CompressedImage`` (image_transport ``compressed`` or
    ``compressedDepth``)."""
    return ImageData(
        stamp_ns=stamp_ns_of(msg.header),
        frame_id=str(msg.header.frame_id).lstrip("/"),
        encoding=str(msg.format),
        data=_payload(msg.data),
        compressed=True,
    )


def read_any_image(msg: Any) -> ImageData:
    """Record of an Image or a CompressedImage, told apart by their fields."""
    return read_compressed_image(msg) if hasattr(msg, "format") else read_image(msg)


def read_camera_info(msg: Any) -> CameraInfoData:
    """Record of a ``sensor_msgs/CameraInfo``; malformed K/P raise :class:`InputError`."""
    k = tuple(float(v) for v in np.asarray(msg.k, dtype=np.float64).reshape(-1))
    p = tuple(float(v) for v in np.asarray(msg.p, dtype=np.float64).reshape(-1))
    if len(k) != 9 or len(p) != 12:
        raise InputError("bad_camera_info", f"K has {len(k)} values, P has {len(p)}",
                         stamp_ns=stamp_ns_of(msg.header))
    roi = msg.roi
    return CameraInfoData(
        stamp_ns=stamp_ns_of(msg.header),
        frame_id=str(msg.header.frame_id).lstrip("/"),
        width=int(msg.width),
        height=int(msg.height),
        k=k,
        p=p,
        binning_x=int(msg.binning_x),
        binning_y=int(msg.binning_y),
        roi=(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)),
    )


PoseKind = Literal["pose", "odometry", "transform"]


def pose_kind(msg: Any) -> PoseKind:
    """Which pose-carrying message ``msg`` is, from its fields (works for both libraries)."""
    if hasattr(msg, "transform"):
        return "transform"
    if hasattr(msg, "child_frame_id") and hasattr(msg, "twist"):
        return "odometry"
    if hasattr(msg, "pose") and hasattr(msg.pose, "position"):
        return "pose"
    raise InputError("bad_pose_message", f"cannot read a pose from {type(msg).__name__}")


def read_pose(msg: Any) -> PoseData:
    """Record of a PoseStamped, Odometry or TransformStamped.

    A zero or non-finite quaternion or translation raises :class:`InputError` (with the
    message's stamp).
    """
    kind = pose_kind(msg)
    if kind == "transform":
        t, q = msg.transform.translation, msg.transform.rotation
        child = str(msg.child_frame_id)
    elif kind == "odometry":
        t, q = msg.pose.pose.position, msg.pose.pose.orientation
        child = str(msg.child_frame_id)
    else:
        t, q = msg.pose.position, msg.pose.orientation
        child = ""
    stamp_ns = stamp_ns_of(msg.header)
    try:
        T = pose_to_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
    except InputError as exc:
        raise InputError(exc.reason, exc.detail, stamp_ns=stamp_ns) from exc
    return PoseData(
        stamp_ns=stamp_ns,
        parent=str(msg.header.frame_id).lstrip("/"),
        child=child.lstrip("/"),
        T_parent_child=T,
    )


def read_transforms(msg: Any) -> list[PoseData]:
    """Records of every transform of a ``tf2_msgs/TFMessage``; a bad one raises (with its own
    stamp)."""
    return [read_pose(ts) for ts in msg.transforms]


def _payload(data: Any) -> Payload:
    if isinstance(data, bytes | bytearray | memoryview | np.ndarray):
        return data
    return memoryview(data)  # array.array (rclpy) and other buffer objects: no copy

"""ROS 2 message ↔ NumPy conversions for the diff2scene node, as plain functions.

No node, no graph: everything here is tested by building messages in memory. Incoming
sensor messages are not converted here: the core's readers (:mod:`diff2scene.io.messages`) and
frame assembler take them as they are, so the live node and bag replay share one decoder.
Outgoing byte buffers are handed to the messages as ``array.array('B')``, which rclpy
stores without a per-byte Python check (that check costs seconds on a large cloud).
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diff2scene_interfaces.msg import Instance
from geometry_msgs.msg import (
    Point,
    Pose,
    PoseStamped,
    Quaternion,
    Transform,
    TransformStamped,
    Vector3,
)
from numpy.typing import ArrayLike, NDArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from diff2scene.errors import InputError
from diff2scene.io import output_layout as layout
from diff2scene.io.output_layout import (
    HIGHLIGHT_RGB,
    QUERY_NAMESPACE,
    UNKNOWN_LABEL,
    InstanceLike,
    MarkerStyle,
    unpack_rgb,
)
from diff2scene.io.transforms import matrix_to_quat
from diff2scene.types import CameraIntrinsics

__all__ = [
    "CLOUD_FIELDS",
    "HIGHLIGHT_RGB",
    "UNKNOWN_LABEL",
    "Cloud",
    "InstanceLike",
    "arrays_to_cloud",
    "cloud_to_arrays",
    "depth_to_image",
    "instance_msg_contents",
    "instances_to_msgs",
    "intrinsics_to_camera_info",
    "make_header",
    "matrix_to_pose_stamped",
    "matrix_to_transform_stamped",
    "ns_to_stamp",
    "query_markers",
    "rgb_to_image",
    "stamp_to_ns",
    "unpack_rgb",
]

_NS_PER_S = 1_000_000_000

# --------------------------------------------------------------------------- time, headers


def stamp_to_ns(stamp: Time) -> int:
    """Nanoseconds since the epoch of a ``builtin_interfaces/Time``."""
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Time:
    """``builtin_interfaces/Time`` of a non-negative nanosecond stamp."""
    if stamp_ns < 0:
        raise InputError("negative_stamp", str(stamp_ns))
    sec, nanosec = divmod(int(stamp_ns), _NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def make_header(frame_id: str, stamp_ns: int) -> Header:
    """``std_msgs/Header`` with a nanosecond stamp."""
    return Header(frame_id=frame_id, stamp=ns_to_stamp(stamp_ns))


# --------------------------------------------------------------------------- images

def _image_msg(
    pixels: NDArray[np.generic], encoding: str, frame_id: str, stamp_ns: int
) -> Image:
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    return Image(
        header=make_header(frame_id, stamp_ns),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=False,
        step=int(pixels.strides[0]),
        data=array.array("B", pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()),
    )


def rgb_to_image(
    rgb: NDArray[np.uint8], *, frame_id: str = "", stamp_ns: int = 0, encoding: str = "rgb8"
) -> Image:
    """``sensor_msgs/Image`` (rgb8 or bgr8, unpadded) of an (H, W, 3) uint8 RGB array."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError("bad_rgb_array", f"need (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if encoding not in ("rgb8", "bgr8"):
        raise InputError("bad_color_encoding", f"cannot write {encoding!r}; use rgb8 or bgr8")
    pixels = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    return _image_msg(pixels, encoding, frame_id, stamp_ns)


def depth_to_image(
    depth_m: NDArray[np.floating], *, frame_id: str = "", stamp_ns: int = 0,
    encoding: str = "32FC1",
) -> Image:
    """``sensor_msgs/Image`` of (H, W) depth in metres: 32FC1 metres or 16UC1 millimetres.

    For 16UC1, depths are rounded to the millimetre; invalid (non-finite, ≤ 0) and depths past
    65.535 m are written as 0 (the 16UC1 "no return" value).
    """
    if depth_m.ndim != 2:
        raise InputError("bad_depth_array", f"need (H, W), got {depth_m.shape}")
    depth = np.asarray(depth_m, dtype=np.float32)
    if encoding == "32FC1":
        return _image_msg(depth, encoding, frame_id, stamp_ns)
    if encoding == "16UC1":
        mm = np.rint(np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0)
        mm[(mm <= 0) | (mm > np.iinfo(np.uint16).max)] = 0
        return _image_msg(mm.astype(np.uint16), encoding, frame_id, stamp_ns)
    raise InputError("bad_depth_encoding", f"cannot write {encoding!r}; use 32FC1 or 16UC1")


# --------------------------------------------------------------------------- camera info


def intrinsics_to_camera_info(
    intrinsics: CameraIntrinsics, *, frame_id: str = "", stamp_ns: int = 0
) -> CameraInfo:
    """``CameraInfo`` of an undistorted pinhole camera (plumb_bob, zero distortion)."""
    i = intrinsics
    return CameraInfo(
        header=make_header(frame_id, stamp_ns),
        width=i.width,
        height=i.height,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=[i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[i.fx, 0.0, i.cx, 0.0, 0.0, i.fy, i.cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


# --------------------------------------------------------------------------- poses

def _check_matrix(T: ArrayLike) -> NDArray[np.float64]:
    M = np.asarray(T, dtype=np.float64)
    if M.shape != (4, 4) or not np.all(np.isfinite(M)):
        raise InputError("bad_transform", f"need a finite (4, 4) matrix, got shape {M.shape}")
    return M


def matrix_to_pose_stamped(
    T: ArrayLike, *, frame_id: str = "", stamp_ns: int = 0
) -> PoseStamped:
    """``PoseStamped`` of a (4, 4) rigid transform ``T_{frame_id, body}``."""
    M = _check_matrix(T)
    x, y, z, w = matrix_to_quat(M[:3, :3])
    return PoseStamped(
        header=make_header(frame_id, stamp_ns),
        pose=Pose(
            position=Point(x=float(M[0, 3]), y=float(M[1, 3]), z=float(M[2, 3])),
            orientation=Quaternion(x=x, y=y, z=z, w=w),
        ),
    )


def matrix_to_transform_stamped(
    T: ArrayLike, *, frame_id: str, child_frame_id: str, stamp_ns: int = 0
) -> TransformStamped:
    """``TransformStamped`` of a (4, 4) rigid transform ``T_{frame_id, child_frame_id}``."""
    M = _check_matrix(T)
    x, y, z, w = matrix_to_quat(M[:3, :3])
    return TransformStamped(
        header=make_header(frame_id, stamp_ns),
        child_frame_id=child_frame_id,
        transform=Transform(
            translation=Vector3(x=float(M[0, 3]), y=float(M[1, 3]), z=float(M[2, 3])),
            rotation=Quaternion(x=x, y=y, z=z, w=w),
        ),
    )


# --------------------------------------------------------------------------- point clouds

#: The labelled cloud's fields (:data:`diff2scene.io.output_layout.CLOUD_FIELDS`), 24 bytes.
CLOUD_FIELDS = layout.CLOUD_FIELDS


@dataclass
class Cloud:
    """A point cloud as arrays; absent fields are None."""

    points_m: NDArray[np.float32]  # (N, 3)
    rgb: NDArray[np.uint8] | None = None  # (N, 3)
    labels: NDArray[np.uint32] | None = None  # (N,)
    scores: NDArray[np.float32] | None = None  # (N,)


def arrays_to_cloud(
    points_m: NDArray[np.floating],
    *,
    rgb: NDArray[np.uint8] | None = None,
    labels: NDArray[np.integer] | None = None,
    scores: NDArray[np.floating] | None = None,
    frame_id: str = "map",
    stamp_ns: int = 0,
) -> PointCloud2:
    """Unorganised ``PointCloud2`` with fields x y z rgb label score (:data:`CLOUD_FIELDS`).

    ``points_m`` is (N, 3); ``rgb`` (N, 3) uint8 (default grey), ``labels`` (N,) non-negative
    ints (default 0), ``scores`` (N,) (default 0). The content is the core's
    (:func:`~diff2scene.io.output_layout.labelled_cloud`), shared with replay's result bags.
    """
    c = layout.labelled_cloud(points_m, rgb=rgb, labels=labels, scores=scores)
    return PointCloud2(
        header=make_header(frame_id, stamp_ns),
        height=c.height,
        width=c.width,
        fields=[
            PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
            for f in c.fields
        ],
        is_bigendian=c.is_bigendian,
        point_step=c.point_step,
        row_step=c.row_step,
        data=array.array("B", c.data),
        is_dense=c.is_dense,
    )


def cloud_to_arrays(msg: PointCloud2) -> Cloud:
    """Arrays of a ``PointCloud2`` of any field layout that has float x, y, z.

    Reads ``rgb`` or ``rgba`` (packed), ``label`` and ``score`` when present; handles
    organised clouds (row padding) and big-endian data. Inconsistent sizes or a field that
    overruns the point raise :class:`InputError`.
    """
    h, w = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    order = ">" if msg.is_bigendian else "<"
    fields: dict[str, tuple[int, str]] = {}
    for f in msg.fields:
        if int(f.datatype) not in layout.POINTFIELD_DTYPES:
            raise InputError("bad_cloud_field", f"{f.name}: unknown datatype {f.datatype}")
        fmt = order + layout.POINTFIELD_DTYPES[int(f.datatype)]
        if int(f.count) != 1 or int(f.offset) + np.dtype(fmt).itemsize > point_step:
            raise InputError("bad_cloud_field", f"{f.name} overruns point_step {point_step}")
        fields[str(f.name)] = (int(f.offset), fmt)
    if h * w == 0 and not fields:  # a default-constructed message: nothing, not an error
        return Cloud(points_m=np.zeros((0, 3), np.float32))
    for axis in ("x", "y", "z"):
        if axis not in fields or fields[axis][1][1] != "f":
            raise InputError("bad_cloud_field", f"no float field {axis!r}")
    record = np.dtype(
        {
            "names": list(fields),
            "formats": [fmt for _, fmt in fields.values()],
            "offsets": [off for off, _ in fields.values()],
            "itemsize": max(point_step, 1),
        }
    )
    if h * w == 0:
        rec = np.zeros(0, dtype=record)
    else:
        if point_step <= 0 or row_step < point_step * w:
            raise InputError(
                "bad_cloud_step", f"point_step {point_step}, row_step {row_step}, w {w}"
            )
        buf = np.frombuffer(msg.data, dtype=np.uint8)
        if buf.size < row_step * (h - 1) + point_step * w:
            raise InputError("truncated_cloud", f"{buf.size} bytes for {h}x{w} points")
        if buf.size < row_step * h:
            buf = np.concatenate([buf, np.zeros(row_step * h - buf.size, np.uint8)])
        rows = buf[: row_step * h].reshape(h, row_step)[:, : point_step * w]
        rec = np.ascontiguousarray(rows).view(record).reshape(-1)
    points = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)
    color_name = "rgb" if "rgb" in fields else "rgba" if "rgba" in fields else None
    rgb = None
    if color_name is not None:
        raw = rec[color_name]
        rgb = unpack_rgb(raw.astype(raw.dtype.newbyteorder("<")))
    labels = rec["label"].astype(np.uint32) if "label" in fields else None
    scores = rec["score"].astype(np.float32) if "score" in fields else None
    return Cloud(points_m=points, rgb=rgb, labels=labels, scores=scores)


# --------------------------------------------------------------------------- query results


def instances_to_msgs(instances: Sequence[InstanceLike]) -> list[Instance]:
    """``diff2scene_interfaces/Instance`` messages, in the given order.

    Bad geometry raises ``InputError("bad_instance", ...)``
    (:func:`~diff2scene.io.output_layout.instance_contents`).
    """
    return [
        Instance(
            label=c.label,
            score=c.score,
            centroid=Point(x=c.centroid_m[0], y=c.centroid_m[1], z=c.centroid_m[2]),
            box_size=Vector3(x=c.box_size_m[0], y=c.box_size_m[1], z=c.box_size_m[2]),
            point_count=c.point_count,
        )
        for c in layout.instance_contents(instances)
    ]


def instance_msg_contents(instances: Sequence[Instance]) -> list[layout.InstanceContent]:
    """The core's contents of ``Instance`` messages (a ``TextQuery`` response's), unchecked."""
    return [
        layout.InstanceContent(
            label=str(m.label),
            score=float(m.score),
            centroid_m=(float(m.centroid.x), float(m.centroid.y), float(m.centroid.z)),
            box_size_m=(float(m.box_size.x), float(m.box_size.y), float(m.box_size.z)),
            point_count=int(m.point_count),
        )
        for m in instances
    ]


def query_markers(
    instances: Sequence[Instance],
    *,
    frame_id: str = "map",
    stamp_ns: int = 0,
    namespace: str = QUERY_NAMESPACE,
    colors: NDArray[np.uint8] | None = None,
    min_box_size_m: float = MarkerStyle.min_box_size_m,
    text_height_m: float = MarkerStyle.text_height_m,
    box_alpha: float = MarkerStyle.box_alpha,
) -> MarkerArray:
    """``MarkerArray`` drawing each instance as a translucent box and a "label 0.87" text.

    The first marker is a DELETEALL for ``namespace`` so an answer replaces the previous one
    in rviz instead of leaving stale boxes. Boxes are at least ``min_box_size_m`` wide so a
    one-voxel instance stays visible. ``colors`` is (N, 3) uint8, one per instance. The layout
    is the core's (:func:`~diff2scene.io.output_layout.query_marker_contents`).
    """
    contents = layout.query_marker_contents(
        instance_msg_contents(instances),
        namespace=namespace,
        colors=colors,
        style=MarkerStyle(min_box_size_m=min_box_size_m, text_height_m=text_height_m,
                          box_alpha=box_alpha),
    )
    header = make_header(frame_id, stamp_ns)
    return MarkerArray(markers=[_marker(header, m) for m in contents])


def _marker(header: Header, m: layout.MarkerContent) -> Marker:
    (px, py, pz), (qx, qy, qz, qw) = m.position_m, m.orientation_xyzw
    (sx, sy, sz), (r, g, b, a) = m.scale_m, m.color_rgba
    sec, nanosec = divmod(m.lifetime_ns, _NS_PER_S)
    return Marker(
        header=header,
        ns=m.ns,
        id=m.id,
        type=int(m.type),
        action=int(m.action),
        pose=Pose(position=Point(x=px, y=py, z=pz), orientation=Quaternion(x=qx, y=qy, z=qz, w=qw)),
        scale=Vector3(x=sx, y=sy, z=sz),
        color=ColorRGBA(r=r, g=g, b=b, a=a),
        lifetime=Duration(sec=sec, nanosec=nanosec),
        text=m.text,
    )

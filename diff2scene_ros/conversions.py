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
from typing import Protocol

import numpy as np
from builtin_interfaces.msg import Time
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
from diff2scene.io.bag_writer import cloud_record
from diff2scene.io.transforms import matrix_to_quat
from diff2scene.types import CameraIntrinsics

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

#: ``label`` of a point whose class is unknown (too little evidence to name one).
UNKNOWN_LABEL = 0xFFFFFFFF

#: The labelled cloud's point layout: (name, PointField datatype, numpy dtype), 24 bytes.
CLOUD_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("x", PointField.FLOAT32, "<f4"),
    ("y", PointField.FLOAT32, "<f4"),
    ("z", PointField.FLOAT32, "<f4"),
    ("rgb", PointField.FLOAT32, "<f4"),
    ("label", PointField.UINT32, "<u4"),
    ("score", PointField.FLOAT32, "<f4"),
)
_POINTFIELD_DTYPES: dict[int, str] = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}


def unpack_rgb(packed: NDArray[np.generic]) -> NDArray[np.uint8]:
    """(N, 3) uint8 RGB of a packed (N,) float32 or uint32 ``rgb``/``rgba`` field."""
    bits = np.ascontiguousarray(packed).view(np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=1).astype(
        np.uint8
    )


@dataclass
class Cloud:
    """A point cloud as arrays; absent fields are None."""

    points_m: NDArray[np.float32]  # (N, 3)
    rgb: NDArray[np.uint8] | None = None  # (N, 3)
    labels: NDArray[np.uint32] | None = None  # (N,)
    scores: NDArray[np.float32] | None = None  # (N,)


def _offsets(dtype: np.dtype[np.void]) -> list[int]:
    if dtype.fields is None:
        return []
    return [int(dtype.fields[name][1]) for name in dtype.names or ()]


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
    ints (default 0), ``scores`` (N,) (default 0). All six fields are always written so every
    cloud the node publishes has one layout that rviz can colour by ``rgb`` or ``label``.
    """
    # the core's record (shared with the result bags of a replay) checks the shapes
    rec = cloud_record(points_m, rgb=rgb, labels=labels, scores=scores)
    dtype = rec.dtype
    n = rec.shape[0]
    pts = np.asarray(points_m)
    return PointCloud2(
        header=make_header(frame_id, stamp_ns),
        height=1,
        width=n,
        fields=[
            PointField(name=name, offset=offset, datatype=code, count=1)
            for (name, code, _), offset in zip(CLOUD_FIELDS, _offsets(dtype), strict=True)
        ],
        is_bigendian=False,
        point_step=dtype.itemsize,
        row_step=dtype.itemsize * n,
        data=array.array("B", rec.tobytes()),
        is_dense=bool(np.all(np.isfinite(pts))),
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
        if int(f.datatype) not in _POINTFIELD_DTYPES:
            raise InputError("bad_cloud_field", f"{f.name}: unknown datatype {f.datatype}")
        fmt = order + _POINTFIELD_DTYPES[int(f.datatype)]
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


class InstanceLike(Protocol):
    """What a query answer says about one object (``diff2scene.query.instances.Instance``)."""

    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def centroid_m(self) -> Sequence[float] | NDArray[np.floating]: ...
    @property
    def box_size_m(self) -> Sequence[float] | NDArray[np.floating]: ...
    @property
    def num_points(self) -> int: ...


def _xyz(value: Sequence[float] | NDArray[np.floating], name: str) -> tuple[float, float, float]:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise InputError("bad_instance", f"{name} must be 3 finite numbers, got {value!r}")
    return float(v[0]), float(v[1]), float(v[2])


def instances_to_msgs(instances: Sequence[InstanceLike]) -> list[Instance]:
    """``diff2scene_interfaces/Instance`` messages, in the given order."""
    out = []
    for inst in instances:
        cx, cy, cz = _xyz(inst.centroid_m, "centroid_m")
        sx, sy, sz = _xyz(inst.box_size_m, "box_size_m")
        if min(sx, sy, sz) < 0 or int(inst.num_points) < 0:
            raise InputError("bad_instance", f"negative box size or point count in {inst!r}")
        out.append(
            Instance(
                label=str(inst.label),
                score=float(inst.score),
                centroid=Point(x=cx, y=cy, z=cz),
                box_size=Vector3(x=sx, y=sy, z=sz),
                point_count=int(inst.num_points),
            )
        )
    return out


#: Colour of query boxes when no per-instance colour is given (orange, like a highlight).
HIGHLIGHT_RGB = (255, 140, 0)


def query_markers(
    instances: Sequence[Instance],
    *,
    frame_id: str = "map",
    stamp_ns: int = 0,
    namespace: str = "query",
    colors: NDArray[np.uint8] | None = None,
    min_box_size_m: float = 0.02,
    text_height_m: float = 0.12,
    box_alpha: float = 0.35,
) -> MarkerArray:
    """``MarkerArray`` drawing each instance as a translucent box and a "label 0.87" text.

    The first marker is a DELETEALL for ``namespace`` so an answer replaces the previous one
    in rviz instead of leaving stale boxes. Boxes are at least ``min_box_size_m`` wide so a
    one-voxel instance stays visible. ``colors`` is (N, 3) uint8, one per instance.
    """
    if colors is not None and colors.shape != (len(instances), 3):
        raise InputError("bad_marker_colors", f"{colors.shape} for {len(instances)} instances")
    header = make_header(frame_id, stamp_ns)
    markers = [Marker(header=header, ns=namespace, id=0, action=Marker.DELETEALL)]
    for i, inst in enumerate(instances):
        r, g, b = (int(v) for v in (HIGHLIGHT_RGB if colors is None else colors[i]))
        rgba = ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=float(box_alpha))
        size = inst.box_size
        box = Marker(
            header=header,
            ns=namespace,
            id=2 * i + 1,
            type=Marker.CUBE,
            action=Marker.ADD,
            pose=Pose(position=inst.centroid, orientation=Quaternion(w=1.0)),
            scale=Vector3(
                x=max(size.x, min_box_size_m),
                y=max(size.y, min_box_size_m),
                z=max(size.z, min_box_size_m),
            ),
            color=rgba,
        )
        c = inst.centroid
        lift_m = text_height_m  # text floats one line above the box top
        text = Marker(
            header=header,
            ns=namespace,
            id=2 * i + 2,
            type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD,
            pose=Pose(
                position=Point(x=c.x, y=c.y, z=c.z + max(size.z, min_box_size_m) / 2 + lift_m),
                orientation=Quaternion(w=1.0),
            ),
            scale=Vector3(z=text_height_m),
            color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
            text=f"{inst.label} {inst.score:.2f}",
        )
        markers.extend([box, text])
    return MarkerArray(markers=markers)

"""What the node's output messages hold, built once for every front end that writes them.

The live node publishes rclpy messages; replay writes ``rosbags`` messages into a result bag.
Both must carry the same clouds, markers and detections, so that a replayed bag looks in rviz
or Foxglove exactly like a recording of the node. This module builds that content as plain
data (NumPy bytes, dataclasses, the message definitions' numeric constants) without importing
any message package; each front end only copies it into its own message classes.

* Labelled cloud (``sensor_msgs/PointCloud2``): unorganised (height 1), little-endian, fields
  ``x y z`` float32, ``rgb`` float32 whose bits are 0x00RRGGBB (the packed colour rviz and PCL
  read), ``label`` uint32 and ``score`` float32 at offsets 0, 4, 8, 12, 16, 20 (point step 24).
* Query markers (``visualization_msgs/MarkerArray``): a DELETEALL for the namespace first (an
  answer replaces the previous one instead of leaving stale boxes), then per instance a
  translucent CUBE at its centroid, at least ``min_box_size_m`` wide, and a TEXT_VIEW_FACING
  "label 0.87" one text line above the box.
* Detections (``vision_msgs/Detection3D``): one per instance, its class and score as the
  hypothesis, its centroid as the pose and box centre, its box along the map axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError

__all__ = [
    "CLOUD_DTYPE",
    "CLOUD_FIELDS",
    "HIGHLIGHT_RGB",
    "IDENTITY_XYZW",
    "MARKER_LIFETIME_NS",
    "POINTFIELD_DTYPES",
    "QUERY_NAMESPACE",
    "TEXT_RGBA",
    "UNKNOWN_LABEL",
    "CloudContent",
    "CloudField",
    "DetectionContent",
    "InstanceContent",
    "InstanceLike",
    "MarkerAction",
    "MarkerContent",
    "MarkerStyle",
    "MarkerType",
    "PointFieldType",
    "cloud_record",
    "detection_contents",
    "instance_contents",
    "labelled_cloud",
    "pack_rgb",
    "query_marker_contents",
    "unpack_rgb",
]

Vec3 = tuple[float, float, float]
Rgba = tuple[float, float, float, float]

#: ``label`` of a point whose class is unknown (too little evidence to name one).
UNKNOWN_LABEL = 0xFFFFFFFF
#: Colour of query boxes when no per-instance colour is given (orange, like a highlight).
HIGHLIGHT_RGB = (255, 140, 0)
#: Grey of points given no colour.
DEFAULT_GREY = 200
#: Colour of the label texts above the boxes (opaque white reads on any map colour).
TEXT_RGBA: Rgba = (1.0, 1.0, 1.0, 1.0)
#: Namespace of the query markers; an answer's DELETEALL clears only this namespace.
QUERY_NAMESPACE = "query"
#: Lifetime of a query marker, nanoseconds: 0 keeps it until the next answer replaces it.
MARKER_LIFETIME_NS = 0
#: Orientation (x, y, z, w) of every box: instances are boxes along the map axes.
IDENTITY_XYZW: Rgba = (0.0, 0.0, 0.0, 1.0)


class PointFieldType(IntEnum):
    """``sensor_msgs/PointField`` datatype codes (the message definition's constants)."""

    INT8 = 1
    UINT8 = 2
    INT16 = 3
    UINT16 = 4
    INT32 = 5
    UINT32 = 6
    FLOAT32 = 7
    FLOAT64 = 8


#: NumPy type (without byte order) of each PointField datatype, to read clouds of any layout.
POINTFIELD_DTYPES: dict[int, str] = {
    PointFieldType.INT8: "i1",
    PointFieldType.UINT8: "u1",
    PointFieldType.INT16: "i2",
    PointFieldType.UINT16: "u2",
    PointFieldType.INT32: "i4",
    PointFieldType.UINT32: "u4",
    PointFieldType.FLOAT32: "f4",
    PointFieldType.FLOAT64: "f8",
}


class MarkerType(IntEnum):
    """``visualization_msgs/Marker`` types the query markers use."""

    ARROW = 0  # the message's default; what a DELETEALL marker carries
    CUBE = 1
    TEXT_VIEW_FACING = 9


class MarkerAction(IntEnum):
    """``visualization_msgs/Marker`` actions the query markers use."""

    ADD = 0
    DELETEALL = 3


# --------------------------------------------------------------------------- labelled cloud

#: One point of the output clouds: the field names, types and order the node publishes.
CLOUD_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<u4"), ("score", "<f4")]
)


@dataclass(frozen=True)
class CloudField:
    """One ``sensor_msgs/PointField`` of the output clouds."""

    name: str
    #: Byte offset in the point.
    offset: int
    #: :class:`PointFieldType` code.
    datatype: int
    #: Little-endian NumPy type of the field (``"<f4"``).
    dtype: str
    count: int = 1


_FIELD_TYPES = {"<f4": PointFieldType.FLOAT32, "<u4": PointFieldType.UINT32}
#: The output clouds' fields, in :data:`CLOUD_DTYPE` order.
CLOUD_FIELDS: tuple[CloudField, ...] = tuple(
    CloudField(name=name, offset=int(offset), datatype=int(_FIELD_TYPES[dt.str]), dtype=dt.str)
    for name, (dt, offset, *_) in (CLOUD_DTYPE.fields or {}).items()
)


def pack_rgb(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(N,) float32 whose bits are 0x00RRGGBB for (N, 3) uint8 colours."""
    c = np.asarray(rgb, dtype=np.uint32)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    return packed.astype("<u4").view("<f4")


def unpack_rgb(packed: NDArray[np.generic]) -> NDArray[np.uint8]:
    """(N, 3) uint8 RGB of a packed (N,) float32 or uint32 ``rgb``/``rgba`` field."""
    bits = np.ascontiguousarray(packed).view(np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=1).astype(
        np.uint8
    )


def cloud_record(
    points_m: NDArray[np.floating],
    *,
    rgb: NDArray[np.uint8] | None = None,
    labels: NDArray[np.integer] | None = None,
    scores: NDArray[np.floating] | None = None,
) -> NDArray[np.void]:
    """(N,) structured array of :data:`CLOUD_DTYPE`: the bytes of a PointCloud2's ``data``.

    ``points_m`` (N, 3); ``rgb`` (N, 3) uint8 (default grey), ``labels`` (N,) in uint32 range
    (default 0), ``scores`` (N,) (default 0). Wrong shapes raise :class:`InputError`.
    """
    pts = np.asarray(points_m)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError("bad_points_array", f"need (N, 3), got {pts.shape}")
    n = pts.shape[0]
    for name, value, shape in (("rgb", rgb, (n, 3)), ("labels", labels, (n,)),
                               ("scores", scores, (n,))):  # fmt: skip
        if value is not None and np.shape(value) != shape:
            raise InputError("cloud_size_mismatch", f"{name} {np.shape(value)} for {n} points")
    if labels is not None and n and (int(np.min(labels)) < 0 or int(np.max(labels)) > 2**32 - 1):
        raise InputError("bad_labels", "labels must fit in uint32")
    rec = np.empty(n, dtype=CLOUD_DTYPE)
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    rec["rgb"] = pack_rgb(np.full((n, 3), DEFAULT_GREY, np.uint8) if rgb is None else rgb)
    rec["label"] = 0 if labels is None else labels
    rec["score"] = 0.0 if scores is None else scores
    return rec


@dataclass(frozen=True)
class CloudContent:
    """Every field of a ``sensor_msgs/PointCloud2`` but its header."""

    height: int
    width: int
    fields: tuple[CloudField, ...]
    is_bigendian: bool
    point_step: int
    row_step: int
    #: The points' bytes, ``point_step`` each.
    data: bytes
    #: No point has a non-finite coordinate.
    is_dense: bool


def labelled_cloud(
    points_m: NDArray[np.floating],
    *,
    rgb: NDArray[np.uint8] | None = None,
    labels: NDArray[np.integer] | None = None,
    scores: NDArray[np.floating] | None = None,
) -> CloudContent:
    """The unorganised cloud of the columns of :func:`cloud_record`, all six fields written.

    Every cloud has the one layout so rviz can colour any of them by ``rgb`` or ``label``.
    """
    rec = cloud_record(points_m, rgb=rgb, labels=labels, scores=scores)
    n = rec.shape[0]
    return CloudContent(
        height=1,
        width=n,
        fields=CLOUD_FIELDS,
        is_bigendian=False,
        point_step=CLOUD_DTYPE.itemsize,
        row_step=CLOUD_DTYPE.itemsize * n,
        data=rec.tobytes(),
        is_dense=bool(np.all(np.isfinite(np.asarray(points_m)))),
    )


# --------------------------------------------------------------------------- query instances


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


@dataclass(frozen=True)
class InstanceContent:
    """One answered object as the outputs carry it (``diff2scene_interfaces/Instance``)."""

    label: str
    score: float
    #: Centre of the axis-aligned box, map frame.
    centroid_m: Vec3
    #: Extent of the box along the map axes.
    box_size_m: Vec3
    #: Map points (voxels) in the instance.
    point_count: int


def _xyz(value: Sequence[float] | NDArray[np.floating], name: str) -> Vec3:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise InputError("bad_instance", f"{name} must be 3 finite numbers, got {value!r}")
    return float(v[0]), float(v[1]), float(v[2])


def instance_contents(instances: Sequence[InstanceLike]) -> list[InstanceContent]:
    """The contents of query instances, in the given order.

    A centroid or box size that is not 3 finite numbers, a negative box size or a negative
    point count raise ``InputError("bad_instance", ...)``.
    """
    out = []
    for inst in instances:
        centroid = _xyz(inst.centroid_m, "centroid_m")
        size = _xyz(inst.box_size_m, "box_size_m")
        if min(size) < 0 or int(inst.num_points) < 0:
            raise InputError("bad_instance", f"negative box size or point count in {inst!r}")
        out.append(InstanceContent(label=str(inst.label), score=float(inst.score),
                                   centroid_m=centroid, box_size_m=size,
                                   point_count=int(inst.num_points)))  # fmt: skip
    return out


# --------------------------------------------------------------------------- query markers


@dataclass(frozen=True)
class MarkerStyle:
    """How query answers are drawn (the node's defaults)."""

    #: Smallest drawn box edge, metres (a one-voxel instance stays visible).
    min_box_size_m: float = 0.02
    #: Height of the label text, metres; the text floats this far above the box top.
    text_height_m: float = 0.12
    #: Opacity of the boxes.
    box_alpha: float = 0.35


@dataclass(frozen=True)
class MarkerContent:
    """Every field of a ``visualization_msgs/Marker`` the query markers set (others default)."""

    ns: str
    id: int
    #: :class:`MarkerType` code.
    type: int
    #: :class:`MarkerAction` code.
    action: int
    position_m: Vec3
    orientation_xyzw: Rgba
    #: Box edges, metres; a text marker uses only z (the text height).
    scale_m: Vec3
    #: Colour, each channel in [0, 1].
    color_rgba: Rgba
    text: str = ""
    lifetime_ns: int = MARKER_LIFETIME_NS


def query_marker_contents(
    instances: Sequence[InstanceContent],
    *,
    namespace: str = QUERY_NAMESPACE,
    colors: NDArray[np.uint8] | None = None,
    style: MarkerStyle | None = None,
) -> list[MarkerContent]:
    """A DELETEALL, then a box and a "label 0.87" text per instance (ids 1, 2, 3, ...).

    ``colors`` is (N, 3) uint8, one box colour per instance (default :data:`HIGHLIGHT_RGB`).
    """
    if colors is not None and colors.shape != (len(instances), 3):
        raise InputError("bad_marker_colors", f"{colors.shape} for {len(instances)} instances")
    st = style or MarkerStyle()
    markers = [MarkerContent(ns=namespace, id=0, type=MarkerType.ARROW,
                             action=MarkerAction.DELETEALL, position_m=(0.0, 0.0, 0.0),
                             orientation_xyzw=IDENTITY_XYZW, scale_m=(0.0, 0.0, 0.0),
                             color_rgba=(0.0, 0.0, 0.0, 0.0))]  # fmt: skip
    for i, inst in enumerate(instances):
        r, g, b = (int(v) for v in (HIGHLIGHT_RGB if colors is None else colors[i]))
        sx, sy, sz = (max(v, st.min_box_size_m) for v in inst.box_size_m)
        cx, cy, cz = inst.centroid_m
        markers.append(MarkerContent(
            ns=namespace, id=2 * i + 1, type=MarkerType.CUBE, action=MarkerAction.ADD,
            position_m=(cx, cy, cz), orientation_xyzw=IDENTITY_XYZW, scale_m=(sx, sy, sz),
            color_rgba=(r / 255.0, g / 255.0, b / 255.0, float(st.box_alpha)),
        ))  # fmt: skip
        markers.append(MarkerContent(
            ns=namespace, id=2 * i + 2, type=MarkerType.TEXT_VIEW_FACING,
            action=MarkerAction.ADD,
            # one text line above the box top
            position_m=(cx, cy, cz + sz / 2 + st.text_height_m),
            orientation_xyzw=IDENTITY_XYZW, scale_m=(0.0, 0.0, st.text_height_m),
            color_rgba=TEXT_RGBA, text=f"{inst.label} {inst.score:.2f}",
        ))  # fmt: skip
    return markers


# --------------------------------------------------------------------------- detections


@dataclass(frozen=True)
class DetectionContent:
    """One ``vision_msgs/Detection3D``: a single hypothesis whose pose is the box centre."""

    class_id: str
    score: float
    #: Box centre and hypothesis position, map frame.
    position_m: Vec3
    orientation_xyzw: Rgba
    #: Box extent along the map axes.
    size_m: Vec3


def detection_contents(instances: Sequence[InstanceContent]) -> list[DetectionContent]:
    """One detection per instance, in answer order.

    A non-finite centroid, size or score, or a negative size, raise
    ``InputError("bad_instance", ...)``: a planner must never receive such a box.
    """
    out = []
    for inst in instances:
        values = (*inst.centroid_m, *inst.box_size_m, inst.score)
        if not all(math.isfinite(v) for v in values) or min(inst.box_size_m) < 0:
            raise InputError("bad_instance", f"non-finite value or negative box size in {inst!r}")
        out.append(DetectionContent(class_id=inst.label, score=float(inst.score),
                                    position_m=inst.centroid_m, orientation_xyzw=IDENTITY_XYZW,
                                    size_m=inst.box_size_m))  # fmt: skip
    return out

"""Write the node's outputs (labelled cloud, query markers, query result clouds) to a bag.

Replay writes what a running node would have published into a rosbag2 MCAP bag, so the result
opens in Foxglove, ``ros2 bag play`` or rviz like a recording of the node. The core may not
import ROS message packages, so the messages are ``rosbags`` message objects (Jazzy
typestore) serialised to CDR by ``rosbags``. Their layout is the node's:

* ``sensor_msgs/msg/PointCloud2``, unorganised (height 1), little-endian, fields
  ``x y z`` float32, ``rgb`` float32 whose bits are 0x00RRGGBB (the packed colour rviz and PCL
  read), ``label`` uint32 and ``score`` float32 at offsets 0, 4, 8, 12, 16, 20 (point step 24);
* ``visualization_msgs/msg/MarkerArray``: a DELETEALL for the namespace first (an answer
  replaces the previous one instead of leaving stale boxes), then per instance a translucent
  CUBE at its centroid, at least ``min_box_size_m`` wide, and a TEXT_VIEW_FACING
  "label 0.87" one text line above the box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import DataFormatError, InputError

__all__ = [
    "CLOUD_DTYPE",
    "HIGHLIGHT_RGB",
    "UNKNOWN_LABEL",
    "MarkerStyle",
    "ResultBagWriter",
    "cloud_record",
    "pack_rgb",
]

#: One point of the output clouds: the field names, types and order the node publishes.
CLOUD_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<u4"), ("score", "<f4")]
)
#: ``label`` of a voxel without a class (too little evidence), as the node publishes it.
UNKNOWN_LABEL = 0xFFFFFFFF
#: Colour of query boxes (orange, like a highlight), as the node draws them.
HIGHLIGHT_RGB = (255, 140, 0)
#: Grey of points given no colour.
_DEFAULT_GREY = 200


def pack_rgb(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(N,) float32 whose bits are 0x00RRGGBB for (N, 3) uint8 colours."""
    c = np.asarray(rgb, dtype=np.uint32)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    return packed.astype("<u4").view("<f4")


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
    rec["rgb"] = pack_rgb(np.full((n, 3), _DEFAULT_GREY, np.uint8) if rgb is None else rgb)
    rec["label"] = 0 if labels is None else labels
    rec["score"] = 0.0 if scores is None else scores
    return rec


class InstanceLike(Protocol):
    """What a marker needs of a query instance (``diff2scene.query.instances.Instance``)."""

    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def centroid_m(self) -> NDArray[np.floating]: ...
    @property
    def box_size_m(self) -> NDArray[np.floating]: ...


@dataclass(frozen=True)
class MarkerStyle:
    """How query answers are drawn (the node's defaults)."""

    #: Smallest drawn box edge, metres (a one-voxel instance stays visible).
    min_box_size_m: float = 0.02
    #: Height of the label text, metres; the text floats this far above the box top.
    text_height_m: float = 0.12
    #: Opacity of the boxes.
    box_alpha: float = 0.35


#: Topic → message type of everything :class:`ResultBagWriter` writes.
_CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
_MARKERS_TYPE = "visualization_msgs/msg/MarkerArray"
_STRING_TYPE = "std_msgs/msg/String"


class ResultBagWriter:
    """A new rosbag2 MCAP bag of clouds, marker arrays and texts; use as a context manager.

    Topics are created on their first message. Raises :class:`DataFormatError` if ``path``
    exists (bags are never overwritten).
    """

    def __init__(self, path: str | Path, *, frame_id: str = "map") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if self.path.exists():
            raise DataFormatError(f"{self.path} exists already; not overwriting a bag")
        self.frame_id = frame_id
        self._store = get_typestore(Stores.ROS2_JAZZY)
        #: Message classes by type name (Any: rosbags generates them at run time).
        self._t: Mapping[str, Any] = self._store.types
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._connections: dict[str, Any] = {}
        #: Messages written per topic.
        self.counts: dict[str, int] = {}

    def __enter__(self) -> ResultBagWriter:
        self._writer.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._writer.close()

    # ------------------------------------------------------------------ messages

    def _header(self, stamp_ns: int) -> Any:
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return self._t["std_msgs/msg/Header"](
            stamp=self._t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
            frame_id=self.frame_id,
        )

    def _write(self, topic: str, msgtype: str, stamp_ns: int, msg: Any) -> None:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self._store)
            self._connections[topic] = conn
        self._writer.write(conn, int(stamp_ns), self._store.serialize_cdr(msg, msgtype))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write_cloud(
        self,
        topic: str,
        stamp_ns: int,
        points_m: NDArray[np.floating],
        *,
        rgb: NDArray[np.uint8] | None = None,
        labels: NDArray[np.integer] | None = None,
        scores: NDArray[np.floating] | None = None,
    ) -> None:
        """A PointCloud2 of (N, 3) ``points_m`` with the columns of :func:`cloud_record`."""
        rec = cloud_record(points_m, rgb=rgb, labels=labels, scores=scores)
        field_type = self._t["sensor_msgs/msg/PointField"]
        codes = {"<f4": field_type.FLOAT32, "<u4": field_type.UINT32}
        layout: Mapping[str, tuple[Any, ...]] = CLOUD_DTYPE.fields or {}
        fields = [
            field_type(name=name, offset=int(spec[1]), datatype=codes[spec[0].str], count=1)
            for name, spec in layout.items()
        ]
        pts = np.asarray(points_m)
        msg = self._t[_CLOUD_TYPE](
            header=self._header(stamp_ns),
            height=1,
            width=rec.shape[0],
            fields=fields,
            is_bigendian=False,
            point_step=CLOUD_DTYPE.itemsize,
            row_step=CLOUD_DTYPE.itemsize * rec.shape[0],
            data=np.frombuffer(rec.tobytes(), dtype=np.uint8),
            is_dense=bool(np.all(np.isfinite(pts))),
        )
        self._write(topic, _CLOUD_TYPE, stamp_ns, msg)

    def write_markers(
        self,
        topic: str,
        stamp_ns: int,
        instances: Sequence[InstanceLike],
        *,
        namespace: str = "query",
        style: MarkerStyle | None = None,
    ) -> None:
        """A MarkerArray drawing ``instances`` as boxes with "label score" texts."""
        st = style or MarkerStyle()
        t = self._t
        header = self._header(stamp_ns)
        marker, vec, point = (t["visualization_msgs/msg/Marker"], t["geometry_msgs/msg/Vector3"],
                              t["geometry_msgs/msg/Point"])  # fmt: skip
        color, pose, quat = (t["std_msgs/msg/ColorRGBA"], t["geometry_msgs/msg/Pose"],
                             t["geometry_msgs/msg/Quaternion"])  # fmt: skip
        duration = t["builtin_interfaces/msg/Duration"](sec=0, nanosec=0)

        def make(
            marker_id: int, kind: int, action: int, *, position: Any, scale: Any, rgba: Any,
            text: str = "",
        ) -> Any:
            return marker(
                header=header, ns=namespace, id=marker_id, type=kind, action=action,
                pose=pose(position=position, orientation=quat(x=0.0, y=0.0, z=0.0, w=1.0)),
                scale=scale, color=rgba, lifetime=duration, frame_locked=False, points=[],
                colors=[], texture_resource="",
                texture=t["sensor_msgs/msg/CompressedImage"](
                    header=t["std_msgs/msg/Header"](
                        stamp=t["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""
                    ),
                    format="", data=np.zeros(0, np.uint8),
                ),
                uv_coordinates=[], text=text, mesh_resource="",
                mesh_file=t["visualization_msgs/msg/MeshFile"](
                    filename="", data=np.zeros(0, np.uint8)
                ),
                mesh_use_embedded_materials=False,
            )  # fmt: skip

        origin = point(x=0.0, y=0.0, z=0.0)
        none = color(r=0.0, g=0.0, b=0.0, a=0.0)
        markers = [make(0, 0, marker.DELETEALL, position=origin,
                        scale=vec(x=0.0, y=0.0, z=0.0), rgba=none)]  # fmt: skip
        r, g, b = (v / 255.0 for v in HIGHLIGHT_RGB)
        for i, inst in enumerate(instances):
            c = _xyz(inst.centroid_m, "centroid_m")
            size = [max(v, st.min_box_size_m) for v in _xyz(inst.box_size_m, "box_size_m")]
            markers.append(make(
                2 * i + 1, marker.CUBE, marker.ADD, position=point(x=c[0], y=c[1], z=c[2]),
                scale=vec(x=size[0], y=size[1], z=size[2]),
                rgba=color(r=r, g=g, b=b, a=st.box_alpha),
            ))  # fmt: skip
            lift_z = c[2] + size[2] / 2 + st.text_height_m
            markers.append(make(
                2 * i + 2, marker.TEXT_VIEW_FACING, marker.ADD,
                position=point(x=c[0], y=c[1], z=lift_z),
                scale=vec(x=0.0, y=0.0, z=st.text_height_m),
                rgba=color(r=1.0, g=1.0, b=1.0, a=1.0),
                text=f"{inst.label} {float(inst.score):.2f}",
            ))  # fmt: skip
        msg = t[_MARKERS_TYPE](markers=markers)
        self._write(topic, _MARKERS_TYPE, stamp_ns, msg)

    def write_text(self, topic: str, stamp_ns: int, text: str) -> None:
        """A ``std_msgs/msg/String`` (e.g. the query a result cloud answers)."""
        self._write(topic, _STRING_TYPE, stamp_ns, self._t[_STRING_TYPE](data=text))


def _xyz(value: NDArray[np.floating] | Sequence[float], name: str) -> tuple[float, float, float]:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise InputError("bad_instance", f"{name} must be 3 finite numbers, got {value!r}")
    return float(v[0]), float(v[1]), float(v[2])

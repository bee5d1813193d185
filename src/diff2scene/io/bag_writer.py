"""Write the node's outputs (labelled cloud, query markers, query result clouds) to a bag.

Replay writes what a running node would have published into a rosbag2 MCAP bag, so the result
opens in Foxglove, ``ros2 bag play`` or rviz like a recording of the node. The core may not
import ROS message packages, so the messages are ``rosbags`` message objects (Jazzy
typestore) serialised to CDR by ``rosbags``. Their content — the cloud's fields and bytes, the
markers — is built by :mod:`diff2scene.io.output_layout`, the same builder the node's rclpy
conversions use; this module only copies it into ``rosbags`` messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import DataFormatError
from diff2scene.io import output_layout as layout
from diff2scene.io.output_layout import (
    CLOUD_DTYPE,
    HIGHLIGHT_RGB,
    QUERY_NAMESPACE,
    UNKNOWN_LABEL,
    InstanceLike,
    MarkerStyle,
    cloud_record,
    pack_rgb,
)

__all__ = [
    "CLOUD_DTYPE",
    "CLOUD_TOPIC",
    "HIGHLIGHT_RGB",
    "MARKERS_TOPIC",
    "QUERY_CLOUD_TOPIC",
    "QUERY_TEXT_TOPIC",
    "UNKNOWN_LABEL",
    "InstanceLike",
    "MarkerStyle",
    "ResultBagWriter",
    "cloud_record",
    "pack_rgb",
]

#: Topics of a replay's output bag: the node's output names under its default node name.
CLOUD_TOPIC = "/diff2scene/labelled_cloud"
MARKERS_TOPIC = "/diff2scene/query_markers"
QUERY_CLOUD_TOPIC = "/diff2scene/query_cloud"
QUERY_TEXT_TOPIC = "/diff2scene/query_text"

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
        c = layout.labelled_cloud(points_m, rgb=rgb, labels=labels, scores=scores)
        field_type = self._t["sensor_msgs/msg/PointField"]
        msg = self._t[_CLOUD_TYPE](
            header=self._header(stamp_ns),
            height=c.height,
            width=c.width,
            fields=[
                field_type(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                for f in c.fields
            ],
            is_bigendian=c.is_bigendian,
            point_step=c.point_step,
            row_step=c.row_step,
            data=np.frombuffer(c.data, dtype=np.uint8),
            is_dense=c.is_dense,
        )
        self._write(topic, _CLOUD_TYPE, stamp_ns, msg)

    def write_markers(
        self,
        topic: str,
        stamp_ns: int,
        instances: Sequence[InstanceLike],
        *,
        namespace: str = QUERY_NAMESPACE,
        style: MarkerStyle | None = None,
    ) -> None:
        """A MarkerArray drawing ``instances`` as boxes with "label score" texts.

        Bad instance geometry raises ``InputError("bad_instance", ...)``.
        """
        contents = layout.query_marker_contents(
            layout.instance_contents(instances), namespace=namespace, style=style
        )
        header = self._header(stamp_ns)
        msg = self._t[_MARKERS_TYPE](markers=[self._marker(header, m) for m in contents])
        self._write(topic, _MARKERS_TYPE, stamp_ns, msg)

    def _marker(self, header: Any, m: layout.MarkerContent) -> Any:
        """A ``rosbags`` Marker of ``m``; the fields query markers leave alone are empty."""
        t = self._t
        (px, py, pz), (qx, qy, qz, qw) = m.position_m, m.orientation_xyzw
        (sx, sy, sz), (r, g, b, a) = m.scale_m, m.color_rgba
        sec, nanosec = divmod(m.lifetime_ns, 1_000_000_000)
        empty = np.zeros(0, np.uint8)
        return t["visualization_msgs/msg/Marker"](
            header=header, ns=m.ns, id=m.id, type=int(m.type), action=int(m.action),
            pose=t["geometry_msgs/msg/Pose"](
                position=t["geometry_msgs/msg/Point"](x=px, y=py, z=pz),
                orientation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
            ),
            scale=t["geometry_msgs/msg/Vector3"](x=sx, y=sy, z=sz),
            color=t["std_msgs/msg/ColorRGBA"](r=r, g=g, b=b, a=a),
            lifetime=t["builtin_interfaces/msg/Duration"](sec=sec, nanosec=nanosec),
            frame_locked=False, points=[], colors=[], texture_resource="",
            texture=t["sensor_msgs/msg/CompressedImage"](
                header=t["std_msgs/msg/Header"](
                    stamp=t["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""
                ),
                format="", data=empty,
            ),
            uv_coordinates=[], text=m.text, mesh_resource="",
            mesh_file=t["visualization_msgs/msg/MeshFile"](filename="", data=empty),
            mesh_use_embedded_materials=False,
        )  # fmt: skip

    def write_text(self, topic: str, stamp_ns: int, text: str) -> None:
        """A ``std_msgs/msg/String`` (e.g. the query a result cloud answers)."""
        self._write(topic, _STRING_TYPE, stamp_ns, self._t[_STRING_TYPE](data=text))

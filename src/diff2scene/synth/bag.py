"""Synthetic frames written as a ROS 2 bag (MCAP) with the topics a RealSense-style driver uses.

Writing through ``rosbags`` needs no ROS install, and the result plays back with ``ros2 bag
play`` on a robot, so the same file drives offline tests, the bag frame source and a live node.
Ground truth rides along on its own topic (``/camera/instance/image_raw``, 32SC1 instance ids);
the class/colour tables and labelled point cloud live in the sidecar files of
:mod:`diff2scene.synth.groundtruth`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from diff2scene.errors import DataFormatError
from diff2scene.types import CameraIntrinsics, Frame

#: Frame id of every image and of the camera pose (REP-103 optical convention).
CAMERA_FRAME = "camera_color_optical_frame"
#: World frame of the poses and TF.
WORLD_FRAME = "map"


@dataclass
class BagTopics:
    """Topic names of a synthetic bag (the defaults match ``BagSourceConfig``)."""

    #: sensor_msgs/Image, rgb8.
    color: str = "/camera/color/image_raw"
    #: sensor_msgs/Image, 16UC1 millimetres (0 = no return), registered to the colour camera.
    depth: str = "/camera/depth/image_rect_raw"
    #: sensor_msgs/CameraInfo of the colour camera (plumb_bob, zero distortion).
    camera_info: str = "/camera/color/camera_info"
    #: geometry_msgs/PoseStamped, pose of the optical frame in ``map``.
    pose: str = "/camera/pose"
    #: tf2_msgs/TFMessage with map → camera_color_optical_frame.
    tf: str = "/tf"
    #: sensor_msgs/Image, 32SC1 ground-truth instance id per pixel (0 = none).
    instance: str = "/camera/instance/image_raw"


@dataclass
class BagStats:
    """What was written."""

    path: Path
    frames: int = 0
    #: Messages per topic.
    messages: dict[str, int] = field(default_factory=dict)


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


class _Messages:
    """Builds Jazzy message objects from arrays (kept apart from I/O so it can be reused)."""

    def __init__(self, typestore: Any) -> None:
        t = typestore.types
        self.Time = t["builtin_interfaces/msg/Time"]
        self.Header = t["std_msgs/msg/Header"]
        self.Image = t["sensor_msgs/msg/Image"]
        self.CameraInfo = t["sensor_msgs/msg/CameraInfo"]
        self.RegionOfInterest = t["sensor_msgs/msg/RegionOfInterest"]
        self.PoseStamped = t["geometry_msgs/msg/PoseStamped"]
        self.Pose = t["geometry_msgs/msg/Pose"]
        self.Point = t["geometry_msgs/msg/Point"]
        self.Quaternion = t["geometry_msgs/msg/Quaternion"]
        self.Vector3 = t["geometry_msgs/msg/Vector3"]
        self.Transform = t["geometry_msgs/msg/Transform"]
        self.TransformStamped = t["geometry_msgs/msg/TransformStamped"]
        self.TFMessage = t["tf2_msgs/msg/TFMessage"]

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return self.Header(stamp=self.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def image(self, stamp_ns: int, array: NDArray[Any], encoding: str) -> Any:
        """Image from an (H, W[, C]) little-endian array; ``step`` = bytes per row."""
        array = np.ascontiguousarray(array)
        height, width = array.shape[:2]
        data = array.view(np.uint8).reshape(-1)
        return self.Image(
            header=self.header(stamp_ns, CAMERA_FRAME),
            height=height,
            width=width,
            encoding=encoding,
            is_bigendian=0,
            step=data.size // height,
            data=data,
        )

    def camera_info(self, stamp_ns: int, intr: CameraIntrinsics) -> Any:
        k = intr.matrix()
        p = np.zeros((3, 4))
        p[:, :3] = k
        return self.CameraInfo(
            header=self.header(stamp_ns, CAMERA_FRAME),
            height=intr.height,
            width=intr.width,
            distortion_model="plumb_bob",
            d=np.zeros(5, dtype=np.float64),
            k=k.reshape(-1),
            r=np.eye(3).reshape(-1),
            p=p.reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=self.RegionOfInterest(
                x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
            ),
        )

    def pose_stamped(self, stamp_ns: int, T: NDArray[np.float64]) -> Any:
        qx, qy, qz, qw = Rotation.from_matrix(T[:3, :3]).as_quat()
        pose = self.Pose(
            position=self.Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            orientation=self.Quaternion(x=float(qx), y=float(qy), z=float(qz), w=float(qw)),
        )
        return self.PoseStamped(header=self.header(stamp_ns, WORLD_FRAME), pose=pose)

    def tf(self, stamp_ns: int, T: NDArray[np.float64]) -> Any:
        qx, qy, qz, qw = Rotation.from_matrix(T[:3, :3]).as_quat()
        transform = self.TransformStamped(
            header=self.header(stamp_ns, WORLD_FRAME),
            child_frame_id=CAMERA_FRAME,
            transform=self.Transform(
                translation=self.Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                rotation=self.Quaternion(x=float(qx), y=float(qy), z=float(qz), w=float(qw)),
            ),
        )
        return self.TFMessage(transforms=[transform])


def depth_to_mm(depth_m: NDArray[np.float32]) -> NDArray[np.uint16]:
    """(H, W) metres → uint16 millimetres; 0 (missing) and out-of-range values become 0."""
    mm = np.round(np.nan_to_num(depth_m, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0)
    return np.where((mm > 0) & (mm <= 65535), mm, 0).astype("<u2")


def write_bag(
    path: str | Path,
    frames: Iterable[Frame],
    *,
    topics: BagTopics | None = None,
    compress: bool = True,
    progress: Callable[[int], None] | None = None,
) -> BagStats:
    """Write ``frames`` to a new rosbag2 directory ``path`` (MCAP storage).

    ``compress`` turns on MCAP's zstd chunk compression (instance and depth images shrink
    several-fold; every rosbags/ROS 2 reader handles it). Frames are consumed one at a time,
    so memory stays bounded by one frame however long the sequence. Raises
    :class:`DataFormatError` if ``path`` exists, or a frame lacks ground-truth instances.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    path = Path(path)
    if path.exists():
        raise DataFormatError(f"bag already exists: {path}")
    topics = topics or BagTopics()
    typestore = _typestore()
    msgs = _Messages(typestore)
    stats = BagStats(path=path)
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conns = {
            name: writer.add_connection(topic, msgtype, typestore=typestore)
            for name, topic, msgtype in (
                ("camera_info", topics.camera_info, "sensor_msgs/msg/CameraInfo"),
                ("pose", topics.pose, "geometry_msgs/msg/PoseStamped"),
                ("tf", topics.tf, "tf2_msgs/msg/TFMessage"),
                ("color", topics.color, "sensor_msgs/msg/Image"),
                ("depth", topics.depth, "sensor_msgs/msg/Image"),
                ("instance", topics.instance, "sensor_msgs/msg/Image"),
            )
        }
        stats.messages = {conn.topic: 0 for conn in conns.values()}

        def put(name: str, stamp_ns: int, msg: Any) -> None:
            conn = conns[name]
            writer.write(conn, stamp_ns, typestore.serialize_cdr(msg, conn.msgtype))
            stats.messages[conn.topic] += 1

        for frame in frames:
            if frame.instance_ids is None:
                raise DataFormatError(f"frame {frame.index} has no ground-truth instance ids")
            stamp = frame.stamp_ns
            put("camera_info", stamp, msgs.camera_info(stamp, frame.intrinsics))
            put("pose", stamp, msgs.pose_stamped(stamp, frame.T_world_camera))
            put("tf", stamp, msgs.tf(stamp, frame.T_world_camera))
            # Ground truth before the images: a streaming reader that completes a frame when
            # its colour/depth pair is in then finds the instance image already there.
            put("instance", stamp, msgs.image(stamp, frame.instance_ids.astype("<i4"), "32SC1"))
            put("color", stamp, msgs.image(stamp, frame.rgb, "rgb8"))
            put("depth", stamp, msgs.image(stamp, depth_to_mm(frame.depth_m), "16UC1"))
            stats.frames += 1
            if progress is not None:
                progress(stats.frames)
    return stats

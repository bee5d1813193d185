"""Synthetic frames written as a ROS 2 bag (MCAP) with the topics a RealSense-style driver uses.

Writing through ``rosbags`` needs no ROS install, and the result plays back with ``ros2 bag
play`` on a robot, so the same file drives offline tests, the bag frame source and a live node.
Ground truth rides along on its own topic (``/camera/instance/image_raw``, 32SC1 instance ids);
the class/colour tables and labelled point cloud live in the sidecar files of
:mod:`diff2scene.synth.groundtruth`.

Two layouts (:data:`LAYOUTS`): ``default`` writes raw images with the pose as a PoseStamped
and one map → camera transform on ``/tf``; ``realsense`` writes what a robot with realsense-ros
4.x records through image_transport — JPEG colour on ``…/color/image_raw/compressed``,
``compressedDepth`` PNG aligned depth, and the pose only as a TF tree (map → odom →
base_link on ``/tf``, base_link → camera_link → optical frame on ``/tf_static``) — so a replay
of a user's first bag can be tested against a raw recording of the very same frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.io.compressed import encode_compressed_color, encode_compressed_depth
from diff2scene.types import CameraIntrinsics, Frame

#: Frame id of every image and of the camera pose (REP-103 optical convention).
CAMERA_FRAME = "camera_color_optical_frame"
#: World frame of the poses and TF.
WORLD_FRAME = "map"
#: The robot frames of the ``robot`` TF tree (REP-105, realsense-ros naming).
ODOM_FRAME = "odom"
BASE_FRAME = "base_link"
CAMERA_LINK_FRAME = "camera_link"
#: Topic of the static transforms (latched when played back).
TF_STATIC_TOPIC = "/tf_static"


def _rigid(xyz: tuple[float, float, float], quat_xyzw: tuple[float, float, float, float]
           ) -> NDArray[np.float64]:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(quat_xyzw).as_matrix()
    T[:3, 3] = xyz
    return T


#: Fixed links of the ``robot`` tree. None is the identity, so a reader that drops or inverts
#: a link gets a visibly wrong pose. map → odom: where localisation put the odometry origin.
T_MAP_ODOM = _rigid((0.35, -0.2, 0.0), tuple(Rotation.from_euler("z", 12, degrees=True).as_quat()))
#: base_link → camera_link: the camera mounted 0.9 m up, 0.12 m ahead (x forward, z up).
T_BASE_CAMERA_LINK = _rigid((0.12, 0.0, 0.9), (0.0, 0.0, 0.0, 1.0))
#: camera_link → camera_color_optical_frame: the colour imager 15 mm left of the link, and the
#: optical convention (z forward, x right, y down) as realsense-ros publishes it.
T_CAMERA_LINK_OPTICAL = _rigid((0.0, 0.015, 0.0), (-0.5, 0.5, -0.5, 0.5))


@dataclass
class BagTopics:
    """Topic names and transports of a synthetic bag (the defaults match ``BagSourceConfig``)."""

    #: sensor_msgs/Image, rgb8 (the base name of image_transport's ``compressed`` topic).
    color: str = "/camera/color/image_raw"
    #: sensor_msgs/Image, 16UC1 millimetres (0 = no return), registered to the colour camera
    #: (the base name of image_transport's ``compressedDepth`` topic).
    depth: str = "/camera/depth/image_rect_raw"
    #: sensor_msgs/CameraInfo of the colour camera (plumb_bob, zero distortion).
    camera_info: str = "/camera/color/camera_info"
    #: geometry_msgs/PoseStamped, pose of the optical frame in ``map`` ("" = none: TF only).
    pose: str = "/camera/pose"
    #: tf2_msgs/TFMessage with the dynamic transforms of ``tf_tree``.
    tf: str = "/tf"
    #: sensor_msgs/Image, 32SC1 ground-truth instance id per pixel (0 = none); "" = no
    #: ground-truth images (frames may then lack ``instance_ids``).
    instance: str = "/camera/instance/image_raw"
    #: A second CameraInfo beside the depth image ("" = none); realsense-ros publishes one
    #: for its aligned depth (the colour calibration, since the depth is aligned to colour).
    depth_camera_info: str = ""
    #: "raw" (Image on ``color``) or "compressed" (image_transport's CompressedImage, JPEG,
    #: on ``<color>/compressed``).
    color_transport: Literal["raw", "compressed"] = "raw"
    #: "raw" (Image on ``depth``) or "compressedDepth" (16UC1 PNG with the plugin's config
    #: header, on ``<depth>/compressedDepth``).
    depth_transport: Literal["raw", "compressedDepth"] = "raw"
    #: JPEG quality of compressed colour (image_transport's default).
    jpeg_quality: int = 95
    #: zlib level of compressedDepth PNGs. The plugin's default is 9; 1 writes several times
    #: faster and the decoded pixels are the same (PNG is lossless).
    depth_png_level: int = 1
    #: "camera": one map → optical-frame transform per frame on ``tf``. "robot": map → odom
    #: → base_link per frame on ``tf`` and base_link → camera_link → optical frame once on
    #: ``/tf_static``, as a robot with a mounted camera driver publishes them.
    tf_tree: Literal["camera", "robot"] = "camera"

    def __post_init__(self) -> None:
        checks = {
            "color_transport": self.color_transport in ("raw", "compressed"),
            "depth_transport": self.depth_transport in ("raw", "compressedDepth"),
            "tf_tree": self.tf_tree in ("camera", "robot"),
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
            "depth_png_level": 0 <= self.depth_png_level <= 9,
            "tf": bool(self.tf),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"BagTopics: invalid {', '.join(bad)} in {self}")

    @property
    def color_wire(self) -> str:
        """The topic the colour images are written to."""
        return f"{self.color}/compressed" if self.color_transport == "compressed" else self.color

    @property
    def depth_wire(self) -> str:
        """The topic the depth images are written to."""
        return (f"{self.depth}/compressedDepth" if self.depth_transport == "compressedDepth"
                else self.depth)


def realsense_topics() -> BagTopics:
    """realsense-ros 4.x (``camera`` namespace and name, ``align_depth.enable:=true``) recorded
    the way robots record it: ``ros2 bag record`` of the image_transport topics — JPEG colour
    and PNG compressedDepth of the aligned depth, both calibrations — and pose only from TF."""
    return BagTopics(
        color="/camera/camera/color/image_raw",
        depth="/camera/camera/aligned_depth_to_color/image_raw",
        camera_info="/camera/camera/color/camera_info",
        depth_camera_info="/camera/camera/aligned_depth_to_color/camera_info",
        pose="",
        color_transport="compressed",
        depth_transport="compressedDepth",
        tf_tree="robot",
    )


#: Bag layouts by name (``diff2scene synth --layout``).
LAYOUTS: dict[str, Callable[[], BagTopics]] = {"default": BagTopics, "realsense": realsense_topics}


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
        self.CompressedImage = t["sensor_msgs/msg/CompressedImage"]
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

    def compressed(self, stamp_ns: int, fmt: str, payload: bytes) -> Any:
        """CompressedImage of an image_transport ``(format, data)`` pair."""
        return self.CompressedImage(
            header=self.header(stamp_ns, CAMERA_FRAME),
            format=fmt,
            data=np.frombuffer(payload, dtype=np.uint8),
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

    def transform(self, stamp_ns: int, parent: str, child: str, T: NDArray[np.float64]) -> Any:
        """TransformStamped ``T_parent_child``."""
        qx, qy, qz, qw = Rotation.from_matrix(T[:3, :3]).as_quat()
        return self.TransformStamped(
            header=self.header(stamp_ns, parent),
            child_frame_id=child,
            transform=self.Transform(
                translation=self.Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                rotation=self.Quaternion(x=float(qx), y=float(qy), z=float(qz), w=float(qw)),
            ),
        )

    def tf(self, stamp_ns: int, T: NDArray[np.float64]) -> Any:
        """TFMessage with map → camera_color_optical_frame."""
        return self.TFMessage(transforms=[self.transform(stamp_ns, WORLD_FRAME, CAMERA_FRAME, T)])

    def robot_tf(self, stamp_ns: int, T_world_camera: NDArray[np.float64]) -> Any:
        """TFMessage with map → odom → base_link such that the static links below base_link
        put the optical frame at ``T_world_camera``."""
        T_odom_base = (np.linalg.inv(T_MAP_ODOM) @ T_world_camera
                       @ np.linalg.inv(T_BASE_CAMERA_LINK @ T_CAMERA_LINK_OPTICAL))
        return self.TFMessage(transforms=[
            self.transform(stamp_ns, WORLD_FRAME, ODOM_FRAME, T_MAP_ODOM),
            self.transform(stamp_ns, ODOM_FRAME, BASE_FRAME, T_odom_base),
        ])

    def robot_tf_static(self, stamp_ns: int) -> Any:
        """TFMessage with base_link → camera_link → camera_color_optical_frame."""
        return self.TFMessage(transforms=[
            self.transform(stamp_ns, BASE_FRAME, CAMERA_LINK_FRAME, T_BASE_CAMERA_LINK),
            self.transform(stamp_ns, CAMERA_LINK_FRAME, CAMERA_FRAME, T_CAMERA_LINK_OPTICAL),
        ])


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

    ``topics`` names the topics and chooses the layout (raw or image_transport images, the
    camera or the robot TF tree; see :data:`LAYOUTS`). ``compress`` turns on MCAP's zstd chunk
    compression (instance and depth images shrink several-fold; every rosbags/ROS 2 reader
    handles it). Frames are consumed one at a time, so memory stays bounded by one frame
    however long the sequence. Raises :class:`DataFormatError` if ``path`` exists, or a frame
    lacks ground-truth instances while ``topics.instance`` names a topic (an empty name writes
    none: recorded sequences, such as imported datasets, have no per-pixel ground truth).
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
    image_type = "sensor_msgs/msg/Image"
    compressed_type = "sensor_msgs/msg/CompressedImage"
    wanted = [
        ("camera_info", topics.camera_info, "sensor_msgs/msg/CameraInfo"),
        ("depth_camera_info", topics.depth_camera_info, "sensor_msgs/msg/CameraInfo"),
        ("pose", topics.pose, "geometry_msgs/msg/PoseStamped"),
        ("tf", topics.tf, "tf2_msgs/msg/TFMessage"),
        ("tf_static", TF_STATIC_TOPIC if topics.tf_tree == "robot" else "",
         "tf2_msgs/msg/TFMessage"),
        ("color", topics.color_wire,
         compressed_type if topics.color_transport == "compressed" else image_type),
        ("depth", topics.depth_wire,
         compressed_type if topics.depth_transport == "compressedDepth" else image_type),
        ("instance", topics.instance, image_type),
    ]
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conns = {
            name: writer.add_connection(topic, msgtype, typestore=typestore)
            for name, topic, msgtype in wanted
            if topic
        }
        stats.messages = {conn.topic: 0 for conn in conns.values()}

        def put(name: str, stamp_ns: int, msg: Any) -> None:
            conn = conns.get(name)
            if conn is None:
                return
            writer.write(conn, stamp_ns, typestore.serialize_cdr(msg, conn.msgtype))
            stats.messages[conn.topic] += 1

        for frame in frames:
            if frame.instance_ids is None and topics.instance:
                raise DataFormatError(f"frame {frame.index} has no ground-truth instance ids")
            stamp = frame.stamp_ns
            if stats.frames == 0:
                put("tf_static", stamp, msgs.robot_tf_static(stamp))
            put("camera_info", stamp, msgs.camera_info(stamp, frame.intrinsics))
            put("depth_camera_info", stamp, msgs.camera_info(stamp, frame.intrinsics))
            put("pose", stamp, msgs.pose_stamped(stamp, frame.T_world_camera))
            if topics.tf_tree == "robot":
                put("tf", stamp, msgs.robot_tf(stamp, frame.T_world_camera))
            else:
                put("tf", stamp, msgs.tf(stamp, frame.T_world_camera))
            # Ground truth before the images: a streaming reader that completes a frame when
            # its colour/depth pair is in then finds the instance image already there.
            if frame.instance_ids is not None:
                put("instance", stamp,
                    msgs.image(stamp, frame.instance_ids.astype("<i4"), "32SC1"))  # fmt: skip
            if topics.color_transport == "compressed":
                fmt, payload = encode_compressed_color(
                    frame.rgb, "jpeg", encoding="rgb8", jpeg_quality=topics.jpeg_quality
                )
                put("color", stamp, msgs.compressed(stamp, fmt, payload))
            else:
                put("color", stamp, msgs.image(stamp, frame.rgb, "rgb8"))
            if topics.depth_transport == "compressedDepth":
                fmt, payload = encode_compressed_depth(
                    frame.depth_m, "16UC1", "png", png_level=topics.depth_png_level
                )
                put("depth", stamp, msgs.compressed(stamp, fmt, payload))
            else:
                put("depth", stamp, msgs.image(stamp, depth_to_mm(frame.depth_m), "16UC1"))
            stats.frames += 1
            if progress is not None:
                progress(stats.frames)
    return stats

"""Frames from a ROS 2 bag (sqlite3 or MCAP), read with ``rosbags`` — no ROS install needed.

The bag is streamed in log order through the same steps a live node takes: decode and
validate each message, pair colour with depth by approximate time, attach the latest camera
intrinsics and the camera pose at the image stamp (from a pose topic or ``/tf``), and hand out
:class:`~diff2scene.types.Frame` objects. Bad messages are skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import DataFormatError, InputError
from diff2scene.io.base import FrameSource
from diff2scene.io.image_codec import decode_color, decode_depth, decode_int_image
from diff2scene.io.sync import ApproximateSync
from diff2scene.io.transforms import T_BODY_OPTICAL, TransformBuffer, pose_to_matrix
from diff2scene.types import CameraIntrinsics, Frame

_LOG = logging.getLogger(__name__)

POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/TransformStamped",
)
TF_TYPE = "tf2_msgs/msg/TFMessage"


@dataclass
class BagSourceConfig:
    """Where the frames are in a bag and how to assemble them."""

    #: Colour image topic (rgb8/bgr8/rgba8/bgra8).
    color_topic: str = "/camera/color/image_raw"
    #: Depth image topic registered to the colour camera (16UC1 mm or 32FC1 m).
    depth_topic: str = "/camera/depth/image_rect_raw"
    #: CameraInfo of the colour camera.
    camera_info_topic: str = "/camera/color/camera_info"
    #: Where the camera pose comes from: a pose topic, TF, or whichever the bag has ("auto").
    pose_source: Literal["auto", "topic", "tf"] = "auto"
    #: PoseStamped / Odometry / TransformStamped topic with the camera pose in the world frame.
    pose_topic: str = "/camera/pose"
    #: Convention of the pose-topic's child frame: "optical" (z forward) or "body" (x forward).
    pose_frame_convention: Literal["optical", "body"] = "optical"
    #: World (map) frame for TF lookups.
    world_frame: str = "map"
    #: Camera frame for TF lookups; empty = the colour image's header frame_id.
    camera_frame: str = ""
    #: Ground-truth instance image topic (synthetic bags); empty = none.
    instance_topic: str = "/camera/instance/image_raw"
    #: Maximum colour/depth stamp difference to pair them, seconds.
    sync_slop_s: float = 0.02
    #: Longest pose gap to interpolate across, seconds.
    max_pose_gap_s: float = 0.5
    #: Frames waiting for a pose before the oldest is dropped.
    max_pending_frames: int = 60
    #: Deliver every n-th synchronised frame (1 = all).
    frame_stride: int = 1
    #: Stop after this many delivered frames (0 = no limit).
    max_frames: int = 0

    def __post_init__(self) -> None:
        if self.sync_slop_s < 0 or self.max_pose_gap_s <= 0:
            raise ValueError("sync_slop_s must be >= 0 and max_pose_gap_s > 0")
        if self.frame_stride < 1 or self.max_frames < 0 or self.max_pending_frames < 1:
            raise ValueError("frame_stride >= 1, max_frames >= 0, max_pending_frames >= 1")


def stamp_to_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def intrinsics_from_camera_info(msg: Any) -> CameraIntrinsics:
    """Pinhole intrinsics from a CameraInfo (``k`` row-major 3×3); rejects unusable ones."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9 or not np.all(np.isfinite(k)):
        raise InputError("bad_camera_info", f"K={k.tolist()}")
    if k[0] <= 0 or k[4] <= 0 or int(msg.width) <= 0 or int(msg.height) <= 0:
        raise InputError("bad_camera_info", f"fx={k[0]} fy={k[4]} size={msg.width}x{msg.height}")
    return CameraIntrinsics(
        width=int(msg.width),
        height=int(msg.height),
        fx=float(k[0]),
        fy=float(k[4]),
        cx=float(k[2]),
        cy=float(k[5]),
    )


def pose_msg_to_matrix(msg: Any, msgtype: str) -> tuple[str, str, int, NDArray[np.float64]]:
    """(parent frame, child frame, stamp_ns, T_parent_child) from a pose-like message."""
    if msgtype == "geometry_msgs/msg/PoseStamped":
        p, q = msg.pose.position, msg.pose.orientation
        child = ""
    elif msgtype == "nav_msgs/msg/Odometry":
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        child = msg.child_frame_id
    elif msgtype == "geometry_msgs/msg/TransformStamped":
        p, q = msg.transform.translation, msg.transform.rotation
        child = msg.child_frame_id
    else:
        raise InputError("bad_pose_type", msgtype)
    T = pose_to_matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
    return msg.header.frame_id, child, stamp_to_ns(msg.header), T


@dataclass
class _Image:
    frame_id: str
    array: NDArray[Any]


class BagFrameSource(FrameSource):
    """Synchronised frames from a rosbag2 directory or file (sqlite3 or MCAP)."""

    #: Child frame name used for poses from a PoseStamped topic (it has no child_frame_id).
    POSE_CHILD = "diff2scene_pose_topic_camera"

    def __init__(self, path: str | Path, config: BagSourceConfig | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.config = config or BagSourceConfig()
        if not self.path.exists():
            raise DataFormatError(f"bag not found: {self.path}")

    def _reader(self) -> Any:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        try:
            reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_JAZZY))
            reader.open()
        except Exception as exc:  # rosbags raises several unrelated types for bad bags
            raise DataFormatError(f"cannot open bag {self.path}: {exc}") from exc
        return reader

    def topics(self) -> dict[str, tuple[str, int]]:
        """topic -> (message type, message count)."""
        reader = self._reader()
        try:
            out: dict[str, tuple[str, int]] = {}
            for conn in reader.connections:
                _, count = out.get(conn.topic, (conn.msgtype, 0))
                out[conn.topic] = (conn.msgtype, count + conn.msgcount)
            return out
        finally:
            reader.close()

    def __iter__(self) -> Iterator[Frame]:
        cfg = self.config
        reader = self._reader()
        try:
            yield from self._frames(reader, cfg)
        finally:
            reader.close()

    def _pose_mode(self, topics: dict[str, str]) -> str:
        cfg = self.config
        if cfg.pose_source != "auto":
            return cfg.pose_source
        if topics.get(cfg.pose_topic) in POSE_TYPES:
            return "topic"
        if "/tf" in topics or "/tf_static" in topics:
            return "tf"
        raise DataFormatError(
            f"{self.path}: no pose source: neither {cfg.pose_topic!r} (pose topic) nor /tf found"
        )

    def _frames(self, reader: Any, cfg: BagSourceConfig) -> Iterator[Frame]:
        stats = self.stats
        topics = {c.topic: c.msgtype for c in reader.connections}
        for needed in (cfg.color_topic, cfg.depth_topic, cfg.camera_info_topic):
            if needed not in topics:
                raise DataFormatError(
                    f"{self.path}: topic {needed!r} missing; has {sorted(topics)}"
                )
        mode = self._pose_mode(topics)
        wanted = {cfg.color_topic, cfg.depth_topic, cfg.camera_info_topic}
        if mode == "topic":
            wanted.add(cfg.pose_topic)
        else:
            wanted |= {"/tf", "/tf_static"} & set(topics)
        has_instances = bool(cfg.instance_topic) and cfg.instance_topic in topics
        if has_instances:
            wanted.add(cfg.instance_topic)
        connections = [c for c in reader.connections if c.topic in wanted]

        tf = TransformBuffer(max_interpolation_gap_ns=int(cfg.max_pose_gap_s * 1e9))
        sync: ApproximateSync[_Image, _Image] = ApproximateSync(
            slop_ns=int(cfg.sync_slop_s * 1e9), stats=stats
        )
        intrinsics: CameraIntrinsics | None = None
        instances: deque[tuple[int, NDArray[np.int32]]] = deque(maxlen=64)
        pending: deque[tuple[int, _Image, _Image, CameraIntrinsics]] = deque()
        latest_pose_ns = -1
        latest_instance_ns = -1
        last_color_ns = -1
        last_delivered_ns = -1
        n_synced = 0

        def resolve(final: bool) -> Iterator[Frame]:
            nonlocal last_delivered_ns, n_synced
            while pending:
                stamp, color, depth, K = pending[0]
                waiting = stamp > latest_pose_ns or (has_instances and stamp > latest_instance_ns)
                if not final and waiting and len(pending) <= cfg.max_pending_frames:
                    return  # its pose (or ground-truth image) may still arrive
                pending.popleft()
                try:
                    T = self._camera_pose(tf, mode, color.frame_id, stamp)
                except InputError as exc:
                    stats.skip(exc.reason, exc.detail)
                    continue
                if stamp <= last_delivered_ns:
                    stats.skip("non_monotonic_stamp", f"t={stamp} after {last_delivered_ns}")
                    continue
                n_synced += 1
                if (n_synced - 1) % cfg.frame_stride:
                    continue
                inst = next((a for t, a in instances if abs(t - stamp) <= sync.slop_ns), None)
                frame = Frame(
                    stamp_ns=stamp,
                    rgb=color.array,
                    depth_m=depth.array,
                    intrinsics=K,
                    T_world_camera=T,
                    index=stats.delivered,
                    instance_ids=inst,
                )
                last_delivered_ns = stamp
                stats.delivered += 1
                yield frame

        def enqueue(matched: list[tuple[int, _Image, _Image]]) -> None:
            for match in matched:
                try:
                    pending.append(self._checked(match, intrinsics))
                except InputError as exc:
                    stats.skip(exc.reason, exc.detail)

        def done() -> bool:
            return cfg.max_frames > 0 and stats.delivered >= cfg.max_frames

        for conn, _log_ns, raw in reader.messages(connections=connections):
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # a corrupt payload must not end the replay
                stats.skip("undecodable_message", f"{conn.topic}: {exc}")
                continue
            try:
                if conn.topic == cfg.camera_info_topic:
                    intrinsics = intrinsics_from_camera_info(msg)
                elif conn.topic == cfg.color_topic:
                    stamp = stamp_to_ns(msg.header)
                    if stamp <= last_color_ns:
                        raise InputError("non_monotonic_stamp", f"colour t={stamp}")
                    rgb = decode_color(
                        msg.data,
                        height=msg.height,
                        width=msg.width,
                        step=msg.step,
                        encoding=msg.encoding,
                    )
                    last_color_ns = stamp
                    enqueue(sync.add_a(stamp, _Image(cfg.camera_frame or msg.header.frame_id, rgb)))
                elif conn.topic == cfg.depth_topic:
                    depth, n_bad = decode_depth(
                        msg.data,
                        height=msg.height,
                        width=msg.width,
                        step=msg.step,
                        encoding=msg.encoding,
                        is_bigendian=bool(msg.is_bigendian),
                    )
                    if n_bad:
                        stats.skipped["nonfinite_depth_pixels"] += n_bad
                    if not np.any(depth > 0):
                        raise InputError("no_valid_depth", f"depth t={stamp_to_ns(msg.header)}")
                    enqueue(sync.add_b(stamp_to_ns(msg.header), _Image(msg.header.frame_id, depth)))
                elif conn.topic == cfg.instance_topic:
                    instances.append(
                        (
                            stamp_to_ns(msg.header),
                            decode_int_image(
                                msg.data,
                                height=msg.height,
                                width=msg.width,
                                step=msg.step,
                                encoding=msg.encoding,
                            ),
                        )
                    )
                elif conn.msgtype in POSE_TYPES:
                    parent, child, stamp, T = pose_msg_to_matrix(msg, conn.msgtype)
                    tf.add(parent or cfg.world_frame, self.POSE_CHILD, stamp, T)
                    latest_pose_ns = max(latest_pose_ns, stamp)
                elif conn.msgtype == TF_TYPE:
                    static = conn.topic == "/tf_static"
                    for ts in msg.transforms:
                        parent, child, stamp, T = pose_msg_to_matrix(
                            ts, "geometry_msgs/msg/TransformStamped"
                        )
                        tf.add(parent, child, stamp, T, static=static)
                        if not static:
                            latest_pose_ns = max(latest_pose_ns, stamp)
            except InputError as exc:
                stats.skip(exc.reason, f"{conn.topic}: {exc.detail}")
                continue
            for frame in resolve(final=False):
                yield frame
                if done():
                    return
        enqueue(sync.flush())
        for frame in resolve(final=True):
            yield frame
            if done():
                return

    @staticmethod
    def _checked(
        match: tuple[int, _Image, _Image], intrinsics: CameraIntrinsics | None
    ) -> tuple[int, _Image, _Image, CameraIntrinsics]:
        stamp, color, depth = match
        if intrinsics is None:
            raise InputError("missing_camera_info", f"frame t={stamp} before any CameraInfo")
        h, w = depth.array.shape
        if color.array.shape[:2] != (h, w):
            raise InputError("size_mismatch", f"colour {color.array.shape[:2]} vs depth {(h, w)}")
        if (intrinsics.height, intrinsics.width) != (h, w):
            raise InputError(
                "size_mismatch",
                f"depth {w}x{h} vs camera_info {intrinsics.width}x{intrinsics.height}",
            )
        return stamp, color, depth, intrinsics

    def _camera_pose(
        self, tf: TransformBuffer, mode: str, frame_id: str, stamp_ns: int
    ) -> NDArray[np.float64]:
        cfg = self.config
        if mode == "topic":
            world = tf.parent_of(self.POSE_CHILD) or cfg.world_frame
            T = tf.lookup(world, self.POSE_CHILD, stamp_ns)
            if cfg.pose_frame_convention == "body":
                T = T @ T_BODY_OPTICAL
            return T
        return tf.lookup(cfg.world_frame, frame_id, stamp_ns)

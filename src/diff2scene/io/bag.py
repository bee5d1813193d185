"""Frames from a ROS 2 bag (sqlite3 or MCAP), read with ``rosbags`` — no ROS install needed.

The bag is only a message source: each message is read into a record
(:mod:`diff2scene.io.messages`) and pushed, in log order, into the same
:class:`~diff2scene.io.assembler.FrameAssembler` the live node uses, so a replay builds the
frames a robot would have built from the same messages.

Camera layouts differ between drivers (``/camera/color/image_raw``,
``/camera/camera/color/image_raw``, ``…/aligned_depth_to_color/…``, ``…/compressed``), so
when a configured topic is absent the source picks the colour/depth/calibration topics by type
and name (preferring depth aligned to colour) and the pose source (the configured pose topic,
else the bag's single pose topic, else TF), and says what it chose in :attr:`BagFrameSource.layout`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diff2scene.errors import DataFormatError, InputError
from diff2scene.io.assembler import FrameAssembler, InputConfig, RawFrame
from diff2scene.io.base import FrameSource
from diff2scene.io.messages import (
    read_any_image,
    read_camera_info,
    read_image,
    read_pose,
    read_transforms,
)
from diff2scene.types import Frame

_LOG = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/TransformStamped",
)
TF_TYPE = "tf2_msgs/msg/TFMessage"
TF_TOPICS = ("/tf", "/tf_static")


@dataclass
class BagSourceConfig:
    """Which topics of a bag hold the frames, and how they are assembled."""

    #: Colour topic (sensor_msgs/Image, or CompressedImage from image_transport's
    #: ``compressed``); if absent from the bag, one is chosen by type and name.
    color_topic: str = "/camera/color/image_raw"
    #: Depth topic registered to the colour camera (Image 16UC1/32FC1, or ``compressedDepth``);
    #: if absent, one is chosen (aligned depth preferred).
    depth_topic: str = "/camera/depth/image_rect_raw"
    #: CameraInfo of the colour camera; if absent, the one beside the colour topic.
    camera_info_topic: str = "/camera/color/camera_info"
    #: PoseStamped / Odometry / TransformStamped topic of the camera pose; if absent, the bag's
    #: only pose topic, else TF.
    pose_topic: str = "/camera/pose"
    #: Ground-truth instance image topic (synthetic bags); read when present.
    instance_topic: str = "/camera/instance/image_raw"
    #: Topics that must be in the bag as named (those given on the command line): an automatic
    #: choice never replaces them, so a typo stops the run instead of reading another topic.
    required_topics: tuple[str, ...] = ()
    #: Deliver every n-th frame (1 = all).
    frame_stride: int = 1
    #: Stop after this many frames are handed to the mapper (0 = no limit).
    max_frames: int = 0

    def __post_init__(self) -> None:
        if self.frame_stride < 1 or self.max_frames < 0:
            raise ValueError("frame_stride must be >= 1 and max_frames >= 0")


@dataclass(frozen=True)
class BagLayout:
    """The topics a replay reads, and why (``notes`` says what was chosen automatically)."""

    color_topic: str
    depth_topic: str
    camera_info_topic: str
    #: The pose topic read, or "" when the pose comes from TF only.
    pose_topic: str
    #: "topic" or "tf" (what the bag offers; the assembler prefers TF when both can serve).
    pose_source: str
    instance_topic: str = ""
    notes: tuple[str, ...] = ()

    def as_config(self, base: BagSourceConfig) -> BagSourceConfig:
        """``base`` with this layout's topics written in (what ``bag-info`` proposes)."""
        return replace(
            base,
            color_topic=self.color_topic,
            depth_topic=self.depth_topic,
            camera_info_topic=self.camera_info_topic,
            pose_topic=self.pose_topic or base.pose_topic,
            instance_topic=self.instance_topic or base.instance_topic,
        )

    def input_config(self, base: InputConfig) -> InputConfig:
        """``base`` with the pose source this bag offers made explicit (``auto`` → ``tf`` for
        a bag with TF only), as ``bag-info`` proposes it."""
        if base.pose_source == "auto" and self.pose_source == "tf":
            return replace(base, pose_source="tf")
        return base


def _namespace(topic: str) -> str:
    return topic.rsplit("/", 1)[0]


def _image_candidates(topics: dict[str, str]) -> list[str]:
    return sorted(t for t, ty in topics.items() if ty in IMAGE_TYPES)


def _is_depth(topic: str) -> bool:
    return "depth" in topic.lower()


def _is_other_image(topic: str) -> bool:
    """Instance/label, infrared and other non-colour images."""
    low = topic.lower()
    return any(w in low for w in ("instance", "label", "segment", "infra", "/ir", "confidence",
                                  "disparity", "mask"))


def _rank_color(topic: str) -> tuple[int, int, str]:
    low = topic.lower()
    named = 0 if any(w in low for w in ("color", "colour", "rgb")) else 1
    return (named, 0 if low.endswith(("image_raw", "image_rect_color", "compressed")) else 1, topic)


def _rank_depth(topic: str, color_topic: str) -> tuple[int, int, int, str]:
    low = topic.lower()
    aligned = 0 if ("aligned" in low or "registered" in low) else 1
    raw_first = 1 if "compresseddepth" in low else 0  # same stream, cheaper to read raw
    shared = len(
        [a for a, b in zip(topic.split("/"), color_topic.split("/"), strict=False) if a == b]
    )
    return (aligned, -shared, raw_first, topic)


def choose_layout(
    topics: dict[str, str], config: BagSourceConfig, *, pose_source: str = "auto"
) -> BagLayout:
    """Pick the topics to read from ``topics`` (name → type); :class:`DataFormatError` when the
    bag cannot provide frames, naming what is missing and what the bag has."""
    notes: list[str] = []
    absent = [t for t in config.required_topics if t not in topics]
    if absent:
        raise DataFormatError(
            f"topic(s) {absent} given explicitly are not in the bag (it has {sorted(topics)})"
        )

    def typed(role: str, topic: str, accepted: tuple[str, ...]) -> None:
        found = topics[topic]
        if found not in accepted:
            raise DataFormatError(
                f"{role} topic {topic!r} has type {found}; accepted: {', '.join(accepted)}"
            )

    images = _image_candidates(topics)
    if config.color_topic in topics:
        color = config.color_topic
        typed("colour", color, IMAGE_TYPES)
    else:
        options = sorted((t for t in images if not _is_depth(t) and not _is_other_image(t)),
                         key=_rank_color)
        if not options:
            raise DataFormatError(
                f"no colour image topic: {config.color_topic!r} is absent and no other "
                f"Image/CompressedImage topic looks like colour (bag has {sorted(topics)})"
            )
        color = options[0]
        notes.append(f"colour: {color} ({config.color_topic} absent)")
    if config.depth_topic in topics:
        depth = config.depth_topic
        typed("depth", depth, IMAGE_TYPES)
    else:
        options = sorted((t for t in images if _is_depth(t)),
                         key=lambda t: _rank_depth(t, color))
        if not options:
            raise DataFormatError(
                f"no depth image topic: {config.depth_topic!r} is absent and no "
                f"Image/CompressedImage topic has 'depth' in its name (bag has {sorted(topics)})"
            )
        depth = options[0]
        notes.append(f"depth: {depth} ({config.depth_topic} absent)")
    if depth == color:
        # one handler per topic: the frames would silently never complete
        raise DataFormatError(
            f"colour and depth are the same topic {color!r}: choose two image topics "
            "(--color-topic, --depth-topic)"
        )
    if config.camera_info_topic in topics:
        info = config.camera_info_topic
        typed("camera_info", info, (CAMERA_INFO_TYPE,))
    else:
        infos = [t for t, ty in topics.items() if ty == CAMERA_INFO_TYPE]
        # the calibration beside the colour image (…/color/camera_info), else one with colour
        ns = _namespace(color.removesuffix("/compressed"))
        beside = [t for t in infos if _namespace(t) == ns]
        coloured = [t for t in infos if not _is_depth(t) and _rank_color(t)[0] == 0]
        options = beside or coloured or sorted(infos)
        if not options:
            raise DataFormatError(
                f"no CameraInfo topic: {config.camera_info_topic!r} is absent "
                f"(bag has {sorted(topics)})"
            )
        info = sorted(options)[0]
        notes.append(f"camera_info: {info} ({config.camera_info_topic} absent)")

    has_tf = any(t in topics and topics[t] == TF_TYPE for t in TF_TOPICS)
    wanted = pose_source
    pose_topic = ""
    if wanted != "tf":
        if config.pose_topic in topics:
            typed("pose", config.pose_topic, POSE_TYPES)
            pose_topic = config.pose_topic
        else:
            poses = sorted(t for t, ty in topics.items() if ty in POSE_TYPES)
            if len(poses) == 1:
                pose_topic = poses[0]
                notes.append(f"pose: {pose_topic} ({topics[pose_topic]}; "
                             f"{config.pose_topic} absent)")
            elif len(poses) > 1 and not has_tf:
                raise DataFormatError(
                    f"pose topic {config.pose_topic!r} absent and several candidates "
                    f"{poses}: choose one with --pose-topic"
                )
    if not pose_topic and not has_tf:
        raise DataFormatError(
            f"no pose source: neither a pose topic ({config.pose_topic!r}, or any "
            f"PoseStamped/Odometry/TransformStamped) nor /tf in the bag (has {sorted(topics)})"
        )
    if wanted in ("pose", "odometry") and not pose_topic:
        raise DataFormatError(f"pose_source is {wanted!r} but the bag has no pose topic")
    source = "topic" if pose_topic else "tf"
    if not pose_topic:
        notes.append("pose: TF (/tf, /tf_static)")
    instance = config.instance_topic if config.instance_topic in topics else ""
    if instance:
        typed("instance", instance, ("sensor_msgs/msg/Image",))
    return BagLayout(color, depth, info, pose_topic, source, instance, tuple(notes))


class BagFrameSource(FrameSource):
    """Synchronised frames from a rosbag2 directory or file (sqlite3 or MCAP).

    Iterating gives decoded frames (tools, training, evaluation). A mapping runtime instead
    takes the posed, undecoded frames of :meth:`raw_frames`, assembled by its own assembler,
    and decodes them in its frame worker as it does for a live stream.
    """

    def __init__(
        self,
        path: str | Path,
        config: BagSourceConfig | None = None,
        *,
        input_config: InputConfig | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.config = config or BagSourceConfig()
        #: How messages are assembled into frames (the live node's ``input.*``).
        self.input_config = input_config or InputConfig()
        if not self.path.exists():
            raise DataFormatError(f"bag not found: {self.path}")
        #: The assembler of the last (or current) pass over the bag: counters live here.
        self.assembler = FrameAssembler(self.input_config)
        self._layout: BagLayout | None = None

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

    @property
    def layout(self) -> BagLayout:
        """The topics this source reads (chosen on first use)."""
        if self._layout is None:
            self._layout = self._choose({t: ty for t, (ty, _) in self.topics().items()})
        return self._layout

    def _choose(self, types: dict[str, str]) -> BagLayout:
        return choose_layout(types, self.config, pose_source=self.input_config.pose_source)

    def __iter__(self) -> Iterator[Frame]:
        delivered = 0
        for raw in self.raw_frames(FrameAssembler(self.input_config,
                                                  expect_instances=self._has_instances())):
            frame = self.assembler.finish(raw)
            if frame is None:
                continue
            delivered += 1
            yield frame
            if self.config.max_frames and delivered >= self.config.max_frames:
                return

    def _has_instances(self) -> bool:
        return bool(self.layout.instance_topic)

    def raw_frames(self, assembler: FrameAssembler) -> Iterator[RawFrame]:
        """The bag's messages pushed in log order into ``assembler`` (which becomes this
        source's :attr:`assembler`), and the frames it makes ready, not yet decoded.

        ``frame_stride`` is applied here (the frames left out are counted as
        ``frame_stride``); ``max_frames`` ends the pass after that many frames are handed out.
        """
        self.assembler = assembler
        self.stats = assembler.stats
        reader = self._reader()
        try:
            if self._layout is None:
                self._layout = self._choose({c.topic: c.msgtype for c in reader.connections})
            yield from self._raw_frames(reader, self._layout)
        finally:
            reader.close()

    def _raw_frames(self, reader: Any, layout: BagLayout) -> Iterator[RawFrame]:
        cfg = self.config
        asm = self.assembler
        handlers = {
            layout.color_topic: lambda m: asm.add_color(read_any_image(m)),
            layout.depth_topic: lambda m: asm.add_depth(read_any_image(m)),
            layout.camera_info_topic: lambda m: asm.add_camera_info(read_camera_info(m)),
        }
        if layout.pose_topic:
            handlers[layout.pose_topic] = lambda m: asm.add_pose(read_pose(m))
        if layout.pose_source == "tf" or self.input_config.pose_source in ("auto", "tf"):
            handlers["/tf"] = lambda m: asm.add_transforms(read_transforms(m))
            handlers["/tf_static"] = lambda m: asm.add_transforms(read_transforms(m), static=True)
        if layout.instance_topic:
            handlers[layout.instance_topic] = lambda m: asm.add_instances(read_image(m))
        connections = [c for c in reader.connections if c.topic in handlers]
        ready = 0
        handed = 0

        def take(raws: list[RawFrame]) -> Iterator[RawFrame]:
            nonlocal ready, handed
            for raw in raws:
                ready += 1
                if (ready - 1) % cfg.frame_stride:
                    asm.skip_frame(raw, "frame_stride")
                    continue
                if cfg.max_frames and handed >= cfg.max_frames:
                    return
                handed += 1
                yield raw

        for conn, _log_ns, payload in reader.messages(connections=connections):
            try:
                msg = reader.deserialize(payload, conn.msgtype)
            except Exception as exc:  # a corrupt payload must not end the replay
                self._count_bad(conn.topic, layout, "undecodable_message", f"{conn.topic}: {exc}")
                continue
            try:
                raws = handlers[conn.topic](msg)
            except InputError as exc:
                self._count_bad(conn.topic, layout, exc.reason, f"{conn.topic}: {exc.detail}",
                                stamp_ns=exc.stamp_ns)
                continue
            yield from take(raws)
            if cfg.max_frames and handed >= cfg.max_frames:
                return
        yield from take(asm.flush())

    def _count_bad(self, topic: str, layout: BagLayout, reason: str, detail: str, *,
                   stamp_ns: int | None = None) -> None:
        """A message that could not be read: a lost frame if it was a colour image."""
        if topic == layout.color_topic:
            self.assembler.skip_color(reason, detail, stamp_ns=stamp_ns)
        else:
            self.assembler.reject(reason, stamp_ns=stamp_ns)
            _LOG.debug("message refused (%s): %s", reason, detail)

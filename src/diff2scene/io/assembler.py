"""The one place where input messages become :class:`~diff2scene.types.Frame` objects.

Live and replay share this code from message to frame: the ROS node converts each message into
a record (:mod:`diff2scene.io.messages`) and pushes it here from its callbacks; the bag source
does the same in log order. Assembly has two steps so a live node never decodes in a callback:

1. ``add_color`` / ``add_depth`` / ``add_camera_info`` / ``add_pose`` / ``add_transforms``
   (cheap, no pixels touched) pair colour with depth by approximate time, attach the newest
   calibration and look up the camera pose at the image stamp. They return the
   :class:`RawFrame` objects that became ready.
2. :meth:`FrameAssembler.finish` decodes and validates a raw frame into a ``Frame`` (or counts
   why not).

Every colour image that does not become a frame is counted under exactly one reason in
:attr:`FrameAssembler.stats`, and holes in the camera's stamp sequence (messages lost before
they reached us) are estimated from the camera period and counted as ``input_gaps``, so that
``colour images published ≈ frames + skips + gaps`` can be checked at any time. A
:data:`~diff2scene.io.base.CountListener` given to :meth:`FrameAssembler.listen` is told of
each skip and refusal with the stamp of the input counted, so a test or a fault injector can
tell its own messages apart from everything else that went to the same counter.

Pose input: TF (a chain from ``world_frame`` to the image's frame, or ``camera_frame``), or a
pose topic (PoseStamped / Odometry / TransformStamped). With ``pose_source: auto`` TF is used
as soon as such a chain exists, else the pose topic. A frame waits for a pose sample *after*
its stamp (so the pose is interpolated, never guessed) for at most ``max_pose_wait_s`` of
camera time; then the nearest sample is held if it is within ``max_pose_extrapolation_s``.
"""

from __future__ import annotations

import statistics
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import ConfigError, InputError
from diff2scene.io.base import CountListener, SkipStats
from diff2scene.io.image_codec import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    decode_color,
    decode_depth,
    decode_int_image,
)
from diff2scene.io.messages import CameraInfoData, ImageData, PoseData
from diff2scene.io.sync import ApproximateSync
from diff2scene.io.transforms import T_BODY_OPTICAL, TransformBuffer
from diff2scene.types import CameraIntrinsics, Frame

#: Encodings a colour image may have (``mono8`` is spread to three channels).
SUPPORTED_COLOR_ENCODINGS: tuple[str, ...] = (*COLOR_ENCODINGS, "mono8")
#: Encodings a depth image may have: millimetres (16UC1, mono16) or metres (32FC1).
SUPPORTED_DEPTH_ENCODINGS: tuple[str, ...] = tuple(DEPTH_ENCODINGS)

#: Child name under which pose-topic samples are kept (a PoseStamped names no child frame).
_POSE_TOPIC_CHILD = "__diff2scene_pose_topic__"
#: Colour stamps needed before the camera period is trusted for gap counting.
_MIN_PERIOD_SAMPLES = 5
#: Frames on a new timeline that must agree before a stamp jump is accepted as a time reset.
_RESET_AFTER = 3


@dataclass
class InputConfig:
    """How input messages are assembled into frames (topics are the front end's business)."""

    #: Fixed frame of the map (REP-105 "map" or "odom"); TF lookups go from here to the camera.
    world_frame: str = "map"
    #: Camera frame for TF lookups; empty = the colour image's ``header.frame_id``.
    camera_frame: str = ""
    #: Where the camera pose comes from: "tf", a pose topic ("pose": PoseStamped, "odometry":
    #: Odometry), or "auto" (TF once a chain world_frame → camera exists, else the pose topic).
    pose_source: Literal["auto", "tf", "pose", "odometry"] = "auto"
    #: Convention of a pose topic's frame when TF does not say: "optical" (z forward, the
    #: camera's optical frame) or "body" (x forward, z up; the optical rotation is applied).
    pose_convention: Literal["optical", "body"] = "optical"
    #: Colour and depth images at most this far apart in time are paired, in seconds.
    sync_slop_s: float = 0.02
    #: Pose samples at most this far apart are interpolated, in seconds (1 s bridges one lost
    #: sample of a slow pose stream, e.g. odometry at 4 Hz).
    max_pose_gap_s: float = 1.0
    #: A frame waits at most this long for a pose sample after its stamp (and for the first
    #: calibration), in seconds: wall time live, camera time in a replay; then it is resolved
    #: with what there is, or skipped. Above 3 s because a reliable DDS sample lost next to a
    #: burst of image fragments is repaired at the writer's next heartbeat, every 3 s by
    #: default in Fast DDS (measured here: poses and calibration up to 2.8 s late).
    max_pose_wait_s: float = 3.5
    #: Outside the pose samples the nearest one is held for at most this long, in seconds
    #: (0: never extrapolate, as tf2 does).
    max_pose_extrapolation_s: float = 0.0
    #: Frames waiting for their pose at most (about 2 s of a 30 Hz camera); beyond it the
    #: oldest is resolved or skipped.
    max_pending_frames: int = 60
    #: A colour stamp jumping further than this from the previous one (forward or back), in
    #: seconds, is skipped as a bad stamp unless the following frames confirm a time reset.
    max_stamp_jump_s: float = 10.0
    #: A colour stamp step larger than this many camera periods counts the missing frames as
    #: input gaps.
    gap_factor: float = 1.5
    #: Colour encodings accepted (others are skipped as ``bad_color_encoding``).
    color_encodings: tuple[str, ...] = SUPPORTED_COLOR_ENCODINGS
    #: Depth encodings accepted (others are skipped as ``bad_depth_encoding``).
    depth_encodings: tuple[str, ...] = SUPPORTED_DEPTH_ENCODINGS

    def __post_init__(self) -> None:
        positive = {
            "max_pose_gap_s": self.max_pose_gap_s,
            "max_stamp_jump_s": self.max_stamp_jump_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"InputConfig.{name} must be > 0, got {value}")
        for name, value in {
            "sync_slop_s": self.sync_slop_s,
            "max_pose_wait_s": self.max_pose_wait_s,
            "max_pose_extrapolation_s": self.max_pose_extrapolation_s,
        }.items():
            if not value >= 0:
                raise ConfigError(f"InputConfig.{name} must be >= 0, got {value}")
        if self.max_pending_frames < 1:
            raise ConfigError("InputConfig.max_pending_frames must be >= 1")
        if not self.gap_factor > 1:
            raise ConfigError("InputConfig.gap_factor must be > 1")
        if not self.world_frame.strip("/"):
            raise ConfigError("InputConfig.world_frame must not be empty")
        for name, given, known in (
            ("color_encodings", self.color_encodings, SUPPORTED_COLOR_ENCODINGS),
            ("depth_encodings", self.depth_encodings, SUPPORTED_DEPTH_ENCODINGS),
        ):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ConfigError(f"InputConfig.{name}: {unknown} not in {list(known)}")


def intrinsics_from_camera_info(info: CameraInfoData) -> CameraIntrinsics:
    """Pinhole intrinsics of the rectified image a ``CameraInfo`` describes.

    ``P`` describes the rectified image that ``image_rect`` topics carry, so it is used when it
    is set; ``K`` when ``P`` is zero (some drivers leave it unset). The region of interest and
    binning are applied, as ``image_proc`` does. An uncalibrated or malformed calibration raises
    :class:`InputError`.
    """
    P = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    use_p = P[0, 0] > 0 and P[1, 1] > 0
    src = P if use_p else K
    fx, fy, cx, cy = src[0, 0], src[1, 1], src[0, 2], src[1, 2]
    width, height = info.width, info.height
    x_off, y_off, roi_w, roi_h = info.roi
    if roi_w > 0 and roi_h > 0:
        cx, cy = cx - x_off, cy - y_off
        width, height = roi_w, roi_h
    bx, by = max(1, info.binning_x), max(1, info.binning_y)
    if bx > 1 or by > 1:
        fx, cx, width = fx / bx, cx / bx, width // bx
        fy, cy, height = fy / by, cy / by, height // by
    values = np.array([fx, fy, cx, cy])
    if not np.all(np.isfinite(values)) or fx <= 0 or fy <= 0 or width <= 0 or height <= 0:
        raise InputError(
            "bad_camera_info",
            f"{width}x{height} fx={fx} fy={fy} cx={cx} cy={cy} (uncalibrated camera?)",
        )
    return CameraIntrinsics(
        width=int(width), height=int(height), fx=float(fx), fy=float(fy), cx=float(cx),
        cy=float(cy),
    )


@dataclass(frozen=True)
class RawFrame:
    """A colour/depth pair with its calibration and pose, not yet decoded."""

    stamp_ns: int
    color: ImageData
    depth: ImageData
    camera_info: CameraInfoData
    T_world_camera: NDArray[np.float64]  # (4, 4), optical frame → world
    instances: ImageData | None = None


@dataclass
class _Pending:
    stamp_ns: int
    color: ImageData
    depth: ImageData
    #: When the pair was made, on the assembler's clock (wall time live, camera time replay).
    paired_ns: int


class _Timeline:
    """Tells stale, out-of-place and reset stamps apart on one stream, and counts gaps.

    A stamp further than ``max_jump_ns`` from the previous one is held as suspect; if
    :data:`_RESET_AFTER` frames in a row continue the new timeline, it was a time reset (a bag
    loop, a simulator restart) and is accepted; a single wild stamp is skipped.
    """

    def __init__(self, *, max_jump_ns: int, gap_factor: float) -> None:
        self.max_jump_ns = max_jump_ns
        self.gap_factor = gap_factor
        self.last_ns: int | None = None
        self.steps_ns: deque[int] = deque(maxlen=32)
        self.gaps = 0
        self._suspects: list[int] = []

    def period_ns(self) -> float | None:
        if len(self.steps_ns) < _MIN_PERIOD_SAMPLES:
            return None
        return float(statistics.median(self.steps_ns))

    def check(self, stamp_ns: int) -> str | None:
        """None if the stamp is accepted; "reset" after a confirmed time jump; else a skip
        reason."""
        last = self.last_ns
        if last is None:
            self.last_ns = stamp_ns
            return None
        step = stamp_ns - last
        if abs(step) > self.max_jump_ns:
            if self._suspects and 0 < stamp_ns - self._suspects[-1] <= self.max_jump_ns:
                self._suspects.append(stamp_ns)
            else:
                self._suspects = [stamp_ns]
            if len(self._suspects) >= _RESET_AFTER:
                self._suspects = []
                self.last_ns = stamp_ns
                self.steps_ns.clear()
                return "reset"
            return "stamp_jump"
        self._suspects = []
        if step <= 0:
            return "stale_stamp"
        period = self.period_ns()
        if period is not None and step > self.gap_factor * period:
            self.gaps += max(round(step / period) - 1, 0)
        else:
            self.steps_ns.append(step)
        self.last_ns = stamp_ns
        return None


class FrameAssembler:
    """Turns input records into frames; thread-safe (callbacks and a worker may share it)."""

    def __init__(
        self,
        config: InputConfig | None = None,
        *,
        expect_instances: bool = False,
        clock_ns: Callable[[], int] | None = None,
    ):
        """``expect_instances``: frames wait for a ground-truth instance image (synthetic
        bags, simulators) with the same stamp and carry it in ``Frame.instance_ids``.

        ``clock_ns`` measures how long a frame has waited for its pose: live, a wall clock
        (``time.monotonic_ns``), because messages of different topics are delivered with
        different delays and call :meth:`expire` periodically; None (replay), the camera's own
        time, the newest image stamp seen, so a replay is deterministic whatever its speed.
        """
        self.config = cfg = config or InputConfig()
        self.expect_instances = expect_instances
        self._clock_ns = clock_ns
        #: Colour images that did not become frames, by reason (one count per image).
        self.stats = SkipStats()
        #: Other messages refused (bad calibration, bad pose, ...), by reason.
        self.rejected: Counter[str] = Counter()
        #: Messages received, by kind.
        self.received: Counter[str] = Counter()
        #: Where the poses of the frames came from ("tf" / "topic"), by count.
        self.pose_used: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._sync: ApproximateSync[ImageData, ImageData] = ApproximateSync(
            slop_ns=round(cfg.sync_slop_s * 1e9), stats=self.stats
        )
        gap_ns = round(cfg.max_pose_gap_s * 1e9)
        self._tf = TransformBuffer(max_interpolation_gap_ns=gap_ns)
        self._topic = TransformBuffer(max_interpolation_gap_ns=gap_ns)
        self._timeline = _Timeline(
            max_jump_ns=round(cfg.max_stamp_jump_s * 1e9), gap_factor=cfg.gap_factor
        )
        self._camera_info: CameraInfoData | None = None
        self._pending: deque[_Pending] = deque()
        self._instances: deque[ImageData] = deque(maxlen=64)
        self._newest_image_ns = -1
        self._last_frame_ns = -1
        self._frames_built = 0
        self._adopted_world: str | None = None
        self._world = cfg.world_frame.strip("/")
        self._latest_T: NDArray[np.float64] | None = None
        #: Child frame named by the pose topic (Odometry/TransformStamped); "" for PoseStamped.
        self._pose_child = ""
        self._listener: CountListener | None = None

    def listen(self, listener: CountListener | None) -> None:
        """Tell ``listener`` of every skip and refusal as it is counted: the key it went to in
        :meth:`counters` (``skipped_<reason>`` or ``rejected_<reason>``) and the stamp of the
        image or message counted (None when it has none, e.g. a message that could not be
        read). It is called with the assembler's lock held, from the thread that counted:
        it must be quick and must not call back into the assembler. None stops it."""
        def skipped(reason: str, stamp_ns: int | None) -> None:
            if listener is not None:
                listener(f"skipped_{reason}", stamp_ns)

        with self._lock:
            self._listener = listener
            self.stats.listener = None if listener is None else skipped

    def _reject(self, reason: str, stamp_ns: int | None) -> None:
        """Count a refused message under ``rejected_<reason>`` (lock held)."""
        self.rejected[reason] += 1
        if self._listener is not None:
            self._listener(f"rejected_{reason}", stamp_ns)

    # ------------------------------------------------------------------ input records

    def add_color(self, image: ImageData) -> list[RawFrame]:
        """A colour image (raw or compressed)."""
        with self._lock:
            self.received["color"] += 1
            verdict = self._timeline.check(image.stamp_ns)
            if verdict == "reset":
                self._reset_time(image.stamp_ns)
            elif verdict is not None:
                self.stats.skip(verdict, f"colour t={image.stamp_ns}", stamp_ns=image.stamp_ns)
                return []
            self._saw_image(image.stamp_ns)
            return self._enqueue(self._sync.add_a(image.stamp_ns, image))

    def add_depth(self, image: ImageData) -> list[RawFrame]:
        """A depth image registered to the colour camera (raw or ``compressedDepth``)."""
        with self._lock:
            self.received["depth"] += 1
            self._saw_image(image.stamp_ns)
            return self._enqueue(self._sync.add_b(image.stamp_ns, image))

    def add_camera_info(self, info: CameraInfoData) -> list[RawFrame]:
        """Calibration of the colour camera; a bad one is refused (the previous one stays)."""
        with self._lock:
            self.received["camera_info"] += 1
            try:
                intrinsics_from_camera_info(info)
            except InputError as exc:
                self._reject(exc.reason, info.stamp_ns)
                return []
            self._camera_info = info
            return self._resolve(final=False)

    def add_pose(self, pose: PoseData) -> list[RawFrame]:
        """A pose-topic sample: ``T_parent_child`` of the camera (or of a body frame that TF
        links to the camera)."""
        with self._lock:
            self.received["pose"] += 1
            try:
                self._topic.add(pose.parent or self._world, _POSE_TOPIC_CHILD, pose.stamp_ns,
                                pose.T_parent_child)
            except InputError as exc:
                self._reject(exc.reason, pose.stamp_ns)
                return []
            self._pose_child = pose.child
            return self._resolve(final=False)

    def add_transforms(self, transforms: Iterable[PoseData], *, static: bool = False
                       ) -> list[RawFrame]:
        """Transforms of a ``/tf`` (or, with ``static``, ``/tf_static``) message."""
        with self._lock:
            self.received["tf_static" if static else "tf"] += 1
            for ts in transforms:
                try:
                    if not ts.parent or not ts.child:
                        raise InputError("bad_transform", "empty frame id")
                    self._tf.add(ts.parent, ts.child, ts.stamp_ns, ts.T_parent_child,
                                 static=static)
                except InputError as exc:
                    self._reject(exc.reason, ts.stamp_ns)
            return self._resolve(final=False)

    def add_instances(self, image: ImageData) -> list[RawFrame]:
        """A ground-truth instance-id image (synthetic data), matched to frames by stamp."""
        with self._lock:
            self.received["instances"] += 1
            self._instances.append(image)
            return self._resolve(final=False)

    def expire(self) -> list[RawFrame]:
        """Frames whose wait is over on the clock (live: call it periodically, so a frame
        whose pose never comes is counted even when no further message arrives)."""
        with self._lock:
            return self._resolve(final=False)

    def flush(self) -> list[RawFrame]:
        """End of stream: pair what can be paired, resolve every waiting frame."""
        with self._lock:
            self._enqueue(self._sync.flush())
            return self._resolve(final=True)

    def reject(self, reason: str, *, stamp_ns: int | None = None) -> None:
        """A message a front end could not read (bad calibration, pose, transform): counted
        under ``rejected_<reason>`` (``stamp_ns``: its stamp, if it could be read). Front ends
        call this rather than touching the counters, which callback threads share."""
        with self._lock:
            self._reject(reason, stamp_ns)

    def skip_color(self, reason: str, detail: str = "", *, stamp_ns: int | None = None) -> None:
        """A colour image that cannot become a frame before it reaches the assembler (an
        undecodable message in a bag): received, and skipped under ``reason``."""
        with self._lock:
            self.received["color"] += 1
            self.stats.skip(reason, detail, stamp_ns=stamp_ns)

    def skip_frame(self, raw: RawFrame, reason: str, detail: str = "") -> None:
        """A raw frame handed out but dropped before decoding (a full frame queue, a frame
        stride): skipped under ``reason``, so the books still close."""
        with self._lock:
            self.stats.skip(reason, f"t={raw.stamp_ns}" + (f": {detail}" if detail else ""),
                            stamp_ns=raw.stamp_ns)

    # ------------------------------------------------------------------ decoding

    def finish(self, raw: RawFrame) -> Frame | None:
        """Decode and check a raw frame; None (and a counted reason) if it is unusable."""
        try:
            frame = self._decode(raw)
        except InputError as exc:
            with self._lock:
                self.stats.skip(exc.reason, f"t={raw.stamp_ns}: {exc.detail}",
                                stamp_ns=raw.stamp_ns)
            return None
        with self._lock:
            frame.index = self._frames_built
            self._frames_built += 1
            self.stats.delivered += 1
        return frame

    def _decode(self, raw: RawFrame) -> Frame:
        cfg = self.config
        intrinsics = intrinsics_from_camera_info(raw.camera_info)
        rgb = decode_color_image(raw.color, cfg.color_encodings)
        depth, _ = decode_depth_image(raw.depth, cfg.depth_encodings)
        if rgb.shape[:2] != depth.shape:
            raise InputError("size_mismatch", f"colour {rgb.shape[:2]} vs depth {depth.shape}")
        if (intrinsics.height, intrinsics.width) != depth.shape:
            raise InputError(
                "camera_info_size_mismatch",
                f"camera_info {intrinsics.width}x{intrinsics.height} vs depth "
                f"{depth.shape[1]}x{depth.shape[0]}",
            )
        instance_ids = None
        if raw.instances is not None:
            img = raw.instances
            instance_ids = decode_int_image(img.data, height=img.height, width=img.width,
                                            step=img.step, encoding=img.encoding)
            if instance_ids.shape != depth.shape:
                raise InputError("size_mismatch", f"instances {instance_ids.shape}")
        return Frame(stamp_ns=raw.stamp_ns, rgb=rgb, depth_m=depth, intrinsics=intrinsics,
                     T_world_camera=raw.T_world_camera, instance_ids=instance_ids)

    # ------------------------------------------------------------------ state for front ends

    @property
    def map_frame(self) -> str:
        """The frame the frames' poses are in: ``world_frame``, or the frame of a pose topic
        that names another one and that TF does not link to it."""
        return self._adopted_world or self._world

    @property
    def input_gaps(self) -> int:
        """Colour images estimated lost before they arrived (holes in the stamp sequence)."""
        return self._timeline.gaps

    def camera_period_s(self) -> float | None:
        """Median step between colour stamps, once enough were seen."""
        period = self._timeline.period_ns()
        return None if period is None else period / 1e9

    def latest_camera_pose(self) -> NDArray[np.float64] | None:
        """``T_world_camera`` of the newest frame handed out (e.g. a query's viewpoint)."""
        with self._lock:
            return None if self._latest_T is None else self._latest_T.copy()

    def counters(self) -> dict[str, int | float]:
        """Everything counted, flat, for diagnostics and the accounting check."""
        with self._lock:
            out: dict[str, int | float] = {f"{k}_msgs": v for k, v in self.received.items()}
            out["input_gaps"] = self.input_gaps
            out["frames_assembled"] = self._frames_built
            out["frames_waiting"] = len(self._pending) + self._sync.waiting
            out["frames_skipped_input"] = self.stats.total_skipped
            out.update({f"skipped_{k}": v for k, v in sorted(self.stats.skipped.items())})
            out.update({f"rejected_{k}": v for k, v in sorted(self.rejected.items())})
            out.update({f"pose_from_{k}": v for k, v in sorted(self.pose_used.items())})
            published = self.received["color"] + self.input_gaps
            out["input_loss_ratio"] = self.input_gaps / published if published else 0.0
            period = self.camera_period_s()
            if period is not None:
                out["camera_period_s"] = period
            return out

    # ------------------------------------------------------------------ internals

    def _saw_image(self, stamp_ns: int) -> None:
        self._newest_image_ns = max(self._newest_image_ns, stamp_ns)

    def _reset_time(self, stamp_ns: int) -> None:
        """Time jumped (bag loop, simulator reset) at the colour image ``stamp_ns``: forget
        everything time-indexed."""
        self._reject("time_reset", stamp_ns)
        self._sync.clear()
        for p in self._pending:
            self.stats.skip("time_reset", f"t={p.stamp_ns}", stamp_ns=p.stamp_ns)
        self._pending.clear()
        self._instances.clear()
        self._tf.clear_dynamic()
        self._topic = TransformBuffer(
            max_interpolation_gap_ns=round(self.config.max_pose_gap_s * 1e9)
        )
        self._newest_image_ns = -1
        self._last_frame_ns = -1

    def _now_ns(self) -> int:
        return self._clock_ns() if self._clock_ns is not None else self._newest_image_ns

    def _enqueue(self, matched: list[tuple[int, ImageData, ImageData]]) -> list[RawFrame]:
        for stamp_ns, color, depth in matched:
            paired = self._now_ns() if self._clock_ns is not None else stamp_ns
            self._pending.append(_Pending(stamp_ns, color, depth, paired))
        return self._resolve(final=False)

    def _resolve(self, *, final: bool) -> list[RawFrame]:
        out: list[RawFrame] = []
        wait_ns = round(self.config.max_pose_wait_s * 1e9)
        hold_ns = round(self.config.max_pose_extrapolation_s * 1e9)
        now_ns = self._now_ns()
        while self._pending:
            p = self._pending[0]
            patience_left = (
                not final
                and now_ns - p.paired_ns < wait_ns
                and len(self._pending) <= self.config.max_pending_frames
            )
            instances = self._instances_at(p.stamp_ns) if self.expect_instances else None
            if self.expect_instances and instances is None and patience_left:
                break
            # calibration topics are separate subscriptions: the first one may come late
            if self._camera_info is None:
                if patience_left:
                    break
                self._pending.popleft()
                self.stats.skip("missing_camera_info", f"t={p.stamp_ns} before any CameraInfo",
                                stamp_ns=p.stamp_ns)
                continue
            try:
                T, source = self._camera_pose(p, max_extrapolation_ns=0)
            except InputError as exc:
                if patience_left:
                    break
                try:
                    T, source = self._camera_pose(p, max_extrapolation_ns=hold_ns)
                except InputError:
                    self._pending.popleft()
                    self.stats.skip(exc.reason, f"t={p.stamp_ns}: {exc.detail}",
                                    stamp_ns=p.stamp_ns)
                    continue
            self._pending.popleft()
            if p.stamp_ns <= self._last_frame_ns:
                self.stats.skip("stale_stamp", f"t={p.stamp_ns} after {self._last_frame_ns}",
                                stamp_ns=p.stamp_ns)
                continue
            self._last_frame_ns = p.stamp_ns
            self.pose_used[source] += 1
            self._latest_T = T
            out.append(RawFrame(p.stamp_ns, p.color, p.depth, self._camera_info, T, instances))
        return out

    def _instances_at(self, stamp_ns: int) -> ImageData | None:
        slop = self._sync.slop_ns
        return next((i for i in self._instances if abs(i.stamp_ns - stamp_ns) <= slop), None)

    def _camera_frame(self, p: _Pending) -> str:
        return self.config.camera_frame.strip("/") or p.color.frame_id

    def _use_tf(self, camera: str) -> bool:
        source = self.config.pose_source
        if source == "tf":
            return True
        if source in ("pose", "odometry"):
            return False
        return bool(camera) and self._tf.connected(self._world, camera)

    def _camera_pose(
        self, p: _Pending, *, max_extrapolation_ns: int
    ) -> tuple[NDArray[np.float64], str]:
        """``T_world_optical`` at the frame's stamp and where it came from."""
        camera = self._camera_frame(p)
        t = p.stamp_ns
        if self._use_tf(camera):
            if not camera:
                raise InputError("missing_camera_frame", "image has no frame_id; set camera_frame")
            T = self._tf.lookup(self._world, camera, t, max_extrapolation_ns=max_extrapolation_ns)
            return T, "tf"
        parent = self._topic.parent_of(_POSE_TOPIC_CHILD)
        if parent is None:
            raise InputError("missing_pose", f"no pose sample yet (pose_source "
                                             f"{self.config.pose_source!r})")
        T = self._topic.lookup(parent, _POSE_TOPIC_CHILD, t,
                               max_extrapolation_ns=max_extrapolation_ns)
        child = self._pose_child
        if child and camera and child != camera and self._tf.connected(child, camera):
            T = T @ self._tf.lookup(child, camera, t, max_extrapolation_ns=max_extrapolation_ns)
        elif self.config.pose_convention == "body":
            T = T @ T_BODY_OPTICAL
        if parent != self._world:
            if self._tf.connected(self._world, parent):
                T = self._tf.lookup(self._world, parent, t,
                                    max_extrapolation_ns=max_extrapolation_ns) @ T
            elif self._adopted_world != parent:
                # The pose topic defines the map frame; say so once instead of refusing frames.
                self._adopted_world = parent
                self._reject("pose_frame_adopted", p.stamp_ns)
        return T, "topic"


def decode_color_image(
    image: ImageData, accepted: Iterable[str] = SUPPORTED_COLOR_ENCODINGS
) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB of a raw colour image record."""
    if image.compressed:
        from diff2scene.io import compressed

        return compressed.decode_compressed_color(image.encoding, image.data)
    enc = image.encoding
    if enc not in accepted:
        raise InputError("bad_color_encoding", f"{enc!r} not in {sorted(accepted)}")
    if enc == "mono8":
        grey = decode_int_image(image.data, height=image.height, width=image.width,
                                step=image.step, encoding=enc)
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    return decode_color(image.data, height=image.height, width=image.width, step=image.step,
                        encoding=enc)


def decode_depth_image(
    image: ImageData, accepted: Iterable[str] = SUPPORTED_DEPTH_ENCODINGS
) -> tuple[NDArray[np.float32], int]:
    """(H, W) float32 metres (0 = invalid) and the count of non-finite pixels of a depth
    image record."""
    if image.compressed:
        from diff2scene.io import compressed

        return compressed.decode_compressed_depth(image.encoding, image.data)
    if image.encoding not in accepted:
        raise InputError("bad_depth_encoding", f"{image.encoding!r} not in {sorted(accepted)}")
    return decode_depth(image.data, height=image.height, width=image.width, step=image.step,
                        encoding=image.encoding, is_bigendian=image.is_bigendian)

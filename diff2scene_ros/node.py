"""The diff2scene mapping node: RGB-D + pose (TF or a topic) in, labelled cloud, markers and
services out.

Thin by design: callbacks turn each message into a record (:mod:`diff2scene.io.messages`) and
hand it to the core's :class:`~diff2scene.io.assembler.FrameAssembler` — the same object a bag
replay feeds — which pairs, calibrates and poses frames without decoding them; ready frames wait
in a bounded queue (oldest dropped and counted) for one worker thread that decodes them and
feeds the core :class:`~diff2scene.pipeline.Pipeline`, which runs the 2D model in its own
worker. Every parameter is generated from the core's dataclass configs
(:mod:`diff2scene_ros.params`).

Pose input: ``/tf`` + ``/tf_static`` (a chain from ``input.world_frame`` to the camera frame),
a ``geometry_msgs/PoseStamped`` on ``camera/pose`` or a ``nav_msgs/Odometry`` on ``odom``;
``input.pose_source: auto`` takes TF once such a chain exists. The TF messages are read with
the core's own transform buffer rather than ``tf2_ros``, so a live run and a replay of its bag
resolve poses with the same code.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from diff2scene_interfaces.srv import LoadMap, SaveMap, SetVocabulary, TextQuery
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from numpy.typing import NDArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from diff2scene.errors import ConfigError, Diff2SceneError, InputError
from diff2scene.io.assembler import FrameAssembler, InputConfig, RawFrame
from diff2scene.io.messages import (
    ImageData,
    read_camera_info,
    read_compressed_image,
    read_image,
    read_pose,
    read_transforms,
)
from diff2scene.mapping.mapfiles import MapDir
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.query import EnsembleConfig, LabellingConfig, QueryConfig
from diff2scene.query.session import LockedSnapshotSource, QuerySession
from diff2scene.segmentation.base import Segmenter2D, TextEncoder
from diff2scene.segmentation.factory import SegmenterConfig
from diff2scene.supervise import Failure
from diff2scene_ros import conversions as cv
from diff2scene_ros.detections import instance_msgs_to_detections
from diff2scene_ros.params import declare_config

#: Node-relative input topics (remap them; the launch file does). With a compressed transport
#: the node subscribes to image_transport's ``<topic>/compressed`` or ``/compressedDepth``.
COLOR_TOPIC = "camera/color/image_raw"
DEPTH_TOPIC = "camera/depth/image_rect_raw"
CAMERA_INFO_TOPIC = "camera/color/camera_info"
POSE_TOPIC = "camera/pose"
ODOM_TOPIC = "odom"
#: Ground-truth instance ids of a synthetic bag or a simulator (oracle segmenter only).
INSTANCE_TOPIC = "camera/instance/image_raw"
#: Bounds of ``~/set_vocabulary`` requests (any DDS participant may call it).
MAX_VOCABULARY_CLASSES = 1000
MAX_CLASS_NAME_CHARS = 100


def _diffusion_segmenter() -> SegmenterConfig:
    return SegmenterConfig(kind="diffusion", profile="odise_sd15")


@dataclass
class NodeConfig:
    """Everything the node adds around the core pipeline (whose config is ``pipeline``)."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    #: How messages become frames: frames, pose source, sync, waits (shared with replay).
    input: InputConfig = field(default_factory=InputConfig)
    #: Reliability of the image, calibration and pose subscriptions. "reliable" by default:
    #: measured here (bench/dds_input.py), best-effort subscribers lost up to half of the
    #: large image messages over Fast DDS on one machine while reliable ones lost none. A
    #: publisher that only offers best effort (some camera drivers) needs "sensor_data": the
    #: node reports the incompatibility in /diagnostics and the log.
    input_qos: Literal["reliable", "sensor_data"] = "reliable"
    #: Images each input subscription holds for the node at most (DDS reader history): room
    #: for a pause of the node's Python threads (measured in the soak: up to 1.7 s about 10 s
    #: after a map load) without losing camera frames — 30 covers 1 s of a 30 Hz camera.
    image_queue_depth: int = 30
    #: Colour transport: "raw" (sensor_msgs/Image) or "compressed" (image_transport,
    #: ``<colour topic>/compressed``, JPEG or PNG).
    color_transport: Literal["raw", "compressed"] = "raw"
    #: Depth transport: "raw" or "compressedDepth" (image_transport, ``<depth
    #: topic>/compressedDepth``, PNG or RVL).
    depth_transport: Literal["raw", "compressedDepth"] = "raw"
    #: Frames (posed, not yet decoded) waiting for the mapper at most; the oldest is dropped
    #: (and counted as ``frame_queue_full``) when the mapper falls behind. Room for the burst
    #: that a late pose releases at once.
    frame_queue_size: int = 16
    #: The 2D model: "diffusion" (a model profile; "odise_sd15" needs the real weights, "tiny"
    #: runs anywhere with random weights) or "oracle" (ground-truth masks of a synthetic scene
    #: or simulator, degraded in known ways, with the synthetic text space).
    segmenter: SegmenterConfig = field(default_factory=_diffusion_segmenter)
    #: Synthetic scene directory (``diff2scene synth`` output with scene.json) whose instance
    #: tables the oracle segmenter reads; unused by the diffusion model.
    scene_dir: str = ""
    #: Vocabulary the labelled cloud is labelled with (``~/set_vocabulary`` replaces it).
    labelling: LabellingConfig = field(default_factory=LabellingConfig)
    #: Background, thresholds and limits of ``~/text_query``.
    query: QueryConfig = field(default_factory=QueryConfig)
    #: How the 2D (salient) and 3D (geometric) branches are combined.
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    #: Period of ``~/labelled_cloud``, in seconds.
    cloud_period_s: float = 2.0
    #: At most this many points go into one labelled cloud (evenly subsampled beyond).
    max_cloud_points: int = 500_000
    #: Period of ``/diagnostics``, in seconds.
    diagnostics_period_s: float = 1.0
    #: Input loss (stamp gaps over colour images published) above which diagnostics warn.
    warn_input_loss_ratio: float = 0.05
    #: The only directory ``~/save_map`` and ``~/load_map`` read and write (created if
    #: missing): request paths are taken relative to it, and paths leaving it are refused.
    map_dir: str = "~/.ros/diff2scene/maps"
    #: Map file (inside ``map_dir``) that ``~/save_map`` writes when its request has no path.
    default_map_name: str = "map.npz"
    #: Map file (inside ``map_dir``) saved atomically when the node shuts down (SIGINT,
    #: SIGTERM); empty = no autosave.
    autosave_path: str = ""
    #: Shutdown takes at most this long, in seconds: queued keyframes are finished (or
    #: abandoned, see ``shutdown_policy``) within about half of it, then the map is saved.
    shutdown_timeout_s: float = 10.0
    #: At shutdown: "finish" the queued keyframes while time allows, or "abandon" them.
    shutdown_policy: Literal["finish", "abandon"] = "finish"

    def __post_init__(self) -> None:
        positive = {
            "cloud_period_s": self.cloud_period_s,
            "diagnostics_period_s": self.diagnostics_period_s,
            "shutdown_timeout_s": self.shutdown_timeout_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"NodeConfig.{name} must be > 0, got {value}")
        if self.frame_queue_size < 1 or self.max_cloud_points < 1 or self.image_queue_depth < 1:
            raise ConfigError(
                "NodeConfig: frame_queue_size, max_cloud_points, image_queue_depth must be >= 1"
            )
        if not 0 <= self.warn_input_loss_ratio <= 1:
            raise ConfigError("NodeConfig.warn_input_loss_ratio must be in [0, 1]")


#: top_k standing for "all instances" (the engine wants a positive count).
_ALL = 2**31 - 1


class MappingNode(Node):
    """ROS 2 front end of :class:`~diff2scene.pipeline.Pipeline`."""

    def __init__(
        self,
        *,
        segmenter: Segmenter2D | None = None,
        text_encoder: TextEncoder | None = None,
        node_name: str = "diff2scene",
        **node_kwargs: Any,
    ) -> None:
        """``segmenter``/``text_encoder`` default to the ones ``segmenter`` configures."""
        super().__init__(node_name, **node_kwargs)
        self.config = declare_config(self, NodeConfig())
        cfg = self.config
        if segmenter is None or text_encoder is None:
            built_segmenter, built_encoder = build_models(cfg)
            segmenter = segmenter or built_segmenter
            text_encoder = text_encoder or built_encoder
        self.segmenter = segmenter
        self.text_encoder = text_encoder
        self.pipeline = Pipeline(cfg.pipeline, segmenter)
        self.maps = MapDir(cfg.map_dir, create=True)
        self.autosave = self.maps.resolve(cfg.autosave_path) if cfg.autosave_path else None
        #: Whether the shutdown autosave happened, and whether the 2D worker stopped in time.
        self.autosaved = False
        self.worker_stopped = True
        #: Queries and labelling: answered from the last ready map version while the next is
        #: built in the background, so a planner never waits for an index rebuild.
        self.session = QuerySession(
            LockedSnapshotSource(lambda: self.pipeline.map, self.pipeline.lock),
            text_encoder, segmenter, query=cfg.query, ensemble=cfg.ensemble,
            labelling=cfg.labelling,
        )

        oracle = cfg.segmenter.kind == "oracle"
        self.assembler = FrameAssembler(cfg.input, expect_instances=oracle,
                                        clock_ns=time.monotonic_ns)
        self._lock = threading.Lock()  # guards the frame queue
        self._frames: deque[RawFrame] = deque()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        #: Subscriptions whose publishers offer an incompatible QoS, by topic.
        self.qos_incompatible: Counter[str] = Counter()
        #: Service requests taken and responses handed back to rclpy, by "requests_<service>" /
        #: "responses_<service>": a client that misses an answer the node counted as sent lost
        #: it in transport, not in the node.
        self.service_calls: Counter[str] = Counter()
        self._service_calls_lock = threading.Lock()
        #: (monotonic time, counters) at the last diagnostics, for rates.
        self._rate_since: tuple[float, dict[str, int]] = (time.monotonic(), {})

        qos = QoSProfile(
            depth=cfg.image_queue_depth,
            reliability=(ReliabilityPolicy.BEST_EFFORT if cfg.input_qos == "sensor_data"
                         else ReliabilityPolicy.RELIABLE),
        )
        # Poses, calibration and TF are small and must not be lost while the images of the
        # same instant are handled: a deeper reader queue for them (measured: at depth 10 a
        # busy node lost a quarter of the poses of an 848x480 stream).
        small = QoSProfile(depth=100, reliability=qos.reliability, durability=qos.durability)

        def subscribe(msg_type: Any, topic: str, callback: Any, profile: QoSProfile = small
                      ) -> None:
            events = SubscriptionEventCallbacks(
                incompatible_qos=functools.partial(self._on_incompatible_qos, topic)
            )
            # one group per topic: each topic's messages are handled in order, and a slow
            # image callback never holds back a pose
            self.create_subscription(msg_type, topic, callback, profile,
                                     callback_group=MutuallyExclusiveCallbackGroup(),
                                     event_callbacks=events)

        if cfg.color_transport == "compressed":
            # image_transport's sub-topic of the (remapped) base topic
            subscribe(CompressedImage, f"{self.resolve_topic_name(COLOR_TOPIC)}/compressed",
                      self._on_compressed_color, qos)
        else:
            subscribe(Image, COLOR_TOPIC, self._on_color, qos)
        if cfg.depth_transport == "compressedDepth":
            subscribe(CompressedImage,
                      f"{self.resolve_topic_name(DEPTH_TOPIC)}/compressedDepth",
                      self._on_compressed_depth, qos)
        else:
            subscribe(Image, DEPTH_TOPIC, self._on_depth, qos)
        subscribe(CameraInfo, CAMERA_INFO_TOPIC, self._on_camera_info)
        source = cfg.input.pose_source
        if source in ("auto", "pose"):
            subscribe(PoseStamped, POSE_TOPIC, self._on_pose)
        if source in ("auto", "odometry"):
            subscribe(Odometry, ODOM_TOPIC, self._on_pose)
        if source in ("auto", "tf"):
            # the QoS tf2_ros listeners use: /tf reliable, /tf_static latched
            subscribe(TFMessage, "/tf", self._on_tf,
                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
            subscribe(TFMessage, "/tf_static", self._on_tf_static,
                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL))
        if oracle:
            subscribe(Image, INSTANCE_TOPIC, self._on_instances, qos)

        latched = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.cloud_pub = self.create_publisher(PointCloud2, "~/labelled_cloud", latched)
        self.marker_pub = self.create_publisher(MarkerArray, "~/query_markers", latched)
        #: Each query's instances as standard detections (Nav2, MoveIt, rviz vision_msgs).
        self.detections_pub = self.create_publisher(Detection3DArray, "~/detections", latched)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        services = ReentrantCallbackGroup()
        # The default service QoS keeps 10 requests: measured, 20 clients calling at once lost
        # half of their requests (never answered); 100 lost none. Clients need a deep history
        # too (every client receives every response): see client.QUERY_CLIENT_QOS.
        service_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for srv_type, name, handler in (
            (TextQuery, "text_query", self._on_text_query),
            (SetVocabulary, "set_vocabulary", self._on_set_vocabulary),
            (SaveMap, "save_map", self._on_save_map),
            (LoadMap, "load_map", self._on_load_map),
        ):
            self.create_service(srv_type, f"~/{name}", self._supervised_service(name, handler),
                                qos_profile=service_qos, callback_group=services)

        # frames whose pose never comes are resolved even when no further message arrives
        self.create_timer(0.1, self._supervised("expire_frames", self._expire),
                          callback_group=MutuallyExclusiveCallbackGroup())
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(cfg.cloud_period_s, self._supervised("publish_cloud",
                                                               self.publish_cloud),
                          callback_group=timers)
        self.create_timer(cfg.diagnostics_period_s, self._supervised(
            "diagnostics", self.publish_diagnostics), callback_group=timers)

        self._assemble_stage = self.pipeline.supervisor.stage("frame_assembly")
        self._worker = threading.Thread(target=self._work, name="diff2scene_frames", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"mapping in '{cfg.input.world_frame}' at {cfg.pipeline.mapper.voxel_size_m} m "
            f"voxels, pose from {source}, input QoS {cfg.input_qos}, 2D model "
            f"'{cfg.segmenter.kind}' ({cfg.segmenter.profile})"
        )

    # ------------------------------------------------------------------ supervision

    def _supervised(self, stage: str, fn: Any) -> Any:
        """``fn`` run through the pipeline's supervisor: an exception is counted, logged once
        and reported in /diagnostics instead of ending the executor."""
        supervised_stage = self.pipeline.supervisor.stage(stage)

        def run(*args: Any) -> Any:
            return supervised_stage.call(fn, *args)

        return run

    def _supervised_service(self, name: str, handler: Any) -> Any:
        """A service handler whose unexpected failures still answer (success False)."""
        stage = self.pipeline.supervisor.stage(f"service_{name}")

        def run(request: Any, response: Any) -> Any:
            with self._service_calls_lock:
                self.service_calls[f"requests_{name}"] += 1
            result = stage.call(handler, request, response)
            if isinstance(result, Failure):
                response.success = False
                response.message = f"internal error in {name}: {result.error}"
                result = response
            with self._service_calls_lock:
                self.service_calls[f"responses_{name}"] += 1
            return result

        return run

    # ------------------------------------------------------------------ callbacks (enqueue only)

    def _on_color(self, msg: Image) -> None:
        self._take(self.assembler.add_color, read_image(msg))

    def _on_compressed_color(self, msg: CompressedImage) -> None:
        self._take(self.assembler.add_color, read_compressed_image(msg))

    def _on_depth(self, msg: Image) -> None:
        self._take(self.assembler.add_depth, read_image(msg))

    def _on_compressed_depth(self, msg: CompressedImage) -> None:
        self._take(self.assembler.add_depth, read_compressed_image(msg))

    def _on_instances(self, msg: Image) -> None:
        self._take(self.assembler.add_instances, read_image(msg))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            record = read_camera_info(msg)
        except InputError as exc:
            self.assembler.rejected[exc.reason] += 1
            return
        # frames that waited for their first calibration are ready now
        self._enqueue(self.assembler.add_camera_info(record))

    def _on_pose(self, msg: PoseStamped | Odometry) -> None:
        try:
            record = read_pose(msg)
        except InputError as exc:
            self.assembler.rejected[exc.reason] += 1
            return
        self._enqueue(self.assembler.add_pose(record))

    def _on_tf(self, msg: TFMessage) -> None:
        self._on_transforms(msg, static=False)

    def _on_tf_static(self, msg: TFMessage) -> None:
        self._on_transforms(msg, static=True)

    def _on_transforms(self, msg: TFMessage, *, static: bool) -> None:
        try:
            records = read_transforms(msg)
        except InputError as exc:
            self.assembler.rejected[exc.reason] += 1
            return
        self._enqueue(self.assembler.add_transforms(records, static=static))

    def _expire(self) -> None:
        self._enqueue(self.assembler.expire())

    def _take(self, add: Any, record: ImageData) -> None:
        self._enqueue(add(record))

    def _enqueue(self, raws: list[RawFrame]) -> None:
        if not raws:
            return
        with self._lock:
            for raw in raws:
                if len(self._frames) >= self.config.frame_queue_size:
                    dropped = self._frames.popleft()
                    self.assembler.stats.skip(
                        "frame_queue_full", f"t={dropped.stamp_ns}: mapper slower than camera"
                    )
                self._frames.append(raw)
            self._wake.notify()

    def _on_incompatible_qos(self, topic: str, info: QoSRequestedIncompatibleQoSInfo) -> None:
        self.qos_incompatible[topic] += 1
        if self.qos_incompatible[topic] == 1:
            self.get_logger().error(
                f"a publisher of '{topic}' offers a QoS this subscription cannot use "
                f"(policy id {info.last_policy_kind}); with a best-effort camera driver set "
                "input_qos: sensor_data"
            )

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._frames:
                    self._wake.wait(timeout=0.5)
                if self._stop:
                    return
                raw = self._frames.popleft()
            # decoding happens here, not in a callback
            frame = self._assemble_stage.call(self.assembler.finish, raw)
            if frame is None or isinstance(frame, Failure):
                if isinstance(frame, Failure):
                    self.assembler.stats.skip(f"assembly_{frame.key}", str(frame.error))
                continue
            try:
                self.pipeline.add_frame(frame)
            except Diff2SceneError as exc:  # a closed pipeline during shutdown
                self.get_logger().warning(f"frame not mapped: {exc}")

    @property
    def map_frame(self) -> str:
        """The fixed frame of the map and of every output."""
        return self.assembler.map_frame

    # ------------------------------------------------------------------ outputs

    def labelled_arrays(self) -> cv.Cloud:
        """The map as arrays: voxel centres, colours by label, labels and their confidence.

        Labels index the vocabulary; voxels with too little evidence get
        :data:`~diff2scene_ros.conversions.UNKNOWN_LABEL` and keep their fused colour.
        """
        answer = self.session.labelling()
        snapshot, labelling = answer.snapshot, answer.labelling
        known = labelling.labels >= 0
        labels = np.full(snapshot.num_voxels, cv.UNKNOWN_LABEL, np.uint32)
        labels[known] = labelling.labels[known]
        colors = snapshot.colors.copy()
        if np.any(known):
            colors[known] = _palette(len(labelling.names))[labelling.labels[known]]
        return cv.Cloud(points_m=snapshot.points_m, rgb=colors, labels=labels,
                        scores=labelling.confidence.astype(np.float32))

    def publish_cloud(self) -> None:
        cloud = self.labelled_arrays()
        n = cloud.points_m.shape[0]
        keep: slice | NDArray[np.int64] = slice(None)
        if n > self.config.max_cloud_points:
            keep = np.linspace(0, n - 1, self.config.max_cloud_points).astype(np.int64)
        assert cloud.rgb is not None and cloud.labels is not None and cloud.scores is not None
        self.cloud_pub.publish(
            cv.arrays_to_cloud(
                cloud.points_m[keep],
                rgb=cloud.rgb[keep],
                labels=cloud.labels[keep],
                scores=cloud.scores[keep],
                frame_id=self.map_frame,
                stamp_ns=self.get_clock().now().nanoseconds,
            )
        )

    def diagnostics(self) -> dict[str, Any]:
        """Counters and rates: messages in, frames mapped, every skip, drop and gap by reason,
        and ``frames_unaccounted`` (see :meth:`frames_unaccounted`; 0 when the books close)."""
        now = time.monotonic()
        stats: dict[str, Any] = dict(self.assembler.counters())
        with self._lock:
            stats["frame_queue_depth"] = len(self._frames)
        stats.update(self.pipeline.stats_dict())
        # how the queries were served: a planner-facing promise is that none waits for a build
        stats.update({f"session_{k}": v for k, v in asdict(self.session.stats()).items()})
        stats.update({f"qos_incompatible_{t}": n for t, n in self.qos_incompatible.items()})
        with self._service_calls_lock:
            stats.update({f"service_{k}": n for k, n in self.service_calls.items()})
        rated = {k: int(stats.get(k, 0)) for k in ("color_msgs", "depth_msgs",
                                                   "frames_assembled", "frames_integrated")}
        elapsed = now - self._rate_since[0]
        if elapsed > 0:
            previous = self._rate_since[1]
            for key, value in rated.items():
                stats[f"{key}_per_s"] = (value - previous.get(key, 0)) / elapsed
        self._rate_since = (now, rated)
        stats["frames_unaccounted"] = self.frames_unaccounted(stats)
        stats["frames_in_mapper"] = self.frames_in_mapper(stats)
        return stats

    @staticmethod
    def frames_unaccounted(stats: dict[str, Any]) -> int:
        """Colour images received or estimated lost that no counter explains: each is a gap,
        skipped under a reason, waiting (for a partner, a pose, or the mapper), or assembled
        into a frame — and an assembled frame is integrated, skipped by the mapper, or in it
        now (``frames_in_mapper``). Counters are read one after another while frames move, so
        a live reading can be off by the frames in transit; at rest it is exact."""
        published = int(stats.get("color_msgs", 0)) + int(stats.get("input_gaps", 0))
        explained = (int(stats.get("frames_assembled", 0))
                     + int(stats.get("frames_skipped_input", 0))
                     + int(stats.get("input_gaps", 0))
                     + int(stats.get("frames_waiting", 0))
                     + int(stats.get("frame_queue_depth", 0)))
        return published - explained

    @staticmethod
    def frames_in_mapper(stats: dict[str, Any]) -> int:
        """Frames handed to the pipeline and not yet integrated or skipped by it."""
        done = int(stats.get("frames_integrated", 0)) + sum(
            int(v) for k, v in stats.items()
            if (k.startswith("frames_skipped_") and k != "frames_skipped_input")
            or k.startswith("integrate_errors_"))
        return int(stats.get("frames_assembled", 0)) - done

    def publish_diagnostics(self) -> None:
        stats = self.diagnostics()
        dropped = stats.get("skipped_frame_queue_full", 0) + stats.get("keyframes_dropped", 0)
        loss = float(stats.get("input_loss_ratio", 0.0))
        level, problems = DiagnosticStatus.OK, []
        if dropped:
            level = DiagnosticStatus.WARN
            problems.append(f"{dropped} frames/keyframes dropped")
        if loss > self.config.warn_input_loss_ratio:
            level = DiagnosticStatus.WARN
            problems.append(f"{100 * loss:.1f} % of camera frames lost before arrival "
                            f"({stats['input_gaps']} stamp gaps; try input_qos: reliable)")
        if self.qos_incompatible:
            level = DiagnosticStatus.ERROR
            problems.append(f"incompatible QoS on {sorted(self.qos_incompatible)}")
        for name, st in self.pipeline.stage_status().items():
            if st.state != "ok":
                level = DiagnosticStatus.ERROR
                problems.append(f"stage {name} {st.state}: {st.last_error}")
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: mapping",
            hardware_id="diff2scene",
            message=f"{stats['map_voxels']} voxels, {stats.get('frames_integrated', 0)} frames"
                    + ("; " + "; ".join(problems) if problems else ""),
            values=[KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                    for k, v in sorted(stats.items())],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    # ------------------------------------------------------------------ services

    def set_vocabulary(self, *, classes: list[str], name: str = "") -> LabellingConfig:
        """Label with ``classes`` (or the named vocabulary when empty); validated first,
        within bounds, because any participant of the DDS domain may call the service."""
        if len(classes) > MAX_VOCABULARY_CLASSES:
            raise InputError("vocabulary_too_large",
                             f"{len(classes)} classes; at most {MAX_VOCABULARY_CLASSES}")
        long_names = [c[:20] + "…" for c in classes if len(c) > MAX_CLASS_NAME_CHARS]
        if long_names or len(name) > MAX_CLASS_NAME_CHARS:
            raise InputError("class_name_too_long",
                             f"names are at most {MAX_CLASS_NAME_CHARS} characters: "
                             f"{long_names or [name[:20]]}")
        return self.session.set_vocabulary(classes=classes, name=name)

    def _on_set_vocabulary(
        self, request: SetVocabulary.Request, response: SetVocabulary.Response
    ) -> SetVocabulary.Response:
        try:
            config = self.set_vocabulary(classes=list(request.labels),
                                         name=request.vocabulary_name)
        except (Diff2SceneError, ValueError) as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success = True
        response.message = f"labelling with {len(config.class_names())} classes"
        return response

    def _on_text_query(
        self, request: TextQuery.Request, response: TextQuery.Response
    ) -> TextQuery.Response:
        # The whole answer, message building included, is priority work: fusion waits its
        # turn (boundedly) instead of holding the interpreter lock through it.
        with self.pipeline.priority.priority():
            return self._answer_text_query(request, response)

    def _answer_text_query(
        self, request: TextQuery.Request, response: TextQuery.Response
    ) -> TextQuery.Response:
        frame_id = self.map_frame
        stamp_ns = self.get_clock().now().nanoseconds
        response.points = cv.arrays_to_cloud(np.zeros((0, 3), np.float32), frame_id=frame_id,
                                             stamp_ns=stamp_ns)
        try:
            answer = self.session.query(
                request.query,
                score_threshold=request.score_threshold if request.score_threshold > 0 else None,
                top_k=request.top_k if request.top_k > 0 else _ALL,
                viewpoint_m=self._latest_camera_position(),
            )
            if answer.snapshot.num_voxels == 0:
                fresh = answer.freshness
                if fresh.latest_map_version > fresh.map_version:
                    # e.g. just after load_map: the loaded map's engine is still being built
                    raise InputError("map_not_ready",
                                     f"map version {fresh.latest_map_version} is being "
                                     "prepared for queries; ask again shortly")
                raise InputError("empty_map", "nothing mapped yet")
        except (Diff2SceneError, ValueError) as exc:
            response.success, response.message = False, str(exc)
            return response
        snapshot, result, fresh = answer.snapshot, answer.result, answer.freshness
        matched = result.matched
        # label = rank (1-based) of the returned instance a point belongs to, 0 = none
        labels = np.zeros(snapshot.num_voxels, np.uint32)
        for rank, instance in reversed(list(enumerate(result.instances, start=1))):
            labels[instance.voxel_indices] = rank
        response.points = cv.arrays_to_cloud(
            snapshot.points_m[matched],
            rgb=snapshot.colors[matched],
            labels=labels[matched],
            scores=result.scores[matched],
            frame_id=frame_id,
            stamp_ns=stamp_ns,
        )
        response.instances = cv.instances_to_msgs(result.instances)
        self.marker_pub.publish(cv.query_markers(response.instances, frame_id=frame_id,
                                                 stamp_ns=stamp_ns))
        self.detections_pub.publish(instance_msgs_to_detections(
            response.instances, frame_id=frame_id, stamp_ns=stamp_ns))
        response.success = True
        response.message = (
            f"{matched.size} points, {len(result.instances)} instances of "
            f"'{result.parsed.target}' in {result.timings_ms.get('total', 0.0):.0f} ms; "
            f"map version {fresh.map_version} (newest {fresh.latest_map_version}), "
            f"{fresh.map_age_s:.1f} s old"
        )
        return response

    def _latest_camera_position(self) -> NDArray[np.float64] | None:
        T = self.assembler.latest_camera_pose()
        return None if T is None else T[:3, 3]

    def _on_save_map(
        self, request: SaveMap.Request, response: SaveMap.Response
    ) -> SaveMap.Response:
        try:
            path = self.maps.for_save(request.path or self.config.default_map_name)
            self.pipeline.save(path)
        except (Diff2SceneError, OSError) as exc:
            response.success, response.message = False, f"not saved: {exc}"
            return response
        response.success = True
        response.message = f"saved {path.relative_to(self.maps.root)} in {self.maps.root}"
        return response

    def _on_load_map(
        self, request: LoadMap.Request, response: LoadMap.Response
    ) -> LoadMap.Response:
        try:
            path = self.maps.for_load(request.path)
            self.pipeline.load(path)
        except (Diff2SceneError, OSError) as exc:
            response.success, response.message = False, f"not loaded (map kept): {exc}"
            return response
        # build the loaded map's engine now rather than at the first query, which would
        # otherwise be answered from the map that was replaced
        self.session.refresh()
        response.success = True
        response.message = f"loaded {self.pipeline.map.num_voxels} voxels from {request.path}"
        return response

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Stop taking frames, finish or abandon queued keyframes within the shutdown budget,
        and save the map to ``autosave_path`` (atomically) when one is set."""
        budget_s = self.config.shutdown_timeout_s
        start = time.monotonic()
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        self._worker.join(timeout=budget_s * 0.2)
        report = self.pipeline.close(timeout_s=budget_s * 0.5,
                                     policy=self.config.shutdown_policy)
        self.session.close(timeout_s=budget_s * 0.1)
        log = self.get_logger()
        log.info(f"pipeline closed ({report.policy}): {report.keyframes_finished} keyframes "
                 f"finished, {report.keyframes_abandoned} abandoned in {report.duration_s:.1f} s")
        self.worker_stopped = report.worker_stopped
        if self.autosave is not None:
            try:
                path = self.maps.for_save(self.config.autosave_path)
                self.pipeline.save(path)
                log.info(f"map saved to {path} ({time.monotonic() - start:.1f} s after the "
                         "shutdown request)")
                self.autosaved = True
            except (Diff2SceneError, OSError) as exc:
                log.error(f"autosave to {self.autosave} failed: {exc}")


def _palette(num_labels: int) -> NDArray[np.uint8]:
    from diff2scene.mapping.render import label_palette

    return label_palette(num_labels)


def build_models(config: NodeConfig) -> tuple[Segmenter2D, TextEncoder]:
    """The configured 2D model and the text encoder of its embedding space."""
    from diff2scene.segmentation.factory import build_segmenter

    seg = config.segmenter
    if seg.kind == "diffusion":
        seg = replace(seg, profile=_profile_path(seg.profile))
        return build_segmenter(seg)
    if not config.scene_dir:
        raise ConfigError("segmenter.kind oracle needs scene_dir (a `diff2scene synth` scene)")
    return build_segmenter(seg, bag=Path(config.scene_dir).expanduser())


def _profile_path(name: str) -> str:
    """A profile name resolved against the installed package's share/ when run from colcon."""
    import os

    if Path(name).is_file() or os.environ.get("DIFF2SCENE_MODELS_DIR"):
        return name
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("diff2scene")) / "models" / f"{name}.yaml"
    except (ImportError, LookupError, ValueError):
        return name
    return str(candidate) if candidate.is_file() else name


#: Fast DDS transport the node uses unless the environment chooses one (see
#: :func:`choose_dds_transport`).
DEFAULT_FASTDDS_TRANSPORTS = "UDPv4"


def choose_dds_transport() -> str | None:
    """Make the node's Fast DDS participant receive over UDP unless told otherwise.

    Measured here (``bench/dds_input.py`` and its hold-out run): with Fast DDS's default
    transports a publisher on the same machine sends large images through shared memory,
    whose default segment is smaller than one burst of colour + depth fragments; samples are
    then dropped and repaired only at the writer's next heartbeat (3 s), so poses and
    calibration sent next to the images arrived up to 4 s late and frames were skipped
    (51-57 of 60 frames mapped at 848x480). With the node on UDP only, 60 of 60 in repeated
    runs. Must run before ``rclpy.init``; an explicit ``FASTDDS_BUILTIN_TRANSPORTS`` or an XML
    profile file is respected. Returns the transports set, or None if left alone.
    """
    import os

    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return None
    chosen = ("FASTDDS_BUILTIN_TRANSPORTS", "FASTRTPS_DEFAULT_PROFILES_FILE",
              "FASTDDS_DEFAULT_PROFILES_FILE")
    if any(os.environ.get(name) for name in chosen):
        return None
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = DEFAULT_FASTDDS_TRANSPORTS
    return DEFAULT_FASTDDS_TRANSPORTS


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run diff2scene diff2scene_node``.

    SIGINT and SIGTERM (what ``ros2 launch`` and systemd send) stop the executor; the node then
    shuts down within ``shutdown_timeout_s`` (queued work, autosave) and the process exits 0.
    """
    import os
    import signal
    import sys

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    from diff2scene_ros.executor import PoolExecutor

    choose_dds_transport()
    context = Context()
    rclpy.init(args=args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()
        # not from inside the handler: shutting the context down wakes the executor
        threading.Thread(target=context.try_shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node: MappingNode | None = None
    code = 0
    try:
        node = MappingNode(context=context)
        executor = PoolExecutor(num_threads=4, context=context)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Diff2SceneError as exc:
        sys.stderr.write(f"diff2scene_node: {exc}\n")
        code = 1
    except Exception:
        if not stop.is_set():
            raise
        # stopped while starting up: rclpy refuses to create entities on a shut-down context
    finally:
        if node is not None:
            budget_s = node.config.shutdown_timeout_s
            watchdog = threading.Timer(budget_s + 5.0, lambda: os._exit(2))
            watchdog.daemon = True
            watchdog.start()
            node.shutdown()
            node.destroy_node()
            watchdog.cancel()
        context.try_shutdown()
    # Everything is saved and logged. Leave without the interpreter's teardown of the native
    # libraries: it took 11 s here (far beyond the shutdown budget), and with a 2D model still
    # running Open3D's teardown turns the exit status into 1.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

"""The diff2scene mapping node: RGB-D + pose topics in, labelled cloud, markers and services out.

Thin by design (STYLE rule 3): callbacks only put messages into bounded buffers; one worker
thread turns them into :class:`~diff2scene.types.Frame` objects (via
:mod:`diff2scene_ros.conversions`) and feeds the core :class:`~diff2scene.pipeline.Pipeline`,
which runs the 2D model in its own worker. Every parameter is generated from the core's
dataclass configs (:mod:`diff2scene_ros.params`).

Pose input is a ``geometry_msgs/PoseStamped`` (``camera/pose``) or ``nav_msgs/Odometry``
(``odom``) of the camera in ``world_frame``; ``tf2_ros`` is not available from PyPI, so a robot
that only has TF relays the camera pose to one of these topics.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from diff2scene_interfaces.srv import LoadMap, SaveMap, SetVocabulary, TextQuery
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from numpy.typing import NDArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from diff2scene.errors import ConfigError, Diff2SceneError, InputError
from diff2scene.io.base import SkipStats
from diff2scene.io.sync import ApproximateSync
from diff2scene.io.transforms import T_BODY_OPTICAL, TransformBuffer
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.query import (
    EnsembleConfig,
    Labelling,
    LabellingConfig,
    QueryConfig,
    QueryEngine,
    label_map,
)
from diff2scene.segmentation.base import Segmenter2D, TextEncoder
from diff2scene.types import Frame
from diff2scene_ros import conversions as cv
from diff2scene_ros.params import declare_config

_CAMERA = "camera"

#: Node-relative input topics (remap them; the launch file does).
COLOR_TOPIC = "camera/color/image_raw"
DEPTH_TOPIC = "camera/depth/image_rect_raw"
CAMERA_INFO_TOPIC = "camera/color/camera_info"
POSE_TOPIC = "camera/pose"
ODOM_TOPIC = "odom"


@dataclass
class NodeConfig:
    """Everything the node adds around the core pipeline (whose config is ``pipeline``)."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    #: Fixed frame of the map, of the pose input and of every output (REP-105 "map" or "odom").
    world_frame: str = "map"
    #: "pose": geometry_msgs/PoseStamped on ``camera/pose``; "odometry": nav_msgs/Odometry on
    #: ``odom``.
    pose_source: Literal["pose", "odometry"] = "pose"
    #: True if the pose is that of the camera optical frame (z forward, REP-103 ``_optical``);
    #: False if it is a body frame (x forward, z up) and the optical rotation must be applied.
    pose_is_optical: bool = True
    #: Colour and depth images at most this far apart in time are paired, in seconds.
    sync_slop_s: float = 0.02
    #: Camera poses are interpolated between samples at most this far apart, in seconds.
    max_pose_gap_s: float = 0.5
    #: A synchronised frame waits at most this long for a pose newer than itself, in seconds;
    #: then it is skipped as "missing_pose".
    max_pose_wait_s: float = 0.5
    #: QoS of the image/pose subscriptions: "sensor_data" (best effort) or "reliable".
    input_qos: Literal["sensor_data", "reliable"] = "sensor_data"
    #: Synchronised frames waiting for the mapper at most; the oldest is dropped (and counted)
    #: when a newer one arrives, so a slow mapper sees the newest view.
    frame_queue_size: int = 2
    #: Model profile of the 2D branch: a name in the models directory ("odise_sd15" needs the
    #: real weights; "tiny" runs anywhere with random weights and means nothing) or a YAML path.
    segmenter_profile: str = "odise_sd15"
    #: Torch device of the 2D model ("cpu", "cuda", "cuda:1").
    segmenter_device: str = "cpu"
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
    #: File ``~/save_map`` writes when its request has an empty path.
    default_map_path: str = "diff2scene_map.npz"

    def __post_init__(self) -> None:
        positive = {
            "sync_slop_s": self.sync_slop_s,
            "max_pose_gap_s": self.max_pose_gap_s,
            "cloud_period_s": self.cloud_period_s,
            "diagnostics_period_s": self.diagnostics_period_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"NodeConfig.{name} must be > 0, got {value}")
        if self.max_pose_wait_s < 0:
            raise ConfigError("NodeConfig.max_pose_wait_s must be >= 0")
        if self.frame_queue_size < 1 or self.max_cloud_points < 1:
            raise ConfigError("NodeConfig: frame_queue_size and max_cloud_points must be >= 1")


@dataclass
class _Pair:
    stamp_ns: int
    color: Image
    depth: Image
    received_s: float


#: top_k standing for "all instances" (the engine wants a positive count).
_ALL = 2**31 - 1


@dataclass
class _MaskBankCopy:
    embeddings: dict[str, NDArray[np.float32]]

    @property
    def num_masks(self) -> int:
        return next((int(e.shape[0]) for e in self.embeddings.values()), 0)


@dataclass
class _MapSnapshot:
    """Copies of the map arrays a query or labelling reads (duck-types ``SemanticMap``)."""

    version: tuple[int, ...]
    coords: NDArray[np.int32]  # (M, 3)
    points_m: NDArray[np.float32]  # (M, 3)
    colors: NDArray[np.uint8]  # (M, 3)
    member_ids: NDArray[np.int32]  # (M, k)
    member_weights: NDArray[np.float32]  # (M, k)
    features_3d: dict[str, NDArray[np.float16]]  # space -> (M, D)
    mask_bank: _MaskBankCopy

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    @classmethod
    def of(cls, pipeline: Pipeline, version: tuple[int, ...]) -> _MapSnapshot:
        """Copy under ``pipeline.lock`` (the caller holds it)."""
        smap = pipeline.map
        return cls(
            version=version,
            coords=smap.coords.copy(),
            points_m=smap.points_m,
            colors=smap.colors.copy(),
            member_ids=smap.member_ids.copy(),
            member_weights=smap.member_weights.copy(),
            features_3d={s: f.copy() for s, f in smap.features_3d.items()},
            mask_bank=_MaskBankCopy({s: e.copy() for s, e in smap.mask_bank.embeddings.items()}),
        )


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
        """``segmenter``/``text_encoder`` default to the ones of ``segmenter_profile``."""
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
        self.labelling_config = cfg.labelling
        #: Guards the cached snapshot/engine/labelling below; held while they are rebuilt.
        self._semantic_lock = threading.Lock()
        self._snapshot: _MapSnapshot | None = None
        self._engine: QueryEngine | None = None
        self._labelling: tuple[tuple[Any, ...], Labelling] | None = None

        self.input_stats = SkipStats()
        self._lock = threading.Lock()  # guards the sync, poses, camera info and frame queue
        self._sync: ApproximateSync[Image, Image] = ApproximateSync(
            slop_ns=round(cfg.sync_slop_s * 1e9), stats=self.input_stats
        )
        self._poses = TransformBuffer(max_interpolation_gap_ns=round(cfg.max_pose_gap_s * 1e9))
        self._camera_info: CameraInfo | None = None
        self._frames: deque[_Pair] = deque()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._counts: Counter[str] = Counter()
        #: (monotonic time, counters) at the last diagnostics, for rates.
        self._rate_since: tuple[float, dict[str, int]] = (time.monotonic(), {})

        qos = (
            qos_profile_sensor_data
            if cfg.input_qos == "sensor_data"
            else QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        )
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, COLOR_TOPIC, self._on_color, qos,
                                 callback_group=inputs)
        self.create_subscription(Image, DEPTH_TOPIC, self._on_depth, qos,
                                 callback_group=inputs)
        self.create_subscription(CameraInfo, CAMERA_INFO_TOPIC, self._on_camera_info,
                                 qos, callback_group=inputs)
        if cfg.pose_source == "pose":
            self.create_subscription(PoseStamped, POSE_TOPIC, self._on_pose, qos,
                                     callback_group=inputs)
        else:
            self.create_subscription(Odometry, ODOM_TOPIC, self._on_pose, qos,
                                     callback_group=inputs)

        latched = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.cloud_pub = self.create_publisher(PointCloud2, "~/labelled_cloud", latched)
        self.marker_pub = self.create_publisher(MarkerArray, "~/query_markers", latched)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        services = ReentrantCallbackGroup()
        self.create_service(TextQuery, "~/text_query", self._on_text_query,
                            callback_group=services)
        self.create_service(SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary,
                            callback_group=services)
        self.create_service(SaveMap, "~/save_map", self._on_save_map, callback_group=services)
        self.create_service(LoadMap, "~/load_map", self._on_load_map, callback_group=services)

        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(cfg.cloud_period_s, self.publish_cloud, callback_group=timers)
        self.create_timer(cfg.diagnostics_period_s, self.publish_diagnostics,
                          callback_group=timers)

        self._worker = threading.Thread(target=self._work, name="diff2scene_frames", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"mapping in '{cfg.world_frame}' at {cfg.pipeline.mapper.voxel_size_m} m voxels, "
            f"pose from {cfg.pose_source}, 2D model '{cfg.segmenter_profile}'"
        )

    # ------------------------------------------------------------------ callbacks (enqueue only)

    def _on_color(self, msg: Image) -> None:
        self._add_images(self._sync.add_a, msg, "color_msgs")

    def _on_depth(self, msg: Image) -> None:
        self._add_images(self._sync.add_b, msg, "depth_msgs")

    def _add_images(self, add: Any, msg: Image, counter: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._counts[counter] += 1
            for stamp_ns, color, depth in add(cv.stamp_to_ns(msg.header.stamp), msg):
                if len(self._frames) >= self.config.frame_queue_size:
                    self._frames.popleft()
                    self.input_stats.skip("frame_queue_full", "mapper slower than the camera")
                self._frames.append(_Pair(stamp_ns, color, depth, now))
            self._wake.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._camera_info = msg

    def _on_pose(self, msg: PoseStamped | Odometry) -> None:
        frame_id = str(msg.header.frame_id).lstrip("/")
        try:
            if frame_id and frame_id != self.config.world_frame:
                raise InputError(
                    "pose_frame_mismatch",
                    f"pose in '{frame_id}', map in '{self.config.world_frame}' (set world_frame)",
                )
            T = cv.pose_msg_to_matrix(msg)
        except InputError as exc:
            with self._lock:
                self._counts["pose_msgs"] += 1
                self.input_stats.skip(exc.reason, exc.detail)
            return
        if not self.config.pose_is_optical:
            T = T @ T_BODY_OPTICAL
        with self._lock:
            self._counts["pose_msgs"] += 1
            try:
                self._poses.add(self.config.world_frame, _CAMERA,
                                cv.stamp_to_ns(msg.header.stamp), T)
            except InputError as exc:
                self.input_stats.skip(exc.reason, exc.detail)
            self._wake.notify()

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._ready_pair():
                    self._wake.wait(timeout=0.1)
                if self._stop:
                    return
                pair = self._frames.popleft()
                info = self._camera_info
                pose = self._pose_at(pair.stamp_ns)
            try:
                frame = self._assemble(pair, info, pose)
            except InputError as exc:
                with self._lock:
                    self.input_stats.skip(exc.reason, exc.detail)
                continue
            try:
                if self.pipeline.add_frame(frame):
                    self.input_stats.delivered += 1
            except Diff2SceneError as exc:  # a closed pipeline during shutdown
                self.get_logger().warning(f"frame not mapped: {exc}")

    def _ready_pair(self) -> bool:
        """True if the oldest frame has a pose after it, or waited long enough for one."""
        if not self._frames:
            return False
        pair = self._frames[0]
        latest = self._poses.latest_stamp_ns(self.config.world_frame, _CAMERA)
        waited = time.monotonic() - pair.received_s
        return (latest is not None and latest >= pair.stamp_ns) or (
            waited >= self.config.max_pose_wait_s
        )

    def _pose_at(self, stamp_ns: int) -> NDArray[np.float64] | InputError:
        try:
            return self._poses.lookup(self.config.world_frame, _CAMERA, stamp_ns)
        except InputError as exc:
            return exc

    def _assemble(
        self, pair: _Pair, info: CameraInfo | None, pose: NDArray[np.float64] | InputError
    ) -> Frame:
        if isinstance(pose, InputError):
            raise pose
        if info is None:
            raise InputError("missing_camera_info", "no CameraInfo received yet")
        intrinsics = cv.camera_info_to_intrinsics(info)
        rgb = cv.image_to_rgb(pair.color)
        depth = cv.image_to_depth_m(pair.depth)
        if rgb.shape[:2] != depth.shape:
            raise InputError("size_mismatch", f"colour {rgb.shape[:2]} vs depth {depth.shape}")
        if (intrinsics.height, intrinsics.width) != depth.shape:
            raise InputError(
                "camera_info_size_mismatch",
                f"camera_info {intrinsics.width}x{intrinsics.height} vs depth "
                f"{depth.shape[1]}x{depth.shape[0]}",
            )
        self._counts["frames_assembled"] += 1
        return Frame(
            stamp_ns=pair.stamp_ns,
            rgb=rgb,
            depth_m=depth,
            intrinsics=intrinsics,
            T_world_camera=pose,
            index=self._counts["frames_assembled"] - 1,
        )

    # ------------------------------------------------------------------ outputs

    def _map_version(self) -> tuple[int, int, int, int]:
        """Changes whenever memberships, voxels or masks may have changed."""
        p = self.pipeline
        return (id(p.map), p.stats.keyframes_segmented, p.map.num_voxels,
                p.map.mask_bank.num_masks)

    def semantic_state(self) -> tuple[_MapSnapshot, QueryEngine]:
        """A consistent copy of the map and a query engine over it, rebuilt when it changed.

        Scoring works on the copy, so mapping goes on while a query or a labelling runs; only
        the copy itself is taken under the pipeline's lock.
        """
        with self._semantic_lock:
            with self.pipeline.lock:
                version = self._map_version()
                if self._snapshot is None or self._snapshot.version != version:
                    self._snapshot = _MapSnapshot.of(self.pipeline, version)
                    self._engine = None
            snapshot = self._snapshot
            if self._engine is None:
                self._engine = QueryEngine.from_map(
                    snapshot, self.text_encoder, self.segmenter, self.config.query,
                    ensemble=self.config.ensemble,
                )
            return snapshot, self._engine

    def labelling(self) -> tuple[_MapSnapshot, Labelling]:
        """Per-voxel labels of the current vocabulary (cached until the map changes)."""
        snapshot, engine = self.semantic_state()
        with self._semantic_lock:
            key = (snapshot.version, self.labelling_config)
            if self._labelling is None or self._labelling[0] != key:
                result = label_map(engine.scorer, snapshot.mask_bank.embeddings,
                                   self.text_encoder, self.segmenter, self.labelling_config)
                self._labelling = (key, result)
            return snapshot, self._labelling[1]

    def labelled_arrays(self) -> cv.Cloud:
        """The map as arrays: voxel centres, colours by label, labels and their confidence.

        Labels index the vocabulary; voxels with too little evidence get
        :data:`~diff2scene_ros.conversions.UNKNOWN_LABEL` and keep their fused colour.
        """
        snapshot, labelling = self.labelling()
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
                frame_id=self.config.world_frame,
                stamp_ns=self.get_clock().now().nanoseconds,
            )
        )

    def diagnostics(self) -> dict[str, Any]:
        """Counters and rates: messages in, frames mapped, every skip and drop by reason."""
        now = time.monotonic()
        with self._lock:
            stats: dict[str, Any] = self.input_stats.as_dict()
            stats["frame_queue_depth"] = len(self._frames)
            counts = {k: self._counts[k] for k in ("color_msgs", "depth_msgs", "pose_msgs")}
            stats.update(counts)
            counts["delivered"] = self.input_stats.delivered
            elapsed = now - self._rate_since[0]
            if elapsed > 0:
                previous = self._rate_since[1]
                for key, value in counts.items():
                    stats[f"{key}_per_s"] = (value - previous.get(key, 0)) / elapsed
            self._rate_since = (now, counts)
        stats.update(self.pipeline.stats_dict())
        return stats

    def publish_diagnostics(self) -> None:
        stats = self.diagnostics()
        dropped = stats.get("skipped_frame_queue_full", 0) + stats.get("keyframes_dropped", 0)
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if dropped else DiagnosticStatus.OK,
            name=f"{self.get_fully_qualified_name()}: mapping",
            hardware_id="diff2scene",
            message=f"{stats['map_voxels']} voxels, {dropped} frames/keyframes dropped",
            values=[KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                    for k, v in sorted(stats.items())],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    # ------------------------------------------------------------------ services

    def set_vocabulary(self, *, classes: list[str], name: str = "") -> LabellingConfig:
        """Label with ``classes`` (or the named vocabulary when empty); validated first."""
        from diff2scene.segmentation.vocabularies import build_vocabulary, get_vocabulary_names

        if not classes and not name:
            raise InputError("empty_vocabulary", "give labels or a vocabulary name")
        config = replace(self.labelling_config, classes=tuple(classes), vocabulary=name or
                         self.labelling_config.vocabulary)
        # embed now: a bad vocabulary is refused here, not in the next cloud
        build_vocabulary(classes or get_vocabulary_names(name), self.text_encoder,
                         templates=config.templates)
        with self._semantic_lock:
            self.labelling_config = config
        return config

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
        frame_id = self.config.world_frame
        stamp_ns = self.get_clock().now().nanoseconds
        response.points = cv.arrays_to_cloud(np.zeros((0, 3), np.float32), frame_id=frame_id,
                                             stamp_ns=stamp_ns)
        try:
            snapshot, engine = self.semantic_state()
            if snapshot.num_voxels == 0:
                raise InputError("empty_map", "nothing mapped yet")
            engine.viewpoint_m = self._latest_camera_position()
            result = engine.query(
                request.query,
                request.score_threshold if request.score_threshold > 0 else None,
                request.top_k if request.top_k > 0 else _ALL,
            )
        except (Diff2SceneError, ValueError) as exc:
            response.success, response.message = False, str(exc)
            return response
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
        response.success = True
        response.message = (
            f"{matched.size} points, {len(result.instances)} instances of "
            f"'{result.parsed.target}' in {result.timings_ms.get('total', 0.0):.0f} ms"
        )
        return response

    def _latest_camera_position(self) -> NDArray[np.float64] | None:
        with self._lock:
            latest = self._poses.latest_stamp_ns(self.config.world_frame, _CAMERA)
            if latest is None:
                return None
            return self._poses.lookup(self.config.world_frame, _CAMERA, latest)[:3, 3].copy()

    def _on_save_map(
        self, request: SaveMap.Request, response: SaveMap.Response
    ) -> SaveMap.Response:
        path = Path(request.path or self.config.default_map_path).expanduser()
        try:
            written = self.pipeline.save(path)
        except (Diff2SceneError, OSError) as exc:
            response.success, response.message = False, f"not saved: {exc}"
            return response
        response.success, response.message = True, f"saved {written}"
        return response

    def _on_load_map(
        self, request: LoadMap.Request, response: LoadMap.Response
    ) -> LoadMap.Response:
        if not request.path:
            response.success, response.message = False, "empty path"
            return response
        try:
            self.pipeline.load(Path(request.path).expanduser())
        except (Diff2SceneError, OSError) as exc:
            response.success, response.message = False, f"not loaded (map kept): {exc}"
            return response
        response.success = True
        response.message = f"loaded {self.pipeline.map.num_voxels} voxels from {request.path}"
        return response

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Stop the frame worker and the pipeline's 2D worker; the map stays usable."""
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        self._worker.join(timeout=10)
        try:
            self.pipeline.close()
        except Diff2SceneError as exc:  # shutting down anyway: report, do not raise
            self.get_logger().error(f"pipeline did not close cleanly: {exc}")


def _palette(num_labels: int) -> NDArray[np.uint8]:
    from diff2scene.mapping.render import label_palette

    return label_palette(num_labels)


def build_models(config: NodeConfig) -> tuple[Segmenter2D, TextEncoder]:
    """The 2D model and text encoder of ``config.segmenter_profile`` (CLIP text tower)."""
    from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter

    return build_segmenter(
        SegmenterConfig(
            kind="diffusion",
            profile=_profile_path(config.segmenter_profile),
            device=config.segmenter_device,
        )
    )


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


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run diff2scene diff2scene_node``."""
    import sys

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    context = Context()
    rclpy.init(args=args, context=context)
    node: MappingNode | None = None
    try:
        node = MappingNode(context=context)
        executor = MultiThreadedExecutor(num_threads=4, context=context)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Diff2SceneError as exc:
        sys.stderr.write(f"diff2scene_node: {exc}\n")
        raise SystemExit(1) from exc
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        context.try_shutdown()


if __name__ == "__main__":
    main()

"""The diff2scene mapping node: RGB-D + pose (TF or a topic) in, labelled cloud, markers and
services out.

A message adapter around the core's :class:`~diff2scene.runtime.MappingRuntime` — the object a
bag replay drives too. Callbacks turn each message into a record
(:mod:`diff2scene.io.messages`) and hand it to the runtime, which pairs, calibrates and poses
frames, queues them (bounded, oldest dropped and counted) for its one frame worker, maps them
and answers queries. The node keeps subscriptions, timers, services, parameters and message
conversion; every parameter is generated from :class:`~diff2scene_ros.config.NodeConfig`
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
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from diff2scene_interfaces.srv import LoadMap, SaveMap, SetVocabulary, TextQuery
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from diff2scene.errors import Diff2SceneError, InputError
from diff2scene.io.messages import (
    read_camera_info,
    read_compressed_image,
    read_image,
    read_pose,
    read_transforms,
)
from diff2scene.mapping.mapfiles import MapDir
from diff2scene.runtime import MappingRuntime, build_models
from diff2scene.segmentation.base import Segmenter2D, TextEncoder
from diff2scene.supervise import Failure
from diff2scene_ros import conversions as cv
from diff2scene_ros.config import NodeConfig
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

#: top_k standing for "all instances" (the engine wants a positive count).
_ALL = 2**31 - 1
#: Diagnostic levels of the runtime's health verdicts.
_LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN,
           "error": DiagnosticStatus.ERROR}


class MappingNode(Node):
    """ROS 2 front end of :class:`~diff2scene.runtime.MappingRuntime`."""

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
        cfg = declare_config(self, NodeConfig())
        if cfg.pipeline.memory_budget_mb and not cfg.pipeline.spill_dir:
            # Spilled blocks wait beside the maps they belong to.
            spill = Path(cfg.map_dir).expanduser() / "spill"
            cfg = replace(cfg, pipeline=replace(cfg.pipeline, spill_dir=str(spill)))
        self.config = cfg
        if segmenter is None or text_encoder is None:
            built_segmenter, built_encoder = build_models(cfg)
            segmenter = segmenter or built_segmenter
            text_encoder = text_encoder or built_encoder
        #: Frames, map, queries: everything but the ROS side. Pose waits run on wall time,
        #: because messages of different topics arrive with different delays.
        self.runtime = MappingRuntime(cfg, segmenter=segmenter, text_encoder=text_encoder,
                                      clock_ns=time.monotonic_ns)
        self.maps = MapDir(cfg.map_dir, create=True)
        self.autosave = self.maps.resolve(cfg.autosave_path) if cfg.autosave_path else None
        #: Whether the shutdown autosave happened, and whether the 2D worker stopped in time.
        self.autosaved = False
        self.worker_stopped = True
        #: Subscriptions whose publishers offer an incompatible QoS, by topic.
        self.qos_incompatible: Counter[str] = Counter()
        #: Service requests taken and responses handed back to rclpy, by "requests_<service>" /
        #: "responses_<service>": a client that misses an answer the node counted as sent lost
        #: it in transport, not in the node.
        self.service_calls: Counter[str] = Counter()
        self._service_calls_lock = threading.Lock()
        self._subscribe_inputs()
        self._create_outputs()
        self.get_logger().info(
            f"mapping in '{cfg.input.world_frame}' at {cfg.pipeline.mapper.voxel_size_m} m "
            f"voxels, pose from {cfg.input.pose_source}, input QoS {cfg.input_qos}, 2D model "
            f"'{cfg.segmenter.kind}' ({cfg.segmenter.profile})"
        )

    def _subscribe_inputs(self) -> None:
        cfg, rt = self.config, self.runtime
        qos = QoSProfile(
            depth=cfg.image_queue_depth,
            reliability=(ReliabilityPolicy.BEST_EFFORT if cfg.input_qos == "sensor_data"
                         else ReliabilityPolicy.RELIABLE),
        )
        # Poses, calibration and TF are small and must not be lost while the images of the
        # same instant are handled: a deeper reader queue for them (measured: at depth 10 a
        # busy node lost a quarter of the poses of an 848x480 stream).
        small = QoSProfile(depth=100, reliability=qos.reliability, durability=qos.durability)

        def subscribe(msg_type: Any, topic: str, callback: Callable[[Any], None],
                      profile: QoSProfile = small) -> None:
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
                      lambda m: rt.add_color(read_compressed_image(m)), qos)
        else:
            subscribe(Image, COLOR_TOPIC, lambda m: rt.add_color(read_image(m)), qos)
        if cfg.depth_transport == "compressedDepth":
            subscribe(CompressedImage,
                      f"{self.resolve_topic_name(DEPTH_TOPIC)}/compressedDepth",
                      lambda m: rt.add_depth(read_compressed_image(m)), qos)
        else:
            subscribe(Image, DEPTH_TOPIC, lambda m: rt.add_depth(read_image(m)), qos)
        subscribe(CameraInfo, CAMERA_INFO_TOPIC, self._reading(read_camera_info,
                                                               rt.add_camera_info))
        source = cfg.input.pose_source
        if source in ("auto", "pose"):
            subscribe(PoseStamped, POSE_TOPIC, self._reading(read_pose, rt.add_pose))
        if source in ("auto", "odometry"):
            subscribe(Odometry, ODOM_TOPIC, self._reading(read_pose, rt.add_pose))
        if source in ("auto", "tf"):
            # the QoS tf2_ros listeners use: /tf reliable, /tf_static latched
            subscribe(TFMessage, "/tf", self._reading(read_transforms, rt.add_transforms),
                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
            subscribe(TFMessage, "/tf_static", self._reading(
                read_transforms, functools.partial(rt.add_transforms, static=True)),
                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL))
        if cfg.segmenter.kind == "oracle":
            subscribe(Image, INSTANCE_TOPIC, lambda m: rt.add_instances(read_image(m)), qos)
        # frames whose pose never comes are resolved even when no further message arrives
        self.create_timer(0.1, self._supervised("expire_frames", rt.expire),
                          callback_group=MutuallyExclusiveCallbackGroup())

    def _reading(self, read: Callable[[Any], Any], add: Callable[[Any], None]
                 ) -> Callable[[Any], None]:
        """A callback that converts a message with ``read`` and hands it to ``add``; a
        message ``read`` refuses is counted (with its stamp, when it has one), never raised
        into the executor."""
        def callback(msg: Any) -> None:
            try:
                record = read(msg)
            except InputError as exc:
                self.runtime.assembler.reject(exc.reason, stamp_ns=exc.stamp_ns)
                return
            add(record)

        return callback

    def _create_outputs(self) -> None:
        cfg = self.config
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
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(cfg.cloud_period_s, self._supervised("publish_cloud",
                                                               self.publish_cloud),
                          callback_group=timers)
        self.create_timer(cfg.diagnostics_period_s, self._supervised(
            "diagnostics", self.publish_diagnostics), callback_group=timers)

    # ------------------------------------------------------------------ supervision

    def _supervised(self, stage: str, fn: Any) -> Any:
        """``fn`` run through the pipeline's supervisor: an exception is counted, logged once
        and reported in /diagnostics instead of ending the executor."""
        supervised_stage = self.runtime.pipeline.supervisor.stage(stage)

        def run(*args: Any) -> Any:
            return supervised_stage.call(fn, *args)

        return run

    def _supervised_service(self, name: str, handler: Any) -> Any:
        """A service handler whose unexpected failures still answer (success False)."""
        stage = self.runtime.pipeline.supervisor.stage(f"service_{name}")

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

    def _on_incompatible_qos(self, topic: str, info: QoSRequestedIncompatibleQoSInfo) -> None:
        self.qos_incompatible[topic] += 1
        if self.qos_incompatible[topic] == 1:
            self.get_logger().error(
                f"a publisher of '{topic}' offers a QoS this subscription cannot use "
                f"(policy id {info.last_policy_kind}); with a best-effort camera driver set "
                "input_qos: sensor_data"
            )

    # ------------------------------------------------------------------ outputs

    @property
    def map_frame(self) -> str:
        """The fixed frame of the map and of every output."""
        return self.runtime.map_frame

    def _stamp_ns(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def publish_cloud(self) -> None:
        cloud = self.runtime.labelled_cloud(max_points=self.config.max_cloud_points)
        self.cloud_pub.publish(cv.arrays_to_cloud(
            cloud.points_m, rgb=cloud.rgb, labels=cloud.labels, scores=cloud.scores,
            frame_id=self.map_frame, stamp_ns=self._stamp_ns(),
        ))  # fmt: skip

    def diagnostics(self) -> dict[str, Any]:
        """The runtime's counters and rates (see
        :meth:`~diff2scene.runtime.MappingRuntime.diagnostics`), with the node's QoS and
        service counters."""
        stats = self.runtime.diagnostics()
        stats.update({f"qos_incompatible_{t}": n for t, n in self.qos_incompatible.items()})
        with self._service_calls_lock:
            stats.update({f"service_{k}": n for k, n in self.service_calls.items()})
        return stats

    def publish_diagnostics(self) -> None:
        stats = self.diagnostics()
        qos = self.qos_incompatible
        health = self.runtime.health(stats, errors=[f"incompatible QoS on {sorted(qos)}"]
                                     if qos else [])
        status = DiagnosticStatus(
            level=_LEVELS[health.level],
            name=f"{self.get_fully_qualified_name()}: mapping",
            hardware_id="diff2scene",
            message=health.summary(stats),
            values=[KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                    for k, v in sorted(stats.items())],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    # ------------------------------------------------------------------ services

    def _on_set_vocabulary(
        self, request: SetVocabulary.Request, response: SetVocabulary.Response
    ) -> SetVocabulary.Response:
        try:
            config = self.runtime.set_vocabulary(classes=list(request.labels),
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
        # The whole answer, message building included, is priority work.
        with self.runtime.priority():
            return self._answer_text_query(request, response)

    def _answer_text_query(
        self, request: TextQuery.Request, response: TextQuery.Response
    ) -> TextQuery.Response:
        frame_id, stamp_ns = self.map_frame, self._stamp_ns()
        try:
            answer = self.runtime.query(
                request.query,
                score_threshold=request.score_threshold if request.score_threshold > 0 else None,
                top_k=request.top_k if request.top_k > 0 else _ALL,
            )
        except (Diff2SceneError, ValueError) as exc:
            response.points = cv.arrays_to_cloud(np.zeros((0, 3), np.float32), frame_id=frame_id,
                                                 stamp_ns=stamp_ns)
            response.success, response.message = False, str(exc)
            return response
        response.points = cv.arrays_to_cloud(
            answer.points_m, rgb=answer.rgb, labels=answer.rank_labels, scores=answer.scores,
            frame_id=frame_id, stamp_ns=stamp_ns,
        )  # fmt: skip
        response.instances = cv.instances_to_msgs(answer.result.instances)
        self.marker_pub.publish(cv.query_markers(response.instances, frame_id=frame_id,
                                                 stamp_ns=stamp_ns))
        self.detections_pub.publish(instance_msgs_to_detections(
            response.instances, frame_id=frame_id, stamp_ns=stamp_ns))
        response.success, response.message = True, answer.summary()
        return response

    def _on_save_map(
        self, request: SaveMap.Request, response: SaveMap.Response
    ) -> SaveMap.Response:
        try:
            path = self.maps.for_save(request.path or self.config.default_map_name)
            self.runtime.save(path)
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
            voxels = self.runtime.load(self.maps.for_load(request.path))
        except (Diff2SceneError, OSError) as exc:
            response.success, response.message = False, f"not loaded (map kept): {exc}"
            return response
        response.success = True
        response.message = f"loaded {voxels} voxels from {request.path}"
        return response

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Stop taking frames, finish or abandon queued keyframes within the shutdown budget,
        and save the map to ``autosave_path`` (atomically) when one is set."""
        log = self.get_logger()
        save_to = None
        if self.autosave is not None:
            try:  # checked now: a file that is not a map may have appeared there since
                save_to = self.maps.for_save(self.config.autosave_path)
            except (Diff2SceneError, OSError) as exc:
                log.error(f"autosave to {self.autosave} refused: {exc}")
        report = self.runtime.shutdown(save_to=save_to)
        close = report.close
        log.info(f"pipeline closed ({close.policy}): {close.keyframes_finished} keyframes "
                 f"finished, {close.keyframes_abandoned} abandoned in {close.duration_s:.1f} s")
        self.worker_stopped = close.worker_stopped
        self.autosaved = report.saved is not None
        if report.saved is not None:
            log.info(f"map saved to {report.saved} ({report.duration_s:.1f} s after the "
                     "shutdown request)")
        elif report.save_error:
            log.error(f"autosave to {self.autosave} failed: {report.save_error}")


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

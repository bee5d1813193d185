"""The mapping node end to end over DDS: synthetic RGB-D + pose topics in, cloud/services out.

One module-scoped node (tiny random-weight 2D model of the real classes) receives frames of a
flat textured wall from a publisher node in the same process; every exchange goes through
DDS. Waits poll a condition with a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "diff2scene_interfaces",
    reason="diff2scene_interfaces is not built: run `make interfaces` and use the Makefile's "
    "RUN_ENV (PYTHONPATH/LD_LIBRARY_PATH of ros2_ws/install/diff2scene_interfaces)",
)

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from diff2scene_interfaces.srv import LoadMap, SaveMap, SetVocabulary, TextQuery
from geometry_msgs.msg import PoseStamped
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from diff2scene.runtime import build_models
from diff2scene.segmentation.factory import SegmenterConfig
from diff2scene.types import CameraIntrinsics
from diff2scene_ros import conversions as cv
from diff2scene_ros.config import NodeConfig
from diff2scene_ros.executor import PoolExecutor
from diff2scene_ros.node import MappingNode

pytestmark = pytest.mark.ros

INTRINSICS = CameraIntrinsics(width=160, height=120, fx=100.0, fy=100.0, cx=79.5, cy=59.5)
WALL_DEPTH_M = 1.5
WAIT_S = 120.0


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Harness:
    context: Context
    node: MappingNode
    helper: Node
    executor: PoolExecutor
    clouds: list[PointCloud2] = field(default_factory=list)
    diagnostics: list[DiagnosticArray] = field(default_factory=list)
    publishers: dict[str, Any] = field(default_factory=dict)

    def publish_frame(
        self, i: int, *, depth_encoding: str = "16UC1", pose: bool = True,
        mislabel_depth: bool = False,
    ) -> None:
        stamp_ns = 1_000_000_000 + i * 100_000_000
        rng = np.random.default_rng(i)
        # a textured wall: stripes plus noise so the 2D model has something to look at
        rgb = np.zeros((120, 160, 3), np.uint8)
        rgb[:, :, 0] = (np.arange(160) * 3 % 256).astype(np.uint8)
        rgb[:, :, 1] = 120
        rgb[:, :, 2] = rng.integers(0, 60, (120, 160), dtype=np.uint8)
        depth = np.full((120, 160), WALL_DEPTH_M, np.float32)
        T = np.eye(4)
        T[0, 3] = 0.02 * i
        pub = self.publishers
        pub["info"].publish(cv.intrinsics_to_camera_info(INTRINSICS, frame_id="cam",
                                                         stamp_ns=stamp_ns))
        if pose:
            pub["pose"].publish(cv.matrix_to_pose_stamped(T, frame_id="map", stamp_ns=stamp_ns))
        depth_msg = cv.depth_to_image(depth, frame_id="cam", stamp_ns=stamp_ns,
                                      encoding=depth_encoding)
        if mislabel_depth:
            depth_msg.encoding = "8UC1"
        pub["depth"].publish(depth_msg)
        pub["color"].publish(cv.rgb_to_image(rgb, frame_id="cam", stamp_ns=stamp_ns))

    def call(self, srv_type: Any, name: str, request: Any) -> Any:
        client = self.helper.create_client(srv_type, f"diff2scene/{name}")
        try:
            assert client.wait_for_service(timeout_sec=30.0), f"{name} not offered"
            future = client.call_async(request)
            _wait_for(future.done, f"{name} response", 60.0)
            return future.result()
        finally:
            self.helper.destroy_client(client)


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    return build_models(NodeConfig(segmenter=SegmenterConfig(kind="diffusion", profile="tiny")))


@pytest.fixture(scope="module")
def harness(models: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Harness]:
    context = Context()
    rclpy.init(context=context, domain_id=1 + (os.getpid() + 37) % 100)
    namespace = f"/t{uuid.uuid4().hex[:8]}"
    overrides = [
        Parameter("cloud_period_s", value=0.3),
        Parameter("diagnostics_period_s", value=0.3),
        Parameter("input.max_pose_wait_s", value=0.3),
        Parameter("frame_queue_size", value=50),
        Parameter("input_qos", value="reliable"),
        Parameter("pipeline.mapper.depth_max_m", value=3.0),
        Parameter("pipeline.mapper.device", value="CPU:0"),
        Parameter("pipeline.keyframes.min_translation_m", value=0.05),
        Parameter("pipeline.overflow_policy", value="block"),
        Parameter("map_dir", value=str(tmp_path_factory.mktemp("maps"))),
    ]
    segmenter, encoder = models
    node = MappingNode(segmenter=segmenter, text_encoder=encoder, context=context,
                       namespace=namespace, parameter_overrides=overrides)
    helper = Node("test_helper", context=context, namespace=namespace)
    executor = PoolExecutor(num_threads=4, context=context)  # as the node's main()
    executor.add_node(node)
    executor.add_node(helper)
    h = Harness(context, node, helper, executor)
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    for key, msg_type, topic in (
        ("color", Image, "camera/color/image_raw"),
        ("depth", Image, "camera/depth/image_rect_raw"),
        ("info", CameraInfo, "camera/color/camera_info"),
        ("pose", PoseStamped, "camera/pose"),
    ):
        h.publishers[key] = helper.create_publisher(msg_type, topic, reliable)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    helper.create_subscription(PointCloud2, "diff2scene/labelled_cloud", h.clouds.append,
                               latched)
    helper.create_subscription(DiagnosticArray, "/diagnostics", h.diagnostics.append, 10)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        _wait_for(lambda: helper.count_subscribers(f"{namespace}/camera/color/image_raw") > 0
                  and helper.count_subscribers(f"{namespace}/camera/pose") > 0,
                  "the node's subscriptions to be matched", 30.0)
        yield h
    finally:
        executor.shutdown()
        spinner.join(timeout=10)
        node.shutdown()
        node.destroy_node()
        helper.destroy_node()
        context.try_shutdown()


@pytest.fixture(scope="module")
def mapped(harness: Harness) -> Harness:
    """The harness after eight good frames went through the node and the 2D model."""
    for i in range(8):
        harness.publish_frame(i)
    pipeline = harness.node.runtime.pipeline
    _wait_for(lambda: harness.node.runtime.pipeline.stats.frames_in >= 8, "8 frames mapped")
    pipeline.flush()
    assert pipeline.stats.keyframes_segmented >= 1
    return harness


def test_frames_build_a_map_of_the_wall(mapped: Harness) -> None:
    node = mapped.node
    assert node.runtime.assembler.stats.delivered == 8
    points = node.runtime.pipeline.map.points_m
    assert points.shape[0] > 100
    # the wall is the plane z = 1.5 m in the world (camera looks along +z, moves along x)
    assert np.median(np.abs(points[:, 2] - WALL_DEPTH_M)) < 0.05

    n = points.shape[0]
    _wait_for(lambda: bool(mapped.clouds) and mapped.clouds[-1].width == n, "a full cloud")
    cloud = cv.cloud_to_arrays(mapped.clouds[-1])
    assert mapped.clouds[-1].header.frame_id == "map"
    np.testing.assert_allclose(np.sort(cloud.points_m[:, 2]), np.sort(points[:, 2]), atol=1e-6)
    # labelled with the default vocabulary (ScanNet20) or unknown
    assert cloud.labels is not None and cloud.scores is not None
    known = cloud.labels != cv.UNKNOWN_LABEL
    assert np.all(cloud.labels[known] < 20)
    assert np.all((cloud.scores >= 0) & (cloud.scores <= 1))

    _wait_for(lambda: any(_diag_value(d, "color_msgs") == "8" for d in list(mapped.diagnostics)),
              "diagnostics counting the colour images")
    last = mapped.diagnostics[-1]
    assert last.status[0].hardware_id == "diff2scene"
    assert _diag_value(last, "frames_integrated_per_s") is not None
    assert int(_diag_value(last, "map_voxels") or 0) == n
    assert _diag_value(last, "frames_unaccounted") == "0"


def test_set_vocabulary_labels_the_cloud(mapped: Harness) -> None:
    names = ["wall", "floor", "chair"]
    response = mapped.call(SetVocabulary, "set_vocabulary",
                           SetVocabulary.Request(labels=names))
    assert response.success, response.message
    assert response.message == "labelling with 3 classes"
    cloud = cv.cloud_to_arrays(_fresh_cloud(mapped))
    assert cloud.labels is not None
    assert set(np.unique(cloud.labels).tolist()) <= {0, 1, 2, cv.UNKNOWN_LABEL}
    labelling = mapped.node.runtime.session.labelling().labelling
    assert labelling.names == names
    expected = labelling.labels.astype(np.int64)
    expected[expected < 0] = cv.UNKNOWN_LABEL
    np.testing.assert_array_equal(expected, cloud.labels)

    bad = mapped.call(SetVocabulary, "set_vocabulary",
                      SetVocabulary.Request(labels=["wall", "wall"]))
    assert not bad.success and "duplicate" in bad.message
    unknown = mapped.call(SetVocabulary, "set_vocabulary",
                          SetVocabulary.Request(vocabulary_name="no_such_vocabulary"))
    assert not unknown.success
    # the refused ones changed nothing
    assert mapped.node.runtime.session.labelling_config.classes == tuple(names)


def test_text_query_answers_with_points_instances_and_markers(mapped: Harness) -> None:
    markers: list[Any] = []
    mapped.helper.create_subscription(
        MarkerArray, "diff2scene/query_markers", markers.append,
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.TRANSIENT_LOCAL),
    )
    node = mapped.node
    assert node.runtime.session.wait_until_current(60.0)  # the map is still: one version answers
    response = mapped.call(TextQuery, "text_query",
                           TextQuery.Request(query="wall", score_threshold=0.01, top_k=0))
    assert response.success, response.message
    # top_k 0 asks for every instance; compare with the engine's own answer
    engine = node.runtime.session.engine()
    snapshot = engine.snapshot
    expected = engine.query("wall", 0.01, 2**31 - 1)
    assert expected.matched.size > 0  # a low threshold keeps points even with random weights
    cloud = cv.cloud_to_arrays(response.points)
    np.testing.assert_array_equal(cloud.points_m, snapshot.points_m[expected.matched])
    assert cloud.scores is not None
    np.testing.assert_allclose(cloud.scores, expected.scores[expected.matched])
    assert [i.label for i in response.instances] == [i.label for i in expected.instances]
    assert response.message.startswith(f"{expected.matched.size} points")
    _wait_for(lambda: bool(markers), "query markers")
    assert len(markers[-1].markers) == 1 + 2 * len(response.instances)

    for text in ("", "x" * 5000):
        refused = mapped.call(TextQuery, "text_query", TextQuery.Request(query=text))
        assert not refused.success and refused.message
        assert refused.points.width == 0


def test_bad_input_is_counted_not_fatal(mapped: Harness) -> None:
    assembler = mapped.node.runtime.assembler
    stats = assembler.stats
    before = stats.delivered
    mapped.publish_frame(20, depth_encoding="32FC1")  # fine: depth in metres
    mapped.publish_frame(21, mislabel_depth=True)  # an encoding the node cannot read
    mapped.publish_frame(22, pose=False)  # no pose within the interpolation gap
    mapped.publishers["pose"].publish(  # a pose in another fixed frame than the map's
        cv.matrix_to_pose_stamped(np.eye(4), frame_id="odom", stamp_ns=3_250_000_000)
    )
    mapped.publish_frame(35)  # 1.4 s after frame 21's pose: frame 22 cannot be interpolated
    _wait_for(lambda: assembler.rejected["tf_reparent"] >= 1, "the odom pose to be refused")
    _wait_for(lambda: stats.skipped["bad_depth_encoding"] >= 1, "the bad depth to be skipped")
    _wait_for(lambda: stats.skipped["missing_pose"] >= 1, "the pose-less frame to be skipped")
    _wait_for(lambda: stats.delivered >= before + 2, "the good frames to be mapped")
    _wait_for(lambda: any(int(_diag_value(d, "skipped_missing_pose") or 0) >= 1
                          for d in list(mapped.diagnostics)[-5:]),
              "diagnostics to report the skip")
    assert stats.delivered == before + 2
    assert mapped.node.runtime.pipeline.map.num_voxels > 0


def test_a_failing_stage_is_reported_and_mapping_goes_on(mapped: Harness) -> None:
    node = mapped.node
    segmenter = node.runtime.pipeline.segmenter
    original = segmenter.segment

    def broken(frame: Any) -> Any:
        raise RuntimeError("injected 2D model failure")

    segmenter.segment = broken  # type: ignore[method-assign]
    try:
        frames_before = node.runtime.pipeline.stats.frames_in
        for i in range(40, 46):  # far along x: new keyframes for the broken model
            mapped.publish_frame(i)
        _wait_for(lambda: node.runtime.pipeline.stats.frames_in >= frames_before + 6,
                  "frames mapped")
        node.runtime.pipeline.flush()
        status = node.runtime.pipeline.stage_status()["segment2d"]
        assert status.failures >= 1 and "injected" in status.last_error
        _wait_for(lambda: any(s.level == DiagnosticStatus.ERROR and "segment2d" in s.message
                              for d in list(mapped.diagnostics)[-5:] for s in d.status),
                  "an ERROR diagnostic naming the stage")
    finally:
        segmenter.segment = original  # type: ignore[method-assign]
    assert node.runtime.pipeline.stats.frames_in >= frames_before + 6  # fusion went on


def test_save_and_load_map(mapped: Harness) -> None:
    # last on purpose: the map it loads replaces the one the other tests look at
    mapped.node.runtime.pipeline.flush()  # the frames of the previous test are in the map
    n = mapped.node.runtime.pipeline.map.num_voxels
    saved = mapped.call(SaveMap, "save_map", SaveMap.Request(path="map.npz"))
    assert saved.success, saved.message
    assert (mapped.node.maps.root / "map.npz").is_file()

    missing = mapped.call(LoadMap, "load_map", LoadMap.Request(path="none.npz"))
    assert not missing.success and "map kept" in missing.message
    assert mapped.node.runtime.pipeline.map.num_voxels == n

    loaded = mapped.call(LoadMap, "load_map", LoadMap.Request(path="map.npz"))
    assert loaded.success, loaded.message
    assert mapped.node.runtime.pipeline.map.num_voxels == n


def _fresh_cloud(h: Harness) -> PointCloud2:
    count = len(h.clouds)
    _wait_for(lambda: len(h.clouds) > count + 1, "a new cloud")
    return h.clouds[-1]


def _diag_value(array: DiagnosticArray, key: str) -> str | None:
    for status in array.status:
        for kv in status.values:
            if kv.key == key:
                return str(kv.value)
    return None

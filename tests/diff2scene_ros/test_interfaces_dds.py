"""The built interfaces work over real DDS: a TextQuery server in another process, called here.

The server (``dds_server.py``) runs as a separate Python process on a ROS domain derived from
this process id and under a service name unique to this run, so parallel test runs on the
same machine do not answer each other. Readiness is polled with ``wait_for_service``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip(
    "diff2scene_interfaces",
    reason="diff2scene_interfaces is not built: run `make interfaces` and use the Makefile's "
    "RUN_ENV (PYTHONPATH/LD_LIBRARY_PATH of ros2_ws/install/diff2scene_interfaces)",
)

import rclpy
from diff2scene_interfaces.srv import TextQuery
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from diff2scene_ros import conversions as cv
from tests.diff2scene_ros import dds_server
from tests.support.ros import REPO, child_env

pytestmark = pytest.mark.ros

#: Discovery plus the server's start-up (Python, rclpy, numpy imports) on a loaded 2-core box.
SERVICE_WAIT_S = 60.0
CALL_TIMEOUT_S = 20.0


class Client:
    """A TextQuery client node in its own rclpy context (no global ROS state in the test)."""

    def __init__(self, service_name: str, domain_id: int) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node("dds_test_client", context=self.context)
        self.client = self.node.create_client(TextQuery, service_name)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def call(self, query: str, score_threshold: float, top_k: int) -> TextQuery.Response:
        request = TextQuery.Request(query=query, score_threshold=score_threshold, top_k=top_k)
        future = self.client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=CALL_TIMEOUT_S)
        assert future.done(), f"no TextQuery response within {CALL_TIMEOUT_S} s"
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    domain_id = 1 + os.getpid() % 100
    service_name = f"/d2s_test_{uuid.uuid4().hex[:12]}/text_query"
    env = child_env(domain_id)
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.diff2scene_ros.dds_server", service_name, "300"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    c = Client(service_name, domain_id)
    try:
        if not c.client.wait_for_service(timeout_sec=SERVICE_WAIT_S):
            server.kill()
            output = server.communicate(timeout=10)[0].decode(errors="replace")
            pytest.fail(f"server never offered {service_name}; its output:\n{output[-3000:]}")
        assert server.poll() is None
        yield c
    finally:
        c.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_text_query_round_trip(client: Client) -> None:
    response = client.call("red chair", score_threshold=0.45, top_k=1)
    assert response.success, response.message
    assert response.message == "5 points, 1 instances"

    cloud = cv.cloud_to_arrays(response.points)
    keep = np.float32(0.45) <= dds_server.MAP_SCORES
    np.testing.assert_array_equal(cloud.points_m, dds_server.MAP_POINTS_M[keep])
    np.testing.assert_array_equal(cloud.rgb, dds_server.MAP_RGB[keep])
    np.testing.assert_array_equal(cloud.labels, dds_server.MAP_LABELS[keep])
    np.testing.assert_array_equal(cloud.scores, dds_server.MAP_SCORES[keep])
    assert response.points.header.frame_id == "map"
    assert cv.stamp_to_ns(response.points.header.stamp) == 123_000_000_456

    assert len(response.instances) == 1
    chair = response.instances[0]
    assert chair.label == "red chair:chair"
    assert chair.score == pytest.approx(0.9)
    assert (chair.centroid.x, chair.centroid.y, chair.centroid.z) == pytest.approx((1, 2, 0.4))
    assert (chair.box_size.x, chair.box_size.z) == pytest.approx((0.5, 0.8))
    assert chair.point_count == 40


def test_text_query_all_instances_and_failure(client: Client) -> None:
    everything = client.call("object", score_threshold=0.0, top_k=0)
    assert everything.success
    assert [i.label for i in everything.instances] == [
        "object:chair", "object:table", "object:lamp"
    ]
    assert cv.cloud_to_arrays(everything.points).points_m.shape == (10, 3)

    failed = client.call("   ", score_threshold=0.0, top_k=0)
    assert not failed.success
    assert failed.message == "empty query"
    assert failed.points.width == 0 and len(failed.instances) == 0

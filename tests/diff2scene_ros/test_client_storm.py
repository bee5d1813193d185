"""Many clients asking one node at once, over a lossy link: every answer arrives.

rmw_fastrtps hands every response of a service to every client of that service; a reliable
reader keeps the samples that arrive after a lost datagram until the writer repairs the loss,
and a client whose history is shallower than the answers queued behind that loss drops its own
answer for good (the soak test lost 4 of 1000 storm queries this way, with the node's books
showing every response sent). The client process here gets a 4 KiB UDP receive buffer, so
datagrams are lost in every burst of answers: with the default service QoS (10 deep) 10-27 of
930 queries went unanswered in each of six runs; with :data:`QUERY_CLIENT_QOS`, none.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tf2_msgs", reason="tf2_msgs is not built: run `make setup`")

import rclpy
from rclpy.context import Context

from diff2scene_ros.client import QUERY_CLIENT_QOS, QueryClient
from tests.support.ros import REPO, DiagnosticsObserver, child_env, stop_child, wait_for

pytestmark = pytest.mark.ros

CLIENTS = 30
QUERIES = 30
#: A Fast DDS profile for the client process only: UDP with a 4 KiB receive buffer.
LOSSY_CLIENT_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>small_udp</transport_id>
      <type>UDPv4</type>
      <receiveBufferSize>4096</receiveBufferSize>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="lossy_client" is_default_profile="true">
    <rtps>
      <userTransports><transport_id>small_udp</transport_id></userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


@pytest.fixture
def env() -> dict[str, str]:
    return child_env()


@pytest.fixture
def node(tmp_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "diff2scene_ros.node", "--ros-args",
         "-p", "segmenter.profile:=tiny", "-p", f"map_dir:={tmp_path}",
         "-p", "diagnostics_period_s:=0.3"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield proc
    finally:
        stop_child(proc, timeout_s=30.0)


def test_query_client_qos_keeps_every_answer() -> None:
    context = Context()
    rclpy.init(context=context)
    try:
        with QueryClient(context=context) as client:
            qos = client._client.qos_profile
        assert qos.reliability == QUERY_CLIENT_QOS.reliability
        # deeper than the node's own repair window (its service keeps 100 responses)
        assert qos.depth >= 1000
    finally:
        context.try_shutdown()


def test_storm_of_clients_over_lossy_link_gets_every_answer(
    tmp_path: Path, env: dict[str, str], node: subprocess.Popen[Any]
) -> None:
    with DiagnosticsObserver(int(env["ROS_DOMAIN_ID"]), name="storm_test_observer") as diagnostics:
        wait_for(lambda: diagnostics.count("map_voxels") >= 0 or node.poll() is not None,
                 "the node's diagnostics", 180.0)
        assert node.poll() is None
        profile = tmp_path / "lossy_client.xml"
        profile.write_text(LOSSY_CLIENT_PROFILE)
        out = tmp_path / "storm.json"
        storm = subprocess.run(
            [sys.executable, "-m", "tests.diff2scene_ros.query_storm", str(out),
             "--clients", str(CLIENTS), "--queries", str(QUERIES), "--timeout-s", "20"],
            cwd=REPO, env={**env, "FASTDDS_DEFAULT_PROFILES_FILE": str(profile)},
            capture_output=True, text=True, timeout=600, check=False,
        )
        assert storm.returncode == 0, storm.stdout[-3000:] + storm.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["sent"] == CLIENTS * QUERIES
        assert result["timeouts"] == 0, result
        assert result["answered"] == CLIENTS * QUERIES
        # the node's books: every request it took was answered (warm-up queries included)
        total = result["sent"] + result["warmup_sent"]
        wait_for(lambda: diagnostics.count("service_responses_text_query") >= total,
                 "the node's response counter", 60.0)
        assert diagnostics.count("service_requests_text_query") == total
        assert diagnostics.count("service_responses_text_query") == total

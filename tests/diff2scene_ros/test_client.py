"""QueryClient and ``diff2scene query`` against a real TextQuery service in another process.

The server (``dds_server.py``) answers from a fixed tiny map under a node name unique to this
run, on a ROS domain derived from this process id, so parallel runs do not answer each other.
Every wait polls with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip(
    "diff2scene_interfaces",
    reason="diff2scene_interfaces is not built: run `make interfaces` and use the Makefile's "
    "RUN_ENV",
)

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from diff2scene.cli import main as cli_main
from diff2scene.errors import InputError
from diff2scene_ros.cli import format_answer
from diff2scene_ros.client import (
    NodeUnavailableError,
    QueryAnswer,
    QueryClient,
    QueryTimeoutError,
    text_query_service,
)
from tests.diff2scene_ros import dds_server
from tests.support.ros import REPO, child_env

pytestmark = pytest.mark.ros

#: Discovery plus the server's start-up (Python, rclpy, numpy imports) on a loaded 2-core box.
SERVICE_WAIT_S = 60.0
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Server:
    node_name: str
    domain_id: int


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    domain_id = 101 + os.getpid() % 100  # apart from test_interfaces_dds.py's domains
    node_name = f"/d2s_client_{uuid.uuid4().hex[:12]}/diff2scene"
    env = child_env(domain_id)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.diff2scene_ros.dds_server",
         text_query_service(node_name), "300"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        with QueryClient(node_name, domain_id=domain_id) as probe:
            try:
                probe.wait_until_available(SERVICE_WAIT_S)
            except NodeUnavailableError:
                process.kill()
                output = process.communicate(timeout=10)[0].decode(errors="replace")
                pytest.fail(f"the server never offered its service; its output:\n{output[-3000:]}")
        yield Server(node_name, domain_id)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[QueryClient]:
    with QueryClient(server.node_name, domain_id=server.domain_id,
                     timeout_s=CALL_TIMEOUT_S) as c:
        yield c


def _check_red_chair(answer: QueryAnswer) -> None:
    """The server's answer to "red chair" with threshold 0.45 and top_k 1."""
    assert answer.success, answer.message
    assert answer.query == "red chair"
    assert answer.message == "5 points, 1 instances"
    assert len(answer.instances) == 1
    chair = answer.instances[0]
    assert chair.label == "red chair:chair"
    assert chair.score == pytest.approx(0.9)
    assert chair.centroid_m == pytest.approx((1.0, 2.0, 0.4))
    assert chair.box_size_m == pytest.approx((0.5, 0.5, 0.8))
    assert chair.num_points == 40
    keep = np.float32(0.45) <= dds_server.MAP_SCORES
    np.testing.assert_array_equal(answer.points.points_m, dds_server.MAP_POINTS_M[keep])
    np.testing.assert_array_equal(answer.points.rgb, dds_server.MAP_RGB[keep])
    np.testing.assert_array_equal(answer.points.labels, dds_server.MAP_LABELS[keep])
    np.testing.assert_array_equal(answer.points.scores, dds_server.MAP_SCORES[keep])
    assert answer.frame_id == "map"
    assert answer.stamp_ns == 123_000_000_456
    assert 0 < answer.latency_s < CALL_TIMEOUT_S


def test_query_returns_a_typed_answer(client: QueryClient) -> None:
    answer = client.query("red chair", top_k=1, score_threshold=0.45)
    _check_red_chair(answer)
    # cloud labels are 1-based instance ranks: label 1 belongs to instances[0]
    labelled_one = dds_server.MAP_POINTS_M[(dds_server.MAP_LABELS == 1)
                                           & (np.float32(0.45) <= dds_server.MAP_SCORES)]
    np.testing.assert_array_equal(answer.instance_points_m(0), labelled_one)
    with pytest.raises(IndexError):
        answer.instance_points_m(1)


def test_all_instances_and_a_refusal(client: QueryClient) -> None:
    everything = client.query("object")
    assert [i.label for i in everything.instances] == [
        "object:chair", "object:table", "object:lamp"
    ]
    assert everything.points.points_m.shape == (10, 3)

    refused = client.query("   ")
    assert not refused.success
    assert refused.message == "empty query"
    assert refused.instances == ()
    assert refused.points.points_m.shape == (0, 3)


def test_query_async_awaited_in_an_rclpy_executor(server: Server) -> None:
    """A planner's own node and executor: ``await client.query_async(...)`` in a coroutine."""
    context = Context()
    rclpy.init(context=context, domain_id=server.domain_id)
    node = Node("planner", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    client = QueryClient(server.node_name, node=node, timeout_s=CALL_TIMEOUT_S)
    try:
        async def plan() -> list[QueryAnswer]:
            # one after another: each result is set from the client's thread, and the executor
            # must be woken up for the coroutine to go on (not left waiting for other work)
            answers = [await client.query_async("red chair", top_k=1, score_threshold=0.45)]
            for _ in range(5):
                answers.append(await client.query_async("object", top_k=2))
            return answers

        start = time.monotonic()
        task = executor.create_task(plan)
        executor.spin_until_future_complete(task, timeout_sec=2 * CALL_TIMEOUT_S)
        assert task.done(), "the coroutine did not finish"
        assert time.monotonic() - start < CALL_TIMEOUT_S
        first, *others = task.result()
        _check_red_chair(first)
        for other in others:
            assert [i.label for i in other.instances] == ["object:chair", "object:table"]
    finally:
        client.close()
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()


def test_aquery_under_asyncio(client: QueryClient) -> None:
    async def two_at_once() -> list[QueryAnswer]:
        return list(await asyncio.gather(
            client.aquery("red chair", top_k=1, score_threshold=0.45),
            client.aquery("lamp", score_threshold=0.2),
        ))

    chair, lamp = asyncio.run(two_at_once())
    _check_red_chair(chair)
    assert [i.label for i in lamp.instances] == ["lamp:chair", "lamp:table", "lamp:lamp"]


def test_cli_prints_an_aligned_table(server: Server, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROS_DOMAIN_ID", str(server.domain_id))
    code = cli_main(["query", "red chair", "--node", server.node_name, "--top-k", "2",
                     "--threshold", "0.2", "--timeout", str(CALL_TIMEOUT_S)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    matching = int(np.sum(np.float32(0.2) <= dds_server.MAP_SCORES))
    assert lines[0].startswith(
        f"'red chair': {matching} points, 2 instances ({matching} points in map, ")
    header, chair, table = lines[1:4]
    assert header.split()[:3] == ["#", "label", "score"]
    assert chair.split() == ["1", "red", "chair:chair", "0.900", "1.00", "2.00", "0.40",
                             "0.50", "0.50", "0.80", "40"]
    assert table.split()[:2] == ["2", "red"]
    # aligned: every column starts at the same offset in each row
    assert header.index("score") + len("score") == chair.index("0.900") + len("0.900")
    assert len({len(line) for line in (header, chair, table)}) == 1


def test_cli_json(server: Server, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROS_DOMAIN_ID", str(server.domain_id))
    code = cli_main(["query", "lamp", "--node", server.node_name, "--json", "--points",
                     "--threshold", "0.85", "--timeout", str(CALL_TIMEOUT_S)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["success"] is True
    assert data["frame_id"] == "map"
    assert data["num_matching_points"] == 1
    assert data["instances"] == [{"label": "lamp:chair", "score": 0.9,
                                  "centroid_m": [1.0, 2.0, 0.4], "box_size_m": [0.5, 0.5, 0.8],
                                  "num_points": 40}]
    assert data["points"] == [[0.9, 0.0, 1.0, 0, 0.9]]  # the map's tenth point: label 9 % 3


def test_cli_refusal_exits_1(server: Server, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROS_DOMAIN_ID", str(server.domain_id))
    code = cli_main(["query", "  ", "--node", server.node_name, "--timeout",
                     str(CALL_TIMEOUT_S)])
    captured = capsys.readouterr()
    assert code == 1
    assert "no instances" in captured.out
    assert "could not answer: empty query" in captured.err


def test_absent_node_fails_within_the_timeout(server: Server, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    absent = f"/nobody_{uuid.uuid4().hex[:8]}/diff2scene"
    with QueryClient(absent, domain_id=server.domain_id, timeout_s=1.0) as client:
        start = time.monotonic()
        with pytest.raises(NodeUnavailableError) as caught:
            client.query("chair")
        elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 10.0
    message = str(caught.value)
    assert f"{absent}/text_query" in message
    assert f"ROS_DOMAIN_ID ({server.domain_id})" in message

    monkeypatch.setenv("ROS_DOMAIN_ID", str(server.domain_id))
    assert cli_main(["query", "chair", "--node", absent, "--timeout", "1"]) == 2
    assert "no service" in capsys.readouterr().err


def test_a_slow_answer_is_a_timeout(client: QueryClient) -> None:
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError, match=r"did not answer within 1\.0 s"):
        client.query("slow:4", timeout_s=1.0)
    assert time.monotonic() - start < 10.0
    # the client still works afterwards (the late answer is dropped, not mistaken for this one)
    _check_red_chair(client.query("red chair", top_k=1, score_threshold=0.45))


def test_bad_arguments_are_refused_before_sending(server: Server) -> None:
    with QueryClient(server.node_name, domain_id=server.domain_id) as client:
        with pytest.raises(InputError, match="top_k"):
            client.query("chair", top_k=-1)
        with pytest.raises(InputError, match="score_threshold"):
            client.query("chair", score_threshold=1.5)
        with pytest.raises(InputError, match="score_threshold"):
            client.query_async("chair", score_threshold=float("nan"))
        with pytest.raises(InputError, match="timeout_s"):
            client.query("chair", timeout_s=0)
    with pytest.raises(InputError, match="node name"):
        QueryClient("  ")
    client.close()  # closing twice (the with block closed it) is harmless


def test_table_of_an_answer_without_instances() -> None:
    from diff2scene_interfaces.srv import TextQuery

    from diff2scene_ros.client import answer_from_response

    answer = answer_from_response("teapot", TextQuery.Response(success=True, message="0 points"))
    assert format_answer(answer).splitlines() == ["'teapot': 0 points (0 points in -, 0 ms)",
                                                  "no instances"]

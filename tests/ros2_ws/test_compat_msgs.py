"""tf2_msgs and vision_msgs as the node's environment provides them interoperate with ROS 2 Jazzy.

In the pip environment both are built from ros2_ws/compat; on a system ROS 2 they are the
distribution's. Either way the type hashes must be Jazzy's (DDS peers compare them) and the
messages must cross DDS between two processes intact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tf2_msgs", reason="tf2_msgs is not built: run `make setup` and RUN_ENV")
pytest.importorskip("vision_msgs", reason="vision_msgs is not built: run `make setup` and RUN_ENV")

import rclpy
from ament_index_python.packages import get_package_share_directory
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from tests.ros2_ws import compat_publisher

pytestmark = pytest.mark.ros

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Discovery plus the publisher's start-up on a loaded 2-core machine.
RECEIVE_TIMEOUT_S = 60.0

#: RIHS01 type hashes of ROS 2 Jazzy, as `ros2 topic info -v` reports them on a Jazzy system.
JAZZY_TYPE_HASHES = {
    ("tf2_msgs", "TFMessage"):
        "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087",
    ("tf2_msgs", "TF2Error"):
        "RIHS01_db2485e7d6a0ec75bf087e058ee45df682acc3a621ca7780503d10aac141809a",
    ("vision_msgs", "Detection3DArray"):
        "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
}


@pytest.mark.parametrize(("package", "message"), sorted(JAZZY_TYPE_HASHES))
def test_type_hash_is_jazzy(package: str, message: str) -> None:
    description = Path(get_package_share_directory(package)) / "msg" / f"{message}.json"
    hashes = json.loads(description.read_text())["type_hashes"]
    own = next(h for h in hashes if h["type_name"] == f"{package}/msg/{message}")
    assert own["hash_string"] == JAZZY_TYPE_HASHES[(package, message)]


@pytest.fixture(scope="module")
def publisher() -> Iterator[tuple[str, int]]:
    """A separate process publishing both messages under a prefix unique to this run."""
    domain_id = 1 + (os.getpid() + 37) % 100
    prefix = f"/d2s_compat_{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ros2_ws.compat_publisher", prefix, "300"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        yield prefix, domain_id
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _receive_one(msg_type: Any, topic: str, domain_id: int) -> Any:
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = Node("compat_subscriber", context=context)
    got: list[Any] = []
    node.create_subscription(msg_type, topic, got.append, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + RECEIVE_TIMEOUT_S
        while not got and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.2)
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    assert got, f"nothing received on {topic} within {RECEIVE_TIMEOUT_S} s"
    return got[0]


@pytest.mark.parametrize(
    ("msg_type", "suffix", "expected"),
    [(TFMessage, "tf", compat_publisher.tf_message),
     (Detection3DArray, "detections", compat_publisher.detections)],
    ids=["TFMessage", "Detection3DArray"],
)
def test_message_crosses_dds(
    publisher: tuple[str, int], msg_type: Any, suffix: str, expected: Callable[[], Any]
) -> None:
    prefix, domain_id = publisher
    received = _receive_one(msg_type, f"{prefix}/{suffix}", domain_id)
    assert received == expected()

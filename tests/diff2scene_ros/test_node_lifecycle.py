"""The node as its own process (its real ``main``): map files confined to ``map_dir``, and
SIGTERM → a clean exit 0 with the map autosaved, within the shutdown budget."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tf2_msgs", reason="tf2_msgs is not built: run `make setup`")

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from diff2scene_interfaces.srv import LoadMap, SaveMap
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor

from diff2scene.mapping.semantic_map import SemanticMap
from tests.diff2scene_ros.test_live_equals_replay import (
    REPO,
    _env,
    _wait_for,
    play,
    write_camera_bag,
)

pytestmark = pytest.mark.ros


@dataclass
class Client:
    context: Context
    node: Any
    executor: SingleThreadedExecutor
    diagnostics: list[DiagnosticArray]

    def call(self, srv_type: Any, name: str, request: Any) -> Any:
        client = self.node.create_client(srv_type, f"/diff2scene/{name}")
        try:
            assert client.wait_for_service(timeout_sec=60.0), f"{name} not offered"
            future = client.call_async(request)
            _wait_for(future.done, f"{name} response", 60.0)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def stat(self, key: str) -> int:
        for array in reversed(self.diagnostics):
            for status in array.status:
                for kv in status.values:
                    if kv.key == key:
                        return int(float(kv.value))
        return -1


@pytest.fixture
def env() -> dict[str, str]:
    return _env()


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[Client]:
    context = Context()
    rclpy.init(context=context, domain_id=int(env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("lifecycle_test_client", context=context)
    diagnostics: list[DiagnosticArray] = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        yield Client(context, node, executor, diagnostics)
    finally:
        executor.shutdown()
        spinner.join(timeout=10)
        node.destroy_node()
        context.try_shutdown()


def test_map_files_stay_in_map_dir_and_sigterm_autosaves(
    tmp_path: Path, env: dict[str, str], client: Client
) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    foreign = maps / "foreign.npz"
    foreign.write_text("not a map")
    outside = tmp_path / "outside.npz"
    bag_path = tmp_path / "bag"
    write_camera_bag(bag_path, 12)
    node = subprocess.Popen(
        [sys.executable, "-m", "diff2scene_ros.node", "--ros-args",
         "-p", "segmenter.profile:=tiny", "-p", f"map_dir:={maps}",
         "-p", "autosave_path:=autosave.npz", "-p", "diagnostics_period_s:=0.3",
         "-p", "pipeline.mapper.depth_max_m:=3.0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        play(bag_path, env)
        _wait_for(lambda: client.stat("frames_integrated") >= 10 or node.poll() is not None,
                  "the node to map the bag")
        assert node.poll() is None

        for bad, why in (("../outside.npz", "'..'"), (str(outside), "outside map_dir"),
                         ("foreign.npz", "not a diff2scene map"), ("notes.txt", ".npz")):
            refused = client.call(SaveMap, "save_map", SaveMap.Request(path=bad))
            assert not refused.success and why in refused.message, refused.message
        assert not outside.exists() and foreign.read_text() == "not a map"
        loaded = client.call(LoadMap, "load_map", LoadMap.Request(path="foreign.npz"))
        assert not loaded.success and "is not a diff2scene map" in loaded.message

        saved = client.call(SaveMap, "save_map", SaveMap.Request(path="kept.npz"))
        assert saved.success, saved.message
        again = client.call(SaveMap, "save_map", SaveMap.Request(path="kept.npz"))
        assert again.success, again.message  # a map may replace a map
        assert SemanticMap.load(maps / "kept.npz").num_voxels > 0

        t0 = time.monotonic()
        node.send_signal(signal.SIGTERM)
        rc = node.wait(timeout=30)
        shutdown_s = time.monotonic() - t0
        output = node.stdout.read() if node.stdout else ""
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert rc == 0, output
    assert shutdown_s <= 10.0, output
    autosaved = SemanticMap.load(maps / "autosave.npz")
    assert autosaved.num_voxels > 0
    assert "map saved to" in output

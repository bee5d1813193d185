"""The node as its own process (its real ``main``): map files confined to ``map_dir``, and
SIGTERM → a clean exit 0 with the map autosaved, within the shutdown budget."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tf2_msgs", reason="tf2_msgs is not built: run `make setup`")

from diff2scene_interfaces.srv import LoadMap, SaveMap

from diff2scene.mapping.semantic_map import SemanticMap
from tests.diff2scene_ros.test_live_equals_replay import play, write_camera_bag
from tests.support.ros import REPO, DiagnosticsObserver, call_service, child_env, wait_for

pytestmark = pytest.mark.ros


class Client(DiagnosticsObserver):
    """The node's diagnostics, and calls of its map services."""

    def call(self, srv_type: Any, name: str, request: Any) -> Any:
        client = self.node.create_client(srv_type, f"/diff2scene/{name}")
        try:
            return call_service(client, request, 60.0)
        finally:
            self.node.destroy_client(client)


@pytest.fixture
def env() -> dict[str, str]:
    return child_env()


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[Client]:
    with Client(int(env["ROS_DOMAIN_ID"]), name="lifecycle_test_client") as c:
        yield c


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
        wait_for(lambda: client.count("frames_integrated") >= 10 or node.poll() is not None,
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

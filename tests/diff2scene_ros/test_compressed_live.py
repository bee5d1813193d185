"""Compressed transports live: a realsense-style recording (JPEG colour on
``…/color/image_raw/compressed``, PNG ``compressedDepth`` aligned depth, pose only from
``/tf`` + ``/tf_static``) is published by ``diff2scene play`` in its own process, and the node
in a second process, told ``color_transport:=compressed depth_transport:=compressedDepth`` and
remapped onto the driver's topics, assembles exactly the frames a bag replay assembles from the
same messages — both decode with the same code, so pixels are equal, not merely close.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("tf2_msgs", reason="tf2_msgs is not built: run `make setup`")

from diff2scene.cli import main
from diff2scene.io.bag import BagFrameSource
from tests.diff2scene_ros.test_live_equals_replay import (
    diagnostics,
    node_output,
    play,
    recorded_frames,
    running_node,
)
from tests.support.ros import child_env, wait_for

pytestmark = pytest.mark.ros

N_FRAMES = 16
DRIVER = "/camera/camera"
COLOR = f"{DRIVER}/color/image_raw"
DEPTH = f"{DRIVER}/aligned_depth_to_color/image_raw"
INFO = f"{DRIVER}/color/camera_info"
#: The node's (relative) input names → the realsense-ros topics. Both the base image topics and
#: their transport topics are remapped, so the test holds whether the node derives
#: ``<topic>/compressed`` from the remapped base name or remaps the transport name itself.
REMAPS = {
    "camera/color/image_raw": COLOR,
    "camera/color/image_raw/compressed": f"{COLOR}/compressed",
    "camera/depth/image_rect_raw": DEPTH,
    "camera/depth/image_rect_raw/compressedDepth": f"{DEPTH}/compressedDepth",
    "camera/color/camera_info": INFO,
}


@pytest.fixture(scope="module")
def realsense_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("realsense")
    config = root / "synth.yaml"
    config.write_text(yaml.safe_dump({
        "render": {"n_frames": N_FRAMES, "width": 160, "height": 120, "path_turns": 0.25},
        "gt_points_per_m2": 50.0,
    }))
    assert main(["synth", "--out", str(root / "scene"), "--seed", "5", "--config", str(config),
                 "--layout", "realsense", "--quiet"]) == 0
    return root / "scene" / "bag"


def compressed_node(out: Path, env: dict[str, str]) -> Any:
    """The real node (tests/diff2scene_ros/recording_node.py) on compressed transports."""
    return running_node(out, env, "color_transport:=compressed",
                        "depth_transport:=compressedDepth", remaps=REMAPS)


def test_node_on_compressed_topics_assembles_the_frames_a_replay_assembles(
    realsense_bag: Path, tmp_path: Path
) -> None:
    replayed = list(BagFrameSource(realsense_bag))
    assert len(replayed) == N_FRAMES
    env = child_env()
    out = tmp_path / "node"
    # only what the node subscribes to: the player waits for a subscriber on every topic
    topics = ["/tf", "/tf_static", f"{COLOR}/compressed", f"{DEPTH}/compressedDepth", INFO]
    with compressed_node(out, env) as node:
        report = play(realsense_bag, env, "--rate", "0.5", "--topics", *topics)
        assert f"{COLOR}/compressed" in report and f"{DEPTH}/compressedDepth" in report
        wait_for(lambda: len(recorded_frames(out)) >= N_FRAMES or node.poll() is not None,
                 f"the node to assemble the frames ({diagnostics(out)})")
        assert node.poll() is None, node_output(node)
        # the diagnostics file is rewritten every 0.2 s: wait for the one after the last frame
        wait_for(lambda: int(diagnostics(out).get("frames_assembled", 0)) >= N_FRAMES,
                 f"the node's diagnostics to count the frames ({diagnostics(out)})")
        d = diagnostics(out)
    live = recorded_frames(out)
    assert len(live) == N_FRAMES
    for frame, rec in zip(replayed, live, strict=True):
        k = frame.intrinsics
        assert int(rec["stamp_ns"]) == frame.stamp_ns
        np.testing.assert_array_equal(rec["intrinsics"], [k.width, k.height, k.fx, k.fy, k.cx,
                                                          k.cy])
        np.testing.assert_allclose(rec["T_world_camera"], frame.T_world_camera, rtol=0,
                                   atol=1e-9)
        np.testing.assert_array_equal(rec["rgb"], frame.rgb)
        np.testing.assert_array_equal(rec["depth_m"], frame.depth_m)
    # nothing was refused on the way: every decoded image became a frame, pose from TF
    assert int(d.get("color_msgs", -1)) == N_FRAMES, d
    assert int(d.get("frames_skipped_input", -1)) == 0, d
    assert int(d.get("pose_from_tf", -1)) == N_FRAMES, d

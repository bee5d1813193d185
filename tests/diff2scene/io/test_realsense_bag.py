"""A bag recorded the way realsense-ros records it (JPEG colour, compressedDepth aligned depth,
pose only from TF) replays through the command line with no more configuration than
``bag-info`` proposes, into the map a raw recording of the same frames gives; and whatever a
bag cannot provide is a one-line error from the command line, never a traceback.

The two recordings come from ``diff2scene synth`` (the same room, frames and stamps; only the
layout differs), so the raw one is exact ground truth for the compressed one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from scipy.spatial import cKDTree

from diff2scene.cli import main
from diff2scene.errors import ConfigError
from diff2scene.io.bag import BagFrameSource
from diff2scene.io.transforms import pose_to_matrix
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.synth.bag import CAMERA_FRAME, BagTopics
from diff2scene.types import Frame

REPO = Path(__file__).resolve().parents[3]
SEED = 3
N_FRAMES = 20
#: A quarter turn over 20 frames at 30 Hz: ~4.5 degrees a frame, under the pose speed gate.
SYNTH_CONFIG = {
    "render": {"n_frames": N_FRAMES, "width": 160, "height": 120, "path_turns": 0.3},
    "gt_points_per_m2": 100.0,
}
COLOR = "/camera/camera/color/image_raw/compressed"
DEPTH = "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth"
INFO = "/camera/camera/color/camera_info"
REALSENSE_TYPES = {
    COLOR: "sensor_msgs/msg/CompressedImage",
    DEPTH: "sensor_msgs/msg/CompressedImage",
    INFO: "sensor_msgs/msg/CameraInfo",
    "/camera/camera/aligned_depth_to_color/camera_info": "sensor_msgs/msg/CameraInfo",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/tf_static": "tf2_msgs/msg/TFMessage",
    # the synthetic ground truth rides along under its usual name (the oracle segmenter's input)
    "/camera/instance/image_raw": "sensor_msgs/msg/Image",
}
RAW_TYPES = {
    "/camera/color/image_raw": "sensor_msgs/msg/Image",
    "/camera/depth/image_rect_raw": "sensor_msgs/msg/Image",
    "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
    "/camera/pose": "geometry_msgs/msg/PoseStamped",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/camera/instance/image_raw": "sensor_msgs/msg/Image",
}
IMAGE_TYPES = "sensor_msgs/msg/Image, sensor_msgs/msg/CompressedImage"


@dataclass
class Recordings:
    raw: Path
    realsense: Path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Recordings:
    root = tmp_path_factory.mktemp("recordings")
    config = root / "synth.yaml"
    config.write_text(yaml.safe_dump(SYNTH_CONFIG))
    common = ["--seed", str(SEED), "--config", str(config), "--quiet"]
    assert main(["synth", "--out", str(root / "raw"), *common]) == 0
    assert main(["synth", "--out", str(root / "realsense"), *common, "--layout", "realsense"]) == 0
    return Recordings(root / "raw" / "bag", root / "realsense" / "bag")


def _messages(bag: Path) -> tuple[dict[str, str], dict[str, list[Any]]]:
    out: dict[str, list[Any]] = {}
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        for conn, _, raw in reader.messages():
            out.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    return types, out


def _matrix(ts: Any) -> np.ndarray:
    t, q = ts.transform.translation, ts.transform.rotation
    T: np.ndarray = pose_to_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
    return T


def test_realsense_layout_is_what_realsense_ros_records(recordings: Recordings) -> None:
    types, msgs = _messages(recordings.realsense)
    assert types == REALSENSE_TYPES
    assert all(len(msgs[t]) == N_FRAMES for t in REALSENSE_TYPES if t != "/tf_static")
    # image_transport's format strings: realsense publishes rgb8, the plugin converts to bgr8
    assert {m.format for m in msgs[COLOR]} == {"rgb8; jpeg compressed bgr8"}
    assert {m.format for m in msgs[DEPTH]} == {"16UC1; compressedDepth png"}
    assert {m.header.frame_id for m in msgs[COLOR] + msgs[DEPTH] + msgs[INFO]} == {CAMERA_FRAME}
    # the pose is a TF tree only: map → odom → base_link, base_link → camera_link → optical
    (static,) = msgs["/tf_static"]
    assert [(t.header.frame_id, t.child_frame_id) for t in static.transforms] == [
        ("base_link", "camera_link"), ("camera_link", CAMERA_FRAME)]
    assert {tuple((t.header.frame_id, t.child_frame_id) for t in m.transforms)
            for m in msgs["/tf"]} == {(("map", "odom"), ("odom", "base_link"))}
    # ... which composes to the camera pose the raw recording states directly
    raw_types, raw = _messages(recordings.raw)
    assert raw_types == RAW_TYPES  # the default layout is unchanged
    T_base_optical = _matrix(static.transforms[0]) @ _matrix(static.transforms[1])
    for tf, pose in zip(msgs["/tf"], raw["/camera/pose"], strict=True):
        p, q = pose.pose.position, pose.pose.orientation
        T_map_optical = _matrix(tf.transforms[0]) @ _matrix(tf.transforms[1]) @ T_base_optical
        np.testing.assert_allclose(T_map_optical,
                                   pose_to_matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w)),
                                   rtol=0, atol=1e-9)
        assert tf.transforms[0].header.stamp == pose.header.stamp


def _jpeg_error(raw: list[Frame], compressed: list[Frame]) -> np.ndarray:
    """(N, H, W, 3) absolute colour error of the compressed recording's frames."""
    return np.stack([np.abs(a.rgb.astype(np.int16) - b.rgb.astype(np.int16))
                     for a, b in zip(raw, compressed, strict=True)])


def test_compressed_frames_are_the_raw_frames(recordings: Recordings) -> None:
    raw = list(BagFrameSource(recordings.raw))
    compressed = list(BagFrameSource(recordings.realsense))
    assert len(raw) == len(compressed) == N_FRAMES
    for a, b in zip(raw, compressed, strict=True):
        assert a.stamp_ns == b.stamp_ns and a.intrinsics == b.intrinsics
        np.testing.assert_allclose(b.T_world_camera, a.T_world_camera, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(b.depth_m, a.depth_m)  # PNG millimetres: lossless
        assert a.instance_ids is not None and b.instance_ids is not None
        np.testing.assert_array_equal(b.instance_ids, a.instance_ids)
    error = _jpeg_error(raw, compressed)
    # JPEG q95: lossy (so the comparison below means something), a few levels on average
    assert 0.2 < error.mean() < 4.0, error.mean()


def _map_agreement(a: SemanticMap, b: SemanticMap) -> dict[str, float]:
    """Nearest-neighbour agreement of two maps' voxels (both ways) and the colour difference of
    the voxels they share."""
    vs = a.voxel_size_m
    d_ab, _ = cKDTree(b.points_m).query(a.points_m)
    d_ba, _ = cKDTree(a.points_m).query(b.points_m)
    index = {tuple(c): i for i, c in enumerate(a.coords.tolist())}
    pairs = [(index[tuple(c)], j) for j, c in enumerate(b.coords.tolist()) if tuple(c) in index]
    ia, ib = np.array(pairs).T
    colour = np.abs(a.colors[ia].astype(np.int16) - b.colors[ib].astype(np.int16))
    return {
        "within_voxel_a": float(np.mean(d_ab <= vs * 1.0001)),
        "within_voxel_b": float(np.mean(d_ba <= vs * 1.0001)),
        "shared": len(pairs) / max(a.num_voxels, b.num_voxels),
        "colour_mean": float(colour.mean()),
        "colour_p99": float(np.percentile(colour, 99)),
    }


def test_bag_info_proposal_replays_into_the_raw_recordings_map(
    recordings: Recordings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["bag-info", str(recordings.realsense), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["chosen"]["color_topic"] == COLOR
    assert info["chosen"]["depth_topic"] == DEPTH
    assert info["chosen"]["camera_info_topic"] == INFO
    assert info["chosen"]["pose"] == "tf"
    assert info["frames"] == {"delivered": N_FRAMES, "skipped_total": 0}
    # the synthetic room's ground-truth masks stand in for the 2D model (not the default)
    oracle = {"segmenter": {"kind": "oracle"}}
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text(yaml.safe_dump({**info["proposed_config"], **oracle}))
    topics_chosen = tmp_path / "oracle.yaml"
    topics_chosen.write_text(yaml.safe_dump(oracle))

    maps = {}
    for name, bag, extra in (
        ("raw", recordings.raw, ["--config", str(topics_chosen)]),
        ("proposed", recordings.realsense, ["--config", str(proposed)]),
        ("no_config", recordings.realsense, ["--config", str(topics_chosen)]),
    ):
        out = tmp_path / name
        assert main(["replay", str(bag), "--out", str(out), "--no-progress", *extra]) == 0
        maps[name] = SemanticMap.load(out / "map.npz")
        assert maps[name].metadata["frame_source_stats"]["frames_assembled"] == N_FRAMES

    frame_error = _jpeg_error(list(BagFrameSource(recordings.raw)),
                              list(BagFrameSource(recordings.realsense)))
    for name in ("proposed", "no_config"):
        agreement = _map_agreement(maps["raw"], maps[name])
        print(name, agreement, "frame JPEG error mean", frame_error.mean(),
              "p99", np.percentile(frame_error, 99))
        # same depth (lossless PNG), same poses up to ~1e-15 (TF chain vs PoseStamped): the
        # voxels agree within one voxel size, and nearly all are the very same voxels
        assert agreement["within_voxel_a"] >= 0.99 and agreement["within_voxel_b"] >= 0.99
        assert agreement["shared"] >= 0.98
        # fused colours err no more than the JPEG frames they were fused from
        assert agreement["colour_mean"] <= frame_error.mean()
        assert agreement["colour_p99"] <= np.percentile(frame_error, 99)


def test_synth_layout_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="color_transport"):
        BagTopics(color_transport="theora")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="depth_png_level"):
        BagTopics(depth_png_level=12)
    with pytest.raises(SystemExit):
        main(["synth", "--out", "x", "--layout", "zed"])


# ---------------------------------------------------------------- errors through the CLI

CUSTOM_TYPE = "acme_msgs/msg/RgbdFrame"


def _custom_type_bag(path: Path) -> None:
    """A bag whose colour topic carries a vendor message type no reader knows."""
    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg("std_msgs/Header header\nuint8[] rgbd\n", CUSTOM_TYPE))
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="cam")
    msg = store.types[CUSTOM_TYPE](header=header, rgbd=np.zeros(12, np.uint8))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/camera/color/image_raw", CUSTOM_TYPE, typestore=store)
        writer.write(conn, 1_000_000_000, store.serialize_cdr(msg, CUSTOM_TYPE))


def _camera_config(tmp_path: Path) -> Path:
    """A replay config for a camera's bag (no synthetic ground truth): the tiny 2D model."""
    path = tmp_path / "camera.yaml"
    path.write_text(yaml.safe_dump({"segmenter": {"kind": "diffusion", "profile": "tiny"}}))
    return path


def _error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"diff2scene {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_unexpected_type_on_a_configured_topic_names_topic_type_and_accepted(
    recordings: Recordings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    custom = tmp_path / "custom"
    _custom_type_bag(custom)
    out = str(tmp_path / "replay")
    camera = str(_camera_config(tmp_path))
    for command in (["bag-info", str(custom)],
                    ["replay", str(custom), "--out", out, "--config", camera]):
        assert main(command) == 2
        line = _error_line(capsys, command[0])
        assert f"colour topic '/camera/color/image_raw' has type {CUSTOM_TYPE}" in line
        assert f"accepted: {IMAGE_TYPES}" in line

    rs = str(recordings.realsense)
    cases = [
        (["--depth-topic", INFO],
         f"depth topic '{INFO}' has type sensor_msgs/msg/CameraInfo; accepted: {IMAGE_TYPES}"),
        (["--camera-info-topic", COLOR],
         f"camera_info topic '{COLOR}' has type sensor_msgs/msg/CompressedImage; accepted: "
         "sensor_msgs/msg/CameraInfo"),
        (["--pose-topic", INFO],
         f"pose topic '{INFO}' has type sensor_msgs/msg/CameraInfo; accepted: "
         "geometry_msgs/msg/PoseStamped"),
        # one topic cannot be both images (it would silently never complete a frame)
        (["--color-topic", COLOR, "--depth-topic", COLOR], "colour and depth are the same topic"),
    ]
    for flags, expected in cases:
        for command in (["bag-info", rs, *flags], ["replay", rs, "--out", out, *flags]):
            assert main(command) == 2, command
            assert expected in _error_line(capsys, command[0]), command


def test_a_bag_that_cannot_be_opened_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [")
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 4)
    missing = tmp_path / "missing"
    cases = [(missing, "bag not found"), (broken, "cannot open bag"), (junk, "cannot open bag")]
    camera = str(_camera_config(tmp_path))
    for path, expected in cases:
        for command in (["bag-info", str(path)],
                        ["replay", str(path), "--out", str(tmp_path / "replay"),
                         "--config", camera]):
            assert main(command) == 2, command
            assert expected in _error_line(capsys, command[0]), command


def test_replay_of_a_missing_bag_names_the_bag_with_the_default_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bag is the problem, not the weights that the default 2D model would look for."""
    assert main(["replay", str(tmp_path / "missing"), "--out", str(tmp_path / "replay")]) == 2
    assert "bag not found" in _error_line(capsys, "replay")


def test_the_installed_command_reports_a_wrong_type_without_a_traceback(tmp_path: Path) -> None:
    """The same through a real process: exit status 2, one line on stderr."""
    custom = tmp_path / "custom"
    _custom_type_bag(custom)
    result = subprocess.run(
        [sys.executable, "-m", "diff2scene.cli", "replay", str(custom), "--out",
         str(tmp_path / "replay"), "--config", str(_camera_config(tmp_path))],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"diff2scene replay: error: colour topic '/camera/color/image_raw' has type "
        f"{CUSTOM_TYPE}; accepted: {IMAGE_TYPES}"
    )

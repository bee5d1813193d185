"""The synthetic bag read back directly with rosbags and through the project's frame source."""

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from diff2scene.errors import ConfigError
from diff2scene.io.bag import BagFrameSource
from diff2scene.synth.bag import CAMERA_FRAME, depth_to_mm
from diff2scene.synth.cli import register
from diff2scene.synth.dataset import SynthConfig, SynthResult, synthesize
from diff2scene.synth.groundtruth import GroundTruth
from diff2scene.synth.render import RenderConfig, Renderer, camera_path, camera_trajectory
from diff2scene.synth.scene import generate_scene

SEED = 9
N_FRAMES = 6
EXPECTED_TYPES = {
    "/camera/color/image_raw": "sensor_msgs/msg/Image",
    "/camera/depth/image_rect_raw": "sensor_msgs/msg/Image",
    "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
    "/camera/pose": "geometry_msgs/msg/PoseStamped",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/camera/instance/image_raw": "sensor_msgs/msg/Image",
}


def _config() -> SynthConfig:
    return SynthConfig(
        render=RenderConfig(width=96, height=72, n_frames=N_FRAMES), gt_points_per_m2=50.0
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return synthesize(tmp_path_factory.mktemp("synth"), SEED, _config())


@pytest.fixture(scope="module")
def messages(dataset: SynthResult) -> dict[str, list[tuple[int, Any]]]:
    out: dict[str, list[tuple[int, Any]]] = {}
    with AnyReader([dataset.bag_path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as r:
        assert {c.topic: c.msgtype for c in r.connections} == EXPECTED_TYPES
        for conn, t, raw in r.messages():
            out.setdefault(conn.topic, []).append((t, r.deserialize(raw, conn.msgtype)))
    return out


def _stamp(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def test_layout_and_counts(dataset: SynthResult, messages: dict[str, list[Any]]) -> None:
    assert (dataset.out_dir / "bag" / "metadata.yaml").is_file()
    assert list((dataset.out_dir / "bag").glob("*.mcap"))
    assert {p.name for p in dataset.out_dir.iterdir()} == {"bag", "scene.json", "gt_points.npz"}
    assert {t: len(m) for t, m in messages.items()} == dict.fromkeys(EXPECTED_TYPES, N_FRAMES)
    assert dataset.bag.messages == dict.fromkeys(EXPECTED_TYPES, N_FRAMES)


def _stamps() -> list[int]:
    trajectory = camera_trajectory(generate_scene(SEED, _config().scene), _config().render)
    return [trajectory.stamp_ns(i) for i in range(N_FRAMES)]


def test_stamps_frames_and_encodings(
    dataset: SynthResult, messages: dict[str, list[Any]]
) -> None:
    expected = _stamps()
    # A constant frame rate, the one the result and the ground truth's metadata report.
    assert np.ptp(np.diff(expected)) <= 1  # each stamp is rounded to the nanosecond
    rate_hz = 1e9 * (N_FRAMES - 1) / (expected[-1] - expected[0])
    assert dataset.frame_rate_hz == pytest.approx(rate_hz, rel=1e-6)
    metadata = GroundTruth.load(dataset.out_dir).metadata
    assert metadata["frame_rate_hz"] == pytest.approx(rate_hz, rel=1e-6)
    for topic, items in messages.items():
        stamps = [_stamp(m) if topic != "/tf" else _stamp(m.transforms[0]) for _, m in items]
        assert stamps == expected, topic
        assert [t for t, _ in items] == expected  # log time = header stamp
    encodings = {
        "/camera/color/image_raw": ("rgb8", 3),
        "/camera/depth/image_rect_raw": ("16UC1", 2),
        "/camera/instance/image_raw": ("32SC1", 4),
    }
    for topic, (encoding, bytes_per_px) in encodings.items():
        for _, msg in messages[topic]:
            assert msg.header.frame_id == CAMERA_FRAME
            assert (msg.encoding, msg.width, msg.height) == (encoding, 96, 72)
            assert msg.step == 96 * bytes_per_px and len(msg.data) == msg.step * 72
            assert msg.is_bigendian == 0
    info = messages["/camera/color/camera_info"][0][1]
    assert info.header.frame_id == CAMERA_FRAME
    assert info.distortion_model == "plumb_bob" and not np.any(info.d)
    matrix = _config().render.intrinsics().matrix()
    assert np.allclose(info.k.reshape(3, 3), matrix)
    assert np.allclose(info.p.reshape(3, 4)[:, :3], matrix)
    pose = messages["/camera/pose"][0][1]
    assert pose.header.frame_id == "map"
    tf = messages["/tf"][0][1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", CAMERA_FRAME)


def test_depth_and_instances_match_the_ray_cast(messages: dict[str, list[Any]]) -> None:
    config = _config().render
    scene = generate_scene(SEED, _config().scene)
    renderer = Renderer(scene, config)
    poses = camera_path(scene, config)
    for i in (0, N_FRAMES - 1):
        exact = renderer.render(poses[i])
        depth_msg = messages["/camera/depth/image_rect_raw"][i][1]
        depth_m = np.frombuffer(depth_msg.data, dtype="<u2").reshape(72, 96) / 1000.0
        valid = depth_m > 0
        assert valid.mean() > 0.5
        bound = 5 * config.depth_sigma_m(exact.depth_m) + 0.0005
        assert np.all(np.abs(depth_m - exact.depth_m)[valid] <= bound[valid])
        # A single pixel, spelled out: the image centre.
        v, u = 36, 48
        if valid[v, u]:
            assert abs(depth_m[v, u] - exact.depth_m[v, u]) <= bound[v, u]
        inst_msg = messages["/camera/instance/image_raw"][i][1]
        ids = np.frombuffer(inst_msg.data, dtype="<i4").reshape(72, 96)
        assert np.array_equal(ids, exact.instance_ids)
        pose = messages["/camera/pose"][i][1].pose
        assert np.allclose([pose.position.x, pose.position.y, pose.position.z], poses[i][:3, 3])


def test_frame_source_reads_the_bag(dataset: SynthResult) -> None:
    frames = list(BagFrameSource(dataset.bag_path))
    assert len(frames) == N_FRAMES
    config = _config().render
    scene = generate_scene(SEED, _config().scene)
    poses = camera_path(scene, config)
    stamps = _stamps()
    for i, frame in enumerate(frames):
        assert frame.stamp_ns == stamps[i]
        assert frame.intrinsics == config.intrinsics()
        assert np.allclose(frame.T_world_camera, poses[i], atol=1e-6)
        assert frame.instance_ids is not None
    gt = GroundTruth.load(dataset.out_dir)
    assert frames[0].instance_ids is not None
    assert set(np.unique(frames[0].instance_ids)) <= set(gt.instance_classes())


def test_depth_to_mm_zeroes_invalid_values() -> None:
    depth = np.array([[0.0, 1.2344, np.nan], [np.inf, -1.0, 70.0]], dtype=np.float32)
    mm = depth_to_mm(depth)
    assert mm.dtype == np.uint16
    assert mm.tolist() == [[0, 1234, 0], [0, 0, 0]]


def test_existing_bag_needs_force(tmp_path: Path) -> None:
    tiny = SynthConfig(render=RenderConfig(width=32, height=24, n_frames=2), gt_points_per_m2=5.0)
    first = synthesize(tmp_path, 1, tiny)
    with pytest.raises(ConfigError, match="--force"):
        synthesize(tmp_path, 1, tiny)
    again = synthesize(tmp_path, 2, tiny, force=True)
    assert again.bag_path == first.bag_path and again.bag.frames == 2
    assert GroundTruth.load(tmp_path).metadata["seed"] == 2
    (again.bag_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="non-bag"):
        synthesize(tmp_path, 3, tiny, force=True)
    assert (again.bag_path / "notes.txt").exists()


def _synth_cli(argv: list[str]) -> int:
    """Run the ``synth`` subcommand as ``diff2scene.cli`` would, without importing the others."""
    parser = argparse.ArgumentParser(prog="diff2scene")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["synth", "--out", str(tmp_path), "--seed", "4", "--frames", "2"]
    args += ["--width", "32", "--height", "24", "--quiet"]
    assert _synth_cli(args) == 0
    out = capsys.readouterr().out
    assert "/camera/depth/image_rect_raw: 2" in out
    with pytest.raises(ConfigError, match="--force"):
        _synth_cli(args)
    assert _synth_cli([*args, "--force"]) == 0
    with pytest.raises(ConfigError, match="8x8"):
        _synth_cli(["synth", "--out", str(tmp_path), "--width", "2", "--force"])


def test_command_line_reads_a_yaml_config(tmp_path: Path) -> None:
    config = tmp_path / "synth.yaml"
    config.write_text(
        "render: {width: 40, height: 30, n_frames: 3, depth_noise: false}\n"
        "scene: {max_objects: 2}\n"
        "gt_points_per_m2: 5.0\n"
    )
    out = tmp_path / "out"
    assert _synth_cli(["synth", "--out", str(out), "--config", str(config), "--quiet"]) == 0
    gt = GroundTruth.load(out)
    assert len(gt.instances) <= 6 + 2
    assert gt.metadata["config"]["render"]["width"] == 40
    assert gt.metadata["config"]["render"]["depth_noise"] is False
    config.write_text("render: {widht: 40}\n")
    with pytest.raises(ConfigError, match="widht"):
        _synth_cli(["synth", "--out", str(tmp_path / "x"), "--config", str(config)])

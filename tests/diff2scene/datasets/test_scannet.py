"""``diff2scene import scannet``: a synthetic room in ScanNet's export layout, imported and
replayed, maps like the synthetic bag it came from; bad inputs stop with one line naming the
file."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from diff2scene.cli import main
from diff2scene.datasets.scannet import ScanNetSequence
from diff2scene.datasets.sequence import ImportConfig, import_sequence, summary_path
from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.eval.datasets import detect_format
from diff2scene.io.bag import BagFrameSource
from diff2scene.replay import ReplayConfig, ReplayRun
from diff2scene.segmentation.base import Segmenter2D, TextEncoder
from diff2scene.synth.dataset import SynthResult
from tests.diff2scene.datasets.conftest import (
    INVALID_AT,
    N_FRAMES,
    miou,
    replay_import,
    voxels,
)
from tests.diff2scene.datasets.layouts import SCENE, WrittenSequence, bag_frames, write_scannet

GT_FILES = [f"{SCENE}_vh_clean_2.labels.ply", f"{SCENE}.aggregation.json",
            f"{SCENE}_vh_clean_2.0.010000.segs.json"]  # fmt: skip


@pytest.fixture(scope="module")
def scannet(room: SynthResult, tmp_path_factory: pytest.TempPathFactory) -> WrittenSequence:
    return write_scannet(room, tmp_path_factory.mktemp("scannet") / SCENE, invalid_at=INVALID_AT)


@pytest.fixture(scope="module")
def imported(
    scannet: WrittenSequence, room: SynthResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int, str]:
    """The import through the command line: (bag, exit status, what it printed)."""
    bag = tmp_path_factory.mktemp("imported") / SCENE / "bag"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["import", "scannet", str(scannet.root), "--out", str(bag),
                     "--rate-hz", str(room.frame_rate_hz), "--no-progress"])  # fmt: skip
    return bag, code, out.getvalue()


def test_import_writes_a_robot_bag_with_the_ground_truth_beside_it(
    imported: tuple[Path, int, str], scannet: WrittenSequence
) -> None:
    bag, code, printed = imported
    assert code == 0
    summary = json.loads(summary_path(bag).read_text())
    assert summary["frames_in_sequence"] == N_FRAMES + 1
    assert summary["frames_written"] == N_FRAMES
    assert summary["invalid_pose_frames"] == [INVALID_AT] == scannet.invalid
    assert f"skipped: 1 frame(s) with an invalid pose ({INVALID_AT})" in printed
    assert summary["messages"] == {
        "/camera/color/camera_info": N_FRAMES, "/tf": N_FRAMES,
        "/camera/color/image_raw/compressed": N_FRAMES,
        "/camera/depth/image_rect_raw/compressedDepth": N_FRAMES,
    }  # fmt: skip
    # the ground truth is linked beside the bag, where the evaluation finds a ScanNet scene
    for name in GT_FILES:
        link = bag.parent / name
        assert link.is_symlink() and link.resolve() == (scannet.root / name).resolve()
    assert detect_format(bag.parent) == "scannet"
    # a replay needs no topic configuration: the source picks the robot topics and TF
    layout = BagFrameSource(bag).layout
    assert layout.color_topic == "/camera/color/image_raw/compressed"
    assert layout.depth_topic == "/camera/depth/image_rect_raw/compressedDepth"
    assert layout.pose_source == "tf" and not layout.instance_topic


def test_frames_carry_the_depth_camera_view_registered_colour_and_the_poses(
    imported: tuple[Path, int, str], room: SynthResult
) -> None:
    bag, _, _ = imported
    synthetic = bag_frames(room)
    frames = list(BagFrameSource(bag))
    assert len(frames) == N_FRAMES
    for got, want in zip(frames, synthetic, strict=True):
        k, w = got.intrinsics, want.intrinsics  # written as text with 9 decimals
        assert (k.width, k.height) == (w.width, w.height)
        np.testing.assert_allclose([k.fx, k.fy, k.cx, k.cy], [w.fx, w.fy, w.cx, w.cy], atol=1e-8)
        np.testing.assert_array_equal(got.depth_m, want.depth_m)
        np.testing.assert_allclose(got.T_world_camera, want.T_world_camera, atol=1e-6)
        # JPEG twice (the export's and the bag's); a registration off by the colour image's
        # border or scale would be tens of grey levels off on this textured room
        err = np.abs(got.rgb.astype(np.int16) - want.rgb.astype(np.int16)).mean()
        assert err < 3.0, f"frame {got.index}: mean colour error {err:.1f}"


@pytest.fixture(scope="module")
def import_run(
    imported: tuple[Path, int, str],
    scannet: WrittenSequence,
    room: SynthResult,
    replay_config: ReplayConfig,
    oracle: tuple[Segmenter2D, TextEncoder],
) -> ReplayRun:
    """The imported bag replayed with the oracle shown each frame's synthetic view."""
    return replay_import(imported[0], scannet, room=room, config=replay_config, oracle=oracle)


def test_replay_of_the_import_maps_and_scores_like_the_synthetic_bag(
    imported: tuple[Path, int, str], import_run: ReplayRun, synthetic_run: ReplayRun
) -> None:
    bag = imported[0]
    run = import_run
    assert run.frames_delivered == N_FRAMES and not run.problems
    # the invalid-pose frame left a gap in the camera's stamps, which the replay counts
    assert run.input_counters["input_gaps"] == 1
    assert voxels(run) == pytest.approx(voxels(synthetic_run), rel=0.01)
    # both maps scored against the ScanNet-format ground truth beside the imported bag
    got, want = miou(run, bag.parent), miou(synthetic_run, bag.parent)
    assert got.keys() == want.keys() and "ensemble" in got
    for branch, value in want.items():
        assert value > 0.3, f"{branch}: the oracle map should score well, got {value}"
        assert got[branch] == pytest.approx(value, abs=0.01), branch


def test_stride_and_max_frames_keep_the_sequence_timing(
    scannet: WrittenSequence, tmp_path: Path
) -> None:
    config = ImportConfig(every=4, max_frames=4, rate_hz=3.0)
    result = import_sequence(ScanNetSequence(scannet.root), tmp_path / "bag", config,
                             progress=False)  # fmt: skip
    # 0, 4, 8, then 12 is the invalid one, then 16: four written
    assert result.invalid_pose_frames == [INVALID_AT]
    assert (result.frames_written, result.first_frame, result.last_frame) == (4, 0, 16)
    with AnyReader([tmp_path / "bag"], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as r:
        stamps = [t for c, t, _ in r.messages() if c.topic == "/camera/color/camera_info"]
    assert stamps == [config.stamp_ns(n) for n in (0, 4, 8, 16)]


@pytest.fixture
def scene_copy(scannet: WrittenSequence, tmp_path: Path) -> Path:
    return Path(shutil.copytree(scannet.root, tmp_path / SCENE))


@pytest.mark.parametrize(("damage", "named"), [
    (lambda d: (d / "depth" / "7.png").unlink(), "depth/7.png"),
    (lambda d: (d / "color" / "5.jpg").write_bytes(b"not a jpeg"), "color/5.jpg"),
    (lambda d: (d / "pose" / "9.txt").write_text("1 0 0 0\n0 1 0 0\n"), "pose/9.txt"),
    (lambda d: (d / "pose" / "3.txt").write_text("2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"),
     "pose/3.txt"),
    (lambda d: (d / "intrinsic" / "intrinsic_color.txt").unlink(), "intrinsic_color.txt"),
    (lambda d: shutil.rmtree(d / "pose"), "pose"),
])  # fmt: skip
def test_a_bad_file_stops_the_import_with_one_line_naming_it(
    scene_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, named: str
) -> None:
    damage(scene_copy)
    bag = tmp_path / "out" / "bag"
    code = main(["import", "scannet", str(scene_copy), "--out", str(bag), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("diff2scene import: error: ") and err.count("\n") == 1, err
    assert named in err and "Traceback" not in err
    # nothing that looks like a bag is left behind, finished or partial
    assert not bag.exists() and not (tmp_path / "out" / ".bag.partial").exists()


def test_an_existing_bag_or_another_scenes_ground_truth_is_not_overwritten(
    scannet: WrittenSequence, tmp_path: Path
) -> None:
    bag = tmp_path / SCENE / "bag"
    seq = ScanNetSequence(scannet.root)
    first = import_sequence(seq, bag, ImportConfig(max_frames=2), progress=False)
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        import_sequence(seq, bag, ImportConfig(max_frames=2), progress=False)
    again = import_sequence(seq, bag, ImportConfig(max_frames=3), force=True, progress=False)
    assert (first.frames_written, again.frames_written) == (2, 3)
    assert {g.how for g in again.ground_truth} == {"kept"}
    # a second scene into the same directory would be scored against the first one's labels
    other = Path(shutil.copytree(scannet.root, tmp_path / "scene0043_00"))
    for name in GT_FILES:
        (other / name).rename(other / name.replace(SCENE, "scene0043_00"))
    with pytest.raises(DataFormatError, match="holds other ground truth"):
        import_sequence(ScanNetSequence(other), tmp_path / SCENE / "bag2", progress=False)

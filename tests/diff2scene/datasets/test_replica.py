"""``diff2scene import replica``: a synthetic room in NICE-SLAM's Replica layout, imported and
replayed, maps like the synthetic bag it came from; the camera file is read flat or under
``cam:``; bad files stop the import with one line naming them."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from diff2scene.cli import main
from diff2scene.datasets.replica import ReplicaSequence, read_camera
from diff2scene.datasets.sequence import ImportConfig, import_sequence, summary_path
from diff2scene.errors import DataFormatError
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
from tests.diff2scene.datasets.layouts import (
    REPLICA_DEPTH_SCALE,
    WrittenSequence,
    bag_frames,
    write_replica,
)


@pytest.fixture(scope="module")
def replica(room: SynthResult, tmp_path_factory: pytest.TempPathFactory) -> WrittenSequence:
    return write_replica(room, tmp_path_factory.mktemp("replica"), invalid_at=INVALID_AT)


@pytest.fixture(scope="module")
def imported(
    replica: WrittenSequence, room: SynthResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    bag = tmp_path_factory.mktemp("imported") / "room0" / "bag"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["import", "replica", str(replica.root), "--out", str(bag),
                     "--camera", str(replica.camera), "--ground-truth", str(replica.ground_truth),
                     "--rate-hz", str(room.frame_rate_hz), "--no-progress"])  # fmt: skip
    return bag, code


def test_import_reads_frames_depth_scale_and_trajectory(
    imported: tuple[Path, int], replica: WrittenSequence, room: SynthResult
) -> None:
    bag, code = imported
    assert code == 0
    summary = json.loads(summary_path(bag).read_text())
    assert (summary["frames_written"], summary["invalid_pose_frames"]) == (N_FRAMES, [INVALID_AT])
    assert summary["camera"]["png_depth_scale"] == REPLICA_DEPTH_SCALE
    # the semantic mesh and its object table beside the bag, flat, as the evaluation reads them
    assert {g["destination"] for g in summary["ground_truth"]} == {
        str(bag.parent / "mesh_semantic.ply"), str(bag.parent / "info_semantic.json")}
    assert detect_format(bag.parent) == "replica"
    for got, want in zip(BagFrameSource(bag), bag_frames(room), strict=True):
        # depth: 1/6553.5 m units, then millimetres in the bag
        np.testing.assert_allclose(got.depth_m, want.depth_m, atol=0.0011)
        np.testing.assert_allclose(got.T_world_camera, want.T_world_camera, atol=1e-6)
        # JPEG twice at 96x72 (the export's and the bag's): a few grey levels; another view
        # of this textured room would be tens
        err = np.abs(got.rgb.astype(np.int16) - want.rgb.astype(np.int16)).mean()
        assert err < 6.0, f"frame {got.index}: mean colour error {err:.1f}"


@pytest.fixture(scope="module")
def import_run(
    imported: tuple[Path, int],
    replica: WrittenSequence,
    room: SynthResult,
    replay_config: ReplayConfig,
    oracle: tuple[Segmenter2D, TextEncoder],
) -> ReplayRun:
    """The imported bag replayed with the oracle shown each frame's synthetic view."""
    return replay_import(imported[0], replica, room=room, config=replay_config, oracle=oracle)


def test_replay_of_the_import_maps_and_scores_like_the_synthetic_bag(
    imported: tuple[Path, int], import_run: ReplayRun, synthetic_run: ReplayRun
) -> None:
    bag = imported[0]
    run = import_run
    assert run.frames_delivered == N_FRAMES and run.input_counters["input_gaps"] == 1
    assert voxels(run) == pytest.approx(voxels(synthetic_run), rel=0.01)
    got, want = miou(run, bag.parent), miou(synthetic_run, bag.parent)
    assert got.keys() == want.keys() and "ensemble" in got
    for branch, value in want.items():
        assert value > 0.3, f"{branch}: the oracle map should score well, got {value}"
        assert got[branch] == pytest.approx(value, abs=0.01), branch


def test_camera_keys_flat_or_under_cam(tmp_path: Path) -> None:
    cam = {"H": 680, "W": 1200, "fx": 600.0, "fy": 600.0, "cx": 599.5, "cy": 339.5,
           "png_depth_scale": 6553.5}  # fmt: skip
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text(yaml.safe_dump(cam))
    nested.write_text(yaml.safe_dump({"inherit_from": "configs/nice_slam.yaml",
                                      "cam": {**cam, "crop_edge": 0}}))  # fmt: skip
    assert read_camera(flat) == read_camera(nested)
    k = read_camera(flat).intrinsics
    assert (k.width, k.height, k.fx, k.cy) == (1200, 680, 600.0, 339.5)
    del cam["png_depth_scale"]
    flat.write_text(yaml.safe_dump(cam))
    with pytest.raises(DataFormatError, match=r"flat\.yaml: missing camera key\(s\) "
                       "png_depth_scale"):  # fmt: skip
        read_camera(flat)


def test_bad_trajectory_and_missing_frames_are_named(
    replica: WrittenSequence, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert replica.camera is not None
    traj = replica.root / "traj.txt"
    lines = traj.read_text().splitlines()
    seq = tmp_path / "seq"
    (seq / "results").mkdir(parents=True)
    (seq / "traj.txt").write_text("\n".join([*lines[:3], "1 2 3"]) + "\n")
    with pytest.raises(DataFormatError, match=r"traj\.txt:4: 3 numbers, a pose has 16"):
        ReplicaSequence(seq, replica.camera)
    (seq / "traj.txt").write_text("\n".join(lines[:3]) + "\n")
    for n in range(3):
        for name in (f"frame{n:06d}.jpg", f"depth{n:06d}.png"):
            (seq / "results" / name).symlink_to(replica.root / "results" / name)
    (seq / "results" / "depth000001.png").unlink()
    code = main(["import", "replica", str(seq), "--camera", str(replica.camera),
                 "--out", str(tmp_path / "bag"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "results/depth000001.png" in err
    # ground truth asked for but incomplete: the missing half is named
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "mesh_semantic.ply").write_text("ply\n")
    with pytest.raises(DataFormatError, match=r"needs both mesh_semantic\.ply and info_semantic"):
        ReplicaSequence(seq, replica.camera, ground_truth_dir=gt)


def test_without_ground_truth_the_import_still_maps(
    replica: WrittenSequence, tmp_path: Path
) -> None:
    assert replica.camera is not None
    result = import_sequence(ReplicaSequence(replica.root, replica.camera), tmp_path / "bag",
                             ImportConfig(every=6), progress=False)  # fmt: skip
    # 0, 6, 12 (invalid), 18, 24
    assert (result.frames_written, result.invalid_pose_frames) == (4, [INVALID_AT])
    assert result.ground_truth == []


def test_the_camera_file_belongs_to_replica_only(
    replica: WrittenSequence, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["import", "replica", str(replica.root), "--out", str(tmp_path / "bag")])
    assert code == 2 and "import replica needs --camera FILE" in capsys.readouterr().err
    code = main(["import", "scannet", str(replica.root), "--out", str(tmp_path / "bag"),
                 "--camera", str(replica.camera)])  # fmt: skip
    assert code == 2 and "--camera is for replica" in capsys.readouterr().err
    assert not (tmp_path / "bag").exists()

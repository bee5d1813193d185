"""``diff2scene bench-dataset``: three tiny synthetic scenes and a broken bag on a local Ray
with 2 workers; then a scene in the layout ``diff2scene import`` leaves, the 3D network
distilled first, a time limit and Ctrl-C.

Ray is started once for the module (about 4 s here); the command finds it running and uses
it. The scenes are 80x60, 14 frames at 3 Hz (the camera loop flown slowly enough for the
mapper), mapped with the oracle at 5 cm voxels.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from diff2scene.bench_dataset.cli import plan
from diff2scene.bench_dataset.runner import RayOptions, ray_session
from diff2scene.bench_dataset.scenes import SCENES_DIR, outputs_complete, resolve_scenes
from diff2scene.cli import main
from diff2scene.errors import ConfigError
from diff2scene.eval.metrics import confusion_from_record, iou_from_confusion
from diff2scene.synth.dataset import SynthConfig, synthesize
from diff2scene.synth.groundtruth import GroundTruth
from diff2scene.synth.render import RenderConfig

NAMES = ("room_a", "room_b", "room_c")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dataset")
    render = RenderConfig(width=80, height=60, n_frames=14, rate_hz=3.0)
    paths = {}
    for seed, name in enumerate(NAMES):
        paths[name] = synthesize(root / name, seed,
                                 SynthConfig(render=render, gt_points_per_m2=50.0)).out_dir
    broken = root / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [not yaml\n")
    paths["broken"] = broken
    config = root / "replay.yaml"
    config.write_text(yaml.safe_dump({
        "segmenter": {"kind": "oracle"},
        "pipeline": {"mapper": {"voxel_size_m": 0.05}},
        "render": {"max_points": 2000, "figure_size_in": [4.0, 2.0], "dots_per_inch": 30},
        "eval": {"max_query_classes": 3, "max_relation_queries": 1},
    }))  # fmt: skip
    paths["config"] = config
    return paths


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, Any]]:
    with ray_session(RayOptions(workers=2)) as cluster:
        yield cluster


def _bench(dataset: dict[str, Path], out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    scenes = [str(dataset[n]) for n in (*NAMES, "broken")]
    code = main(["bench-dataset", *scenes, "--out", str(out), "--config",
                 str(dataset["config"]), "--workers", "2", "--no-progress", *extra])  # fmt: skip
    return code, json.loads((out / "dataset_report.json").read_text())


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in (out / SCENES_DIR).rglob("*") if p.is_file()}  # fmt: skip


def test_three_scenes_and_a_broken_bag(
    dataset: dict[str, Path], ray_cluster: dict[str, Any], tmp_path: Path
) -> None:
    assert ray_cluster["cpus"] == 2
    out = tmp_path / "bench"
    code, report = _bench(dataset, out)
    assert code == 1
    assert (report["done"], report["failed"], report["resumed"]) == (3, 1, 0)
    rows = {r["name"]: r for r in report["scenes"]}
    assert [rows[n]["status"] for n in NAMES] == ["done"] * 3
    assert all(rows[n]["attempts"] == 1 and rows[n]["frames_mapped"] > 0 for n in NAMES)
    # The broken bag: tried twice, reported with the error naming its file.
    (failure,) = report["failures"]
    assert failure["name"] == "broken" and failure["attempts"] == 2
    assert "DataFormatError" in failure["error"] and "metadata.yaml" in failure["error"]
    assert "broken" in (out / "dataset_report.md").read_text().split("## Failures")[1]
    assert (out / "dataset_report.png").stat().st_size > 0
    for name in NAMES:
        assert outputs_complete(out / SCENES_DIR / name)
    assert not outputs_complete(out / SCENES_DIR / "broken")

    # The pooled mIoU is the one of all points together: recomputed from the per-scene
    # confusion matrices in each scene's eval.json.
    evaluations = [json.loads((out / SCENES_DIR / n / "eval.json").read_text()) for n in NAMES]
    names = evaluations[0]["confusion"]["class_names"]
    split_of = evaluations[0]["confusion"]["split_of"]
    pooled = report["evaluation"]
    assert pooled["scenes_pooled"] == list(NAMES)
    assert set(pooled["branches"]) == {"salient", "ensemble"}
    for branch, entry in pooled["branches"].items():
        conf = sum(confusion_from_record(e["confusion"]["branches"][branch], names)
                   for e in evaluations)  # fmt: skip
        iou = iou_from_confusion(conf)
        assert entry["miou_all"] == pytest.approx(float(np.nanmean(iou)))
        for split in ("head", "common", "tail"):
            idx = [i for i, n in enumerate(names) if split_of[n] == split]
            assert entry[f"miou_{split}"] == pytest.approx(float(np.nanmean(iou[idx])))
    matched = sum(e["query_counts"]["matched"] for e in evaluations)
    assert pooled["query_counts"]["matched"] == matched
    assert report["stages_ms"]["fusion"]["count"] == sum(rows[n]["frames_mapped"] for n in NAMES)

    # --resume keeps the three complete scenes untouched and tries only the broken one again.
    before = _mtimes(out)
    code, again = _bench(dataset, out, "--resume")
    assert code == 1
    assert (again["resumed"], again["done"], again["failed"]) == (3, 0, 1)
    assert again["replayed_now"] == 0
    assert _mtimes(out) == before
    assert again["evaluation"]["branches"] == pooled["branches"]

    # Without --resume or --force, earlier outputs are not overwritten.
    assert main(["bench-dataset", str(dataset["room_a"]), "--out", str(out),
                 "--config", str(dataset["config"]), "--no-progress"]) == 2  # fmt: skip


def test_the_3d_network_is_distilled_first_and_every_replay_runs_it(
    dataset: dict[str, Path], ray_cluster: dict[str, Any], tmp_path: Path
) -> None:
    from diff2scene.replay import load_replay_config
    from diff2scene.runtime import build_models

    segmenter, _ = build_models(load_replay_config(dataset["config"]),
                                bag=dataset["room_b"] / "bag")  # fmt: skip
    train_config = tmp_path / "train.yaml"
    train_config.write_text(yaml.safe_dump({
        "model": {"init_dim": 4, "stem_kernel": 3, "planes": [4, 8, 8, 8, 8, 8, 4, 4],
                  "layers": [1] * 8, "head_dims": dict(segmenter.embedding_dims)},
        "segmenter": {"kind": "oracle"}, "mapper": {"voxel_size_m": 0.05}, "epochs": 5,
    }))  # fmt: skip
    out = tmp_path / "bench"
    args = ["bench-dataset", str(dataset["room_a"]), "--out", str(out), "--config",
            str(dataset["config"]), "--no-progress", "--train-scenes", str(dataset["room_b"]),
            "--train-config", str(train_config), "--train-epochs", "1"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "dataset_report.json").read_text())
    checkpoint = out / "net3d" / "checkpoints" / "epoch_0001.safetensors"
    assert report["net3d"]["checkpoint"] == str(checkpoint) and report["net3d"]["trained_now"]
    assert (out / "net3d" / "cache").is_dir()  # not in the working directory
    assert set(report["evaluation"]["branches"]) == {"salient", "geometric", "ensemble"}
    scene_report = json.loads((out / SCENES_DIR / "room_a" / "report.json").read_text())
    assert scene_report["stages_ms"]["net3d"]["count"] >= 1
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "dataset_report.json").read_text())
    assert again["net3d"]["checkpoint"] == str(checkpoint) and not again["net3d"]["trained_now"]


def _write_replica_ground_truth(scene_dir: Path, directory: Path) -> None:
    """The synthetic scene's labelled points as a Replica semantic mesh: one degenerate face
    per point carrying its instance as ``object_id``, and the object table."""
    gt = GroundTruth.load(scene_dir)
    n = gt.points.shape[0]
    header = ["ply", "format ascii 1.0", f"element vertex {n}", "property float x",
              "property float y", "property float z", f"element face {n}",
              "property list uchar int vertex_indices", "property int object_id",
              "end_header"]  # fmt: skip
    vertices = [f"{x:.5f} {y:.5f} {z:.5f}" for x, y, z in gt.points]
    faces = [f"3 {i} {i} {i} {int(o)}" for i, o in enumerate(gt.point_instance)]
    (directory / "mesh_semantic.ply").write_text("\n".join(header + vertices + faces) + "\n")
    objects = [{"id": i, "class_name": c} for i, c in gt.instance_classes().items()]
    (directory / "info_semantic.json").write_text(json.dumps({"objects": objects}))


def test_an_imported_scene_is_scored_against_the_dataset_ground_truth_beside_its_bag(
    dataset: dict[str, Path], ray_cluster: dict[str, Any], tmp_path: Path
) -> None:
    # The layout `diff2scene import replica SEQ --out room_r/bag` leaves: the bag, and the
    # semantic mesh beside it. The oracle 2D model reads the synthetic scene it came from.
    scene = tmp_path / "room_r"
    shutil.copytree(dataset["room_a"] / "bag", scene / "bag")
    _write_replica_ground_truth(dataset["room_a"], scene)
    config = tmp_path / "replay.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(dataset["config"].read_text()),
                                      "scene_dir": str(dataset["room_a"])}))  # fmt: skip
    out = tmp_path / "bench"
    args = ["bench-dataset", str(scene), "--out", str(out), "--config", str(config),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "dataset_report.json").read_text())
    evaluation = json.loads((out / SCENES_DIR / "room_r" / "eval.json").read_text())
    classes = GroundTruth.load(dataset["room_a"]).instance_classes().values()
    assert evaluation["confusion"]["class_names"] == sorted(set(classes))
    assert report["evaluation"]["scenes_pooled"] == ["room_r"]
    assert report["evaluation"]["branches"]["salient"]["miou_all"] > 0.1
    # Complete only with its evaluation: without eval.json, --resume replays it again.
    (out / SCENES_DIR / "room_r" / "eval.json").unlink()
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "dataset_report.json").read_text())["replayed_now"] == 1


def test_a_scene_past_its_time_limit_is_cancelled_retried_then_reported(
    dataset: dict[str, Path], ray_cluster: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    code = main(["bench-dataset", str(dataset["room_a"]), "--out", str(out), "--config",
                 str(dataset["config"]), "--timeout-s", "0.5", "--no-progress"])  # fmt: skip
    report = json.loads((out / "dataset_report.json").read_text())
    assert code == 1
    (failure,) = report["failures"]
    assert failure["attempts"] == 2 and failure["error"].startswith("TimeoutError")
    assert report["evaluation"] is None


def test_ctrl_c_cancels_the_tasks_and_writes_the_report(
    dataset: dict[str, Path], ray_cluster: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import ray

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "wait", interrupted)
    out = tmp_path / "bench"
    code, report = _bench(dataset, out)
    assert code == 130
    assert report["interrupted"] and report["cancelled"] == 4 and report["done"] == 0
    assert {f["status"] for f in report["failures"]} == {"cancelled"}


def test_plan_refuses_duplicates_and_keeps_only_complete_outputs(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="two scenes are named"):
        resolve_scenes([dataset["room_a"], dataset["room_a"] / "bag"])
    scenes = resolve_scenes([dataset["room_a"], dataset["room_b"]])
    assert scenes[0].bag == dataset["room_a"] / "bag"
    half_done = tmp_path / SCENES_DIR / "room_b"
    half_done.mkdir(parents=True)
    (half_done / "map.npz").write_bytes(b"")
    todo, kept = plan(scenes, tmp_path, resume=True, force=False)
    assert kept == [] and [(s.name, replace_it) for s, replace_it in todo] == [
        ("room_a", False), ("room_b", True)]  # fmt: skip
    with pytest.raises(ConfigError, match="room_b"):
        plan(scenes, tmp_path, resume=False, force=False)

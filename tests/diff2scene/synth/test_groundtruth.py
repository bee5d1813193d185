import json
from pathlib import Path

import numpy as np
import pytest

from diff2scene.errors import DataFormatError
from diff2scene.synth.classes import CLASSES
from diff2scene.synth.groundtruth import POINTS_FILE, SCENE_FILE, GroundTruth
from diff2scene.synth.scene import generate_scene


@pytest.fixture(scope="module")
def gt() -> GroundTruth:
    return GroundTruth.from_scene(generate_scene(6), points_per_m2=200.0, metadata={"note": "x"})


def test_points_are_labelled_and_lie_on_their_instances(gt: GroundTruth) -> None:
    assert len(gt.classes) == len(CLASSES)
    assert {c.tier for c in gt.classes} == {"head", "common", "tail"}
    assert gt.points.dtype == np.float32 and gt.points.shape[1] == 3
    by_id = {inst.instance_id: inst for inst in gt.instances}
    assert set(np.unique(gt.point_instance)) == set(by_id)  # every instance is sampled
    for iid, inst in by_id.items():
        pts = gt.points[gt.point_instance == iid]
        assert np.all(pts >= np.array(inst.bbox_min_m, dtype=np.float32) - 1e-4)
        assert np.all(pts <= np.array(inst.bbox_max_m, dtype=np.float32) + 1e-4)
        assert np.all(gt.point_class[gt.point_instance == iid] == inst.class_id)
    # Area-uniform: the floor gets about floor-area × density points.
    floor = next(i for i in gt.instances if i.class_name == "floor")
    area = (floor.bbox_max_m[0] - floor.bbox_min_m[0]) * (floor.bbox_max_m[1] - floor.bbox_min_m[1])
    assert np.sum(gt.point_instance == floor.instance_id) == pytest.approx(area * 200, rel=0.01)
    assert gt.metadata["seed"] == 6 and gt.metadata["note"] == "x"
    assert gt.instance_classes()[floor.instance_id] == "floor"
    assert gt.class_tiers()["wall"] == "head"


def test_sampling_is_deterministic_per_seed() -> None:
    a = GroundTruth.from_scene(generate_scene(6), points_per_m2=50.0)
    b = GroundTruth.from_scene(generate_scene(6), points_per_m2=50.0)
    assert np.array_equal(a.points, b.points)
    assert np.array_equal(a.point_instance, b.point_instance)


def test_save_load_round_trip(gt: GroundTruth, tmp_path: Path) -> None:
    gt.save(tmp_path)
    loaded = GroundTruth.load(tmp_path)
    assert loaded.classes == gt.classes
    assert loaded.instances == gt.instances
    assert loaded.metadata == gt.metadata
    assert np.array_equal(loaded.points, gt.points)
    assert np.array_equal(loaded.point_instance, gt.point_instance)
    assert np.array_equal(loaded.point_class, gt.point_class)


def _saved(gt: GroundTruth, directory: Path) -> Path:
    gt.save(directory)
    return directory


def test_missing_files_are_reported(gt: GroundTruth, tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        GroundTruth.load(tmp_path)
    _saved(gt, tmp_path)
    (tmp_path / POINTS_FILE).unlink()
    with pytest.raises(DataFormatError, match="not found"):
        GroundTruth.load(tmp_path)


def test_truncated_point_file_is_rejected(gt: GroundTruth, tmp_path: Path) -> None:
    path = _saved(gt, tmp_path) / POINTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="unreadable"):
        GroundTruth.load(tmp_path)


def test_pickled_arrays_are_refused(gt: GroundTruth, tmp_path: Path) -> None:
    path = _saved(gt, tmp_path) / POINTS_FILE
    objects = np.empty(len(gt.points), dtype=object)
    np.savez(path, points=objects, point_instance=gt.point_instance, point_class=gt.point_class)
    with pytest.raises(DataFormatError, match="unreadable"):
        GroundTruth.load(tmp_path)


def test_inconsistent_labels_are_rejected(gt: GroundTruth, tmp_path: Path) -> None:
    path = _saved(gt, tmp_path) / POINTS_FILE
    wrong = gt.point_class.copy()
    wrong[0] = wrong[0] % len(CLASSES) + 1
    np.savez(path, points=gt.points, point_instance=gt.point_instance, point_class=wrong)
    with pytest.raises(DataFormatError, match="point_class disagrees"):
        GroundTruth.load(tmp_path)
    unknown = gt.point_instance.copy()
    unknown[-1] = 10_000
    np.savez(path, points=gt.points, point_instance=unknown, point_class=gt.point_class)
    with pytest.raises(DataFormatError, match="missing from the table"):
        GroundTruth.load(tmp_path)
    np.savez(path, points=gt.points.astype(np.float64), point_instance=gt.point_instance,
             point_class=gt.point_class)
    with pytest.raises(DataFormatError, match="float32"):
        GroundTruth.load(tmp_path)


def test_corrupt_tables_are_rejected(gt: GroundTruth, tmp_path: Path) -> None:
    scene_path = _saved(gt, tmp_path) / SCENE_FILE
    good = json.loads(scene_path.read_text())
    scene_path.write_text(scene_path.read_text()[:100])
    with pytest.raises(DataFormatError, match="not valid JSON"):
        GroundTruth.load(tmp_path)
    for broken in (
        {**good, "version": 99},
        {**good, "instances": [{"id": 1}]},
        {**good, "classes": [{**good["classes"][0], "tier": "legendary"}]},
        [1, 2, 3],
    ):
        scene_path.write_text(json.dumps(broken))
        with pytest.raises(DataFormatError, match="malformed"):
            GroundTruth.load(tmp_path)
    renamed = json.loads(json.dumps(good))
    renamed["instances"][0]["class_name"] = "sofa"  # id says floor
    scene_path.write_text(json.dumps(renamed))
    with pytest.raises(DataFormatError, match="not in the class table"):
        GroundTruth.load(tmp_path)

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diff2scene.eval.datasets import EvalScene
from diff2scene.eval.evaluate import EvalConfig, evaluate_scene, summarise, write_report
from diff2scene.query.engine import QueryConfig, QueryEngine
from diff2scene.query.ensemble import EnsembleConfig
from diff2scene.query.instances import InstanceConfig
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.oracle import OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig
from tests.diff2scene.query.toy import OBJECTS, build_toy_map

CLASSES = ["floor", "chair", "table", "lamp", "sofa"]


@pytest.fixture(scope="module")
def engine() -> QueryEngine:
    cfg = TextEncoderConfig(clip=ClipConfig.tiny_profile())
    encoder = ClipTextEncoder(build_clip(cfg.clip), cfg)
    oracle = OracleSegmenter({}, encoder)
    toy = build_toy_map(encoder, oracle)
    return QueryEngine.from_snapshot(
        toy.snapshot(),
        encoder,
        oracle,
        QueryConfig(instances=InstanceConfig(min_voxels=5)),
        ensemble=EnsembleConfig(num_prototypes=0),
    )


def toy_scene(engine: QueryEngine) -> EvalScene:
    # Ground-truth points 1 cm off the voxel centres; object j is instance j + 1.
    obj = np.concatenate([np.full(n, j) for j, n in enumerate(_counts())])
    return EvalScene(
        name="toy",
        points=engine.points_m + np.float32(0.01),
        point_class=np.array([CLASSES.index(OBJECTS[j][1]) for j in obj], dtype=np.int32),
        point_instance=(obj + 1).astype(np.int32),
        class_names=CLASSES,
        split_of={"floor": "head", "chair": "head", "table": "common", "lamp": "tail",
                  "sofa": "tail"},
    )  # fmt: skip


def _counts() -> list[int]:
    from tests.diff2scene.query.toy import _box

    return [len(_box(lo, hi)) for _, _, lo, hi in OBJECTS]


def test_evaluation_of_a_well_labelled_map(engine: QueryEngine, tmp_path: Path) -> None:
    scene = toy_scene(engine)
    ev = evaluate_scene(scene, engine, EvalConfig(min_instance_voxels=5))
    report = summarise([ev, ev])
    sal = report["branches"]["salient"]
    assert sal["miou_all"] == pytest.approx(1.0)
    assert sal["miou_head"] == pytest.approx(1.0) and sal["miou_tail"] == pytest.approx(1.0)
    assert sal["per_class_iou"]["sofa"] is None  # absent from the scene
    assert set(report["branches"]) == {"salient", "geometric", "ensemble"}
    assert report["query_counts"] == {"matched": 10, "pred": 10, "gt": 10}  # 5 objects × 2
    assert report["query_precision"] == 1.0 and report["query_recall"] == 1.0
    asked = {q["query"] for q in report["queries"]}
    assert {"lamp on the table", "chair next to the table", "table next to the chair"} <= asked
    assert report["relation_query_precision"] == 1.0
    paths = write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["eval.json", "eval.md", "eval.png"]
    assert json.loads(paths[0].read_text())["scenes"] == ["toy", "toy"]
    assert "| salient | 100.0 |" in paths[1].read_text()
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_points_far_from_the_map_count_as_missed(engine: QueryEngine) -> None:
    scene = toy_scene(engine)
    scene.points = scene.points + np.float32(1.0)  # nothing within 5 cm
    report = summarise([evaluate_scene(scene, engine, EvalConfig(max_relation_queries=0))])
    assert report["branches"]["ensemble"]["miou_all"] == 0.0
    assert report["query_counts"]["gt"] == 0

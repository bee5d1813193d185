from __future__ import annotations

import numpy as np
import pytest

from diff2scene.errors import InputError
from diff2scene.query.engine import QueryConfig, QueryEngine
from diff2scene.query.ensemble import EnsembleConfig, EnsembleScorer
from diff2scene.query.instances import InstanceConfig, cluster_voxels
from diff2scene.query.labelling import LabellingConfig, label_map
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.oracle import OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig
from tests.diff2scene.query.toy import OBJECTS, ToyMap, build_toy_map


@pytest.fixture(scope="module")
def encoder() -> ClipTextEncoder:
    cfg = TextEncoderConfig(clip=ClipConfig.tiny_profile())
    return ClipTextEncoder(build_clip(cfg.clip), cfg)


@pytest.fixture(scope="module")
def oracle(encoder: ClipTextEncoder) -> OracleSegmenter:
    return OracleSegmenter({}, encoder)


@pytest.fixture(scope="module")
def toy(encoder: ClipTextEncoder, oracle: OracleSegmenter) -> ToyMap:
    return build_toy_map(encoder, oracle)


def make_engine(
    toy: ToyMap, encoder: ClipTextEncoder, oracle: OracleSegmenter, **kw: object
) -> QueryEngine:
    return QueryEngine.from_snapshot(
        toy.snapshot(),
        encoder,
        oracle,
        QueryConfig(**{"instances": InstanceConfig(min_voxels=5), **kw}),  # type: ignore[arg-type]
        ensemble=EnsembleConfig(num_prototypes=0),
    )


def object_voxels(toy: ToyMap, name: str) -> np.ndarray:
    j = [o[0] for o in OBJECTS].index(name)
    return np.flatnonzero(toy.voxel_object == j)


def test_cluster_voxels_separates_and_bridges() -> None:
    a = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 1]], dtype=np.int32)
    b = a + np.array([4, 0, 0], dtype=np.int32)
    labels = cluster_voxels(np.concatenate([a, b]), connectivity_voxels=1)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]
    # A gap of two empty cells is bridged at radius 3, not at radius 2.
    assert len(set(cluster_voxels(np.concatenate([a, b]), connectivity_voxels=3))) == 1
    assert len(set(cluster_voxels(np.concatenate([a, b]), connectivity_voxels=2))) == 2


def test_two_separated_chairs_give_two_instances(
    toy: ToyMap, encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    engine = make_engine(toy, encoder, oracle)
    result = engine.query("chair")
    assert len(result.instances) == 2
    got = sorted(tuple(inst.voxel_indices) for inst in result.instances)
    want = sorted(tuple(object_voxels(toy, n)) for n in ("chair_a", "chair_b"))
    assert got == want
    assert result.instances[0].score >= result.instances[1].score > 0.25
    inst = next(i for i in result.instances if i.voxel_indices[0] in object_voxels(toy, "chair_a"))
    np.testing.assert_allclose(inst.box_min_m, [0.2, 0.2, 0.05], atol=1e-5)
    np.testing.assert_allclose(inst.box_size_m, [0.25, 0.25, 0.45], atol=1e-5)
    np.testing.assert_allclose(inst.centroid_m, [0.325, 0.325, 0.275], atol=1e-5)
    assert inst.num_points == 6 * 6 * 10
    assert result.scores.shape == (len(toy.coords),)
    # top_k limits the instances, not the matched voxels.
    assert len(engine.query("chair", top_k=1).instances) == 1


def test_absent_class_returns_nothing(
    toy: ToyMap, encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    engine = make_engine(toy, encoder, oracle)
    for absent in ("toilet", "bathtub"):
        result = engine.query(absent)
        assert result.instances == [] and result.matched.size == 0, absent


def test_relation_queries_rerank_targets(
    toy: ToyMap, encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    engine = make_engine(toy, encoder, oracle)
    near = engine.query("chair next to the table")
    assert [tuple(i.voxel_indices) for i in near.instances] == [
        tuple(object_voxels(toy, "chair_a"))
    ]
    assert len(near.anchor_instances) == 1
    on = engine.query("lamp on the table")
    assert [tuple(i.voxel_indices) for i in on.instances] == [tuple(object_voxels(toy, "lamp"))]
    assert engine.query("table on the lamp").instances == []
    assert engine.query("chair under the lamp").instances == []
    closest = engine.query("the chair closest to the lamp")
    assert tuple(closest.instances[0].voxel_indices) == tuple(object_voxels(toy, "chair_a"))
    assert len(closest.instances) == 2
    # Without a viewpoint "left" is the map frame's +y: chair_b (y 1.5..1.75) is left of the
    # table (centre y 0.4), chair_a (centre y 0.325) is right of it.
    left = engine.query("chair left of the table")
    assert [tuple(i.voxel_indices) for i in left.instances] == [
        tuple(object_voxels(toy, "chair_b"))
    ]
    right = engine.query("chair right of the table")
    assert [tuple(i.voxel_indices) for i in right.instances] == [
        tuple(object_voxels(toy, "chair_a"))
    ]
    # Seen from +x looking towards -x, left is -y: the sides swap.
    seen = engine.query("chair left of the table", viewpoint_m=np.array([5.0, 0.4, 1.0]))
    assert [tuple(i.voxel_indices) for i in seen.instances] == [
        tuple(object_voxels(toy, "chair_a"))
    ]


def test_bad_queries_and_arguments(
    toy: ToyMap, encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    engine = make_engine(toy, encoder, oracle)
    for text in ("", "x" * 500, "chair behind the table"):
        with pytest.raises(InputError):
            engine.query(text)
    with pytest.raises(InputError, match="score_threshold"):
        engine.query("chair", score_threshold=1.5)
    with pytest.raises(InputError, match="top_k"):
        engine.query("chair", top_k=0)


def test_label_map_with_named_and_custom_vocabulary(
    toy: ToyMap, encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    scorer = EnsembleScorer.from_arrays(
        toy.member_ids,
        toy.member_weights,
        toy.embeddings,
        toy.features_3d,
        EnsembleConfig(num_prototypes=0),
    )
    classes = ("floor", "chair", "table", "lamp", "sofa")
    lab = label_map(scorer, toy.embeddings, encoder, oracle, LabellingConfig(classes=classes))
    truth = np.array([classes.index(OBJECTS[j][1]) for j in toy.voxel_object])
    assert (lab.labels == truth).mean() > 0.99
    assert lab.confidence.min() > 0.1
    named = label_map(
        scorer, toy.embeddings, encoder, oracle, LabellingConfig(vocabulary="scannet20")
    )
    assert len(named.names) == 20
    chair = named.names.index("chair")
    assert (named.labels[object_voxels(toy, "chair_a")] == chair).all()
    # A voxel seen in no mask and with no 3D evidence gets "unknown".
    ids = toy.member_ids.copy()
    ids[0] = -1
    weak = EnsembleScorer.from_arrays(ids, toy.member_weights, toy.embeddings, {})
    lab2 = label_map(weak, toy.embeddings, encoder, oracle, LabellingConfig(classes=classes))
    assert lab2.labels[0] == -1 and lab2.labels[1] == truth[1]


#: A table with a small lamp on it and a large floor lamp beside it.
LAMPS = (
    ("floor", "floor", (0.0, 0.0, 0.0), (1.95, 1.95, 0.0)),
    ("table", "table", (0.6, 0.2, 0.05), (1.0, 0.6, 0.7)),
    ("desk_lamp", "lamp", (0.7, 0.3, 0.75), (0.8, 0.35, 0.85)),
    ("floor_lamp", "lamp", (1.4, 1.4, 0.05), (1.7, 1.7, 1.6)),
)


def test_fragments_pruned_but_relations_see_every_candidate(
    encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    toy = build_toy_map(encoder, oracle, objects=LAMPS)
    engine = make_engine(toy, encoder, oracle)
    j = {name: i for i, (name, _, _, _) in enumerate(LAMPS)}

    def voxels(name: str) -> tuple[int, ...]:
        return tuple(np.flatnonzero(toy.voxel_object == j[name]))

    # The desk lamp has ~1 % of the floor lamp's voxels: a plain query drops it as a fragment.
    plain = engine.query("lamp")
    assert [tuple(i.voxel_indices) for i in plain.instances] == [voxels("floor_lamp")]
    keep_all = make_engine(
        toy, encoder, oracle, instances=InstanceConfig(min_voxels=5, min_relative_mass=0.0)
    )
    assert len(keep_all.query("lamp").instances) == 2
    # The relation is tested before pruning, so the small lamp that answers it is found.
    on = engine.query("lamp on the table")
    assert [tuple(i.voxel_indices) for i in on.instances] == [voxels("desk_lamp")]
    assert engine.query("lamp on the floor").instances[0].voxel_indices[0] in voxels("floor_lamp")

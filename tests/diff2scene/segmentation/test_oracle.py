"""Oracle-noise segmenter: exact ground truth at zero noise, each noise knob does what it says."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from diff2scene.config import from_dict, to_dict
from diff2scene.errors import ConfigError, InputError
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.oracle import (
    OracleConfig,
    OracleSegmenter,
    degrade_mask,
    fuse_class_probabilities,
)
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig
from diff2scene.segmentation.vocabularies import build_vocabulary
from diff2scene.types import SPACE_CLIP, SPACE_DIFFUSION, CameraIntrinsics, Frame

H, W = 48, 64
CLASSES = {1: "chair", 2: "table", 3: "lamp", 4: "sofa", 5: "desk"}


@pytest.fixture(scope="module")
def encoder() -> ClipTextEncoder:
    cfg = TextEncoderConfig(clip=ClipConfig.tiny_profile())
    return ClipTextEncoder(build_clip(cfg.clip), cfg)


def instance_image() -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.int32)
    ids[5:20, 5:20] = 1  # chair, touches the table on its right
    ids[5:25, 20:40] = 2  # table (largest of the pair)
    ids[30:44, 5:15] = 3  # lamp
    ids[30:46, 30:60] = 4  # sofa
    ids[0:3, 60:64] = 5  # desk, tiny (12 px) in a corner
    return ids


def make_frame(index: int = 0, ids: np.ndarray | None = None) -> Frame:
    return Frame(
        stamp_ns=index * 100_000_000,
        rgb=np.zeros((H, W, 3), dtype=np.uint8),
        depth_m=np.ones((H, W), dtype=np.float32),
        intrinsics=CameraIntrinsics(W, H, 50.0, 50.0, W / 2, H / 2),
        T_world_camera=np.eye(4),
        index=index,
        instance_ids=instance_image() if ids is None else ids,
    )


def vocab_for(encoder: ClipTextEncoder, seen: set[str] | None = None):  # type: ignore[no-untyped-def]
    names = ["chair", "table", "lamp", "sofa", "desk", "bookshelf", "office chair", "couch"]
    return build_vocabulary(names, encoder, seen=seen or set())


def test_zero_noise_reproduces_ground_truth(encoder: ClipTextEncoder) -> None:
    oracle = OracleSegmenter(CLASSES, encoder, OracleConfig.exact())
    vocab = vocab_for(encoder, seen={"chair", "table"})
    ids = instance_image()
    masks, prov = oracle.segment_with_provenance(make_frame(), vocab)
    assert masks.masks.shape == (5, H, W) and masks.masks.dtype == np.float32
    for k, inst in enumerate(sorted(CLASSES)):
        np.testing.assert_array_equal(masks.masks[k], (ids == inst).astype(np.float32))
        assert prov[k].instance_ids == (inst,) and prov[k].emitted_class == CLASSES[inst]
    assert oracle.embedding_dims == {SPACE_DIFFUSION: encoder.dim, SPACE_CLIP: encoder.dim}
    for space, dim in oracle.embedding_dims.items():
        emb = masks.embeddings[space]
        assert emb.shape == (5, dim) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # The clip-space embedding *is* the class's text embedding, as in the vocabulary.
    np.testing.assert_allclose(masks.embeddings[SPACE_CLIP][0], vocab.text_embeddings[0], atol=1e-5)
    probs = masks.class_probs
    assert probs is not None and probs.shape == (5, len(vocab))
    assert (probs >= 0).all() and (probs.sum(axis=1) <= 1.0 + 1e-5).all()
    expected = [vocab.names.index(CLASSES[i]) for i in sorted(CLASSES)]
    assert probs.argmax(axis=1).tolist() == expected
    # Relabelling a saved map from embeddings alone gives the same answer.
    np.testing.assert_allclose(oracle.classify(masks.embeddings, vocab), probs, atol=1e-6)
    assert oracle.stats.instances == 5 and oracle.stats.missed == 0


def test_needs_ground_truth(encoder: ClipTextEncoder) -> None:
    oracle = OracleSegmenter(CLASSES, encoder, OracleConfig.exact())
    frame = make_frame()
    frame.instance_ids = None
    with pytest.raises(InputError, match="ground truth"):
        oracle.segment(frame)
    with pytest.raises(InputError, match="size"):
        oracle.segment(make_frame(ids=np.zeros((H, W + 1), dtype=np.int32)))
    with pytest.raises(InputError):
        OracleSegmenter({0: "floor"}, encoder)


def test_unknown_and_small_instances_are_skipped_and_counted(encoder: ClipTextEncoder) -> None:
    ids = instance_image()
    ids[46:48, 0:4] = 9  # not in the table
    oracle = OracleSegmenter(CLASSES, encoder, OracleConfig.exact(min_area_px=20))
    out, prov = oracle.segment_with_provenance(make_frame(ids=ids))
    assert [p.instance_ids for p in prov] == [(1,), (2,), (3,), (4,)]  # desk has 12 px
    assert oracle.stats.unknown_instances == 1 and oracle.stats.too_small == 1
    assert out.num_masks == 4


def test_miss_and_merge(encoder: ClipTextEncoder) -> None:
    missed = OracleSegmenter(CLASSES, encoder, OracleConfig.exact(miss_prob=1.0))
    assert missed.segment(make_frame()).num_masks == 0
    assert missed.stats.missed == 5
    merged = OracleSegmenter(CLASSES, encoder, OracleConfig.exact(merge_prob=1.0))
    out, prov = merged.segment_with_provenance(make_frame(), vocab_for(encoder))
    ids = instance_image()
    assert [p.instance_ids for p in prov] == [(1, 2), (3,), (4,), (5,)]
    np.testing.assert_array_equal(out.masks[0], np.isin(ids, [1, 2]).astype(np.float32))
    assert prov[0].emitted_class == "table"  # the larger instance names the merged mask
    assert merged.stats.merged == 1


def test_boundary_and_soft_edges(encoder: ClipTextEncoder) -> None:
    ids = instance_image()
    oracle = OracleSegmenter(CLASSES, encoder, OracleConfig.exact(boundary_px=2, min_area_px=20))
    out, prov = oracle.segment_with_provenance(make_frame(index=4))
    radii = [p.boundary_px for p in prov]
    assert all(-2 <= r <= 2 for r in radii)
    for mask, p in zip(out.masks, prov, strict=True):
        gt = np.isin(ids, p.instance_ids)
        area = int((mask > 0.5).sum())
        if p.boundary_px > 0:
            assert area > gt.sum() and mask[gt].min() == 1.0
        elif p.boundary_px < 0:
            assert area < gt.sum() and mask[~gt].max() == 0.0
        else:
            np.testing.assert_array_equal(mask, gt)
    # Radius 1 px on a box is a 3x3 dilation / erosion.
    square = np.ones((3, 3), dtype=bool)
    dilated = degrade_mask(ids == 3, 1)
    assert dilated is not None
    np.testing.assert_array_equal(dilated, ndimage.binary_dilation(ids == 3, square))
    eroded = degrade_mask(ids == 3, -1)
    assert eroded is not None
    np.testing.assert_array_equal(eroded, ndimage.binary_erosion(ids == 3, square))
    thin = np.zeros((H, W), dtype=bool)
    thin[20:23, 40:50] = True
    assert degrade_mask(thin, -2) is None  # a 3-px-thick object erodes away
    # The image border is no object edge: a corner object only erodes from its inner sides.
    corner = degrade_mask(ids == 5, -2)
    assert corner is not None and corner[0, 62:].all() and corner.sum() == 2
    soft = OracleSegmenter(CLASSES, encoder, OracleConfig.exact(edge_softness_px=3.0))
    masks = soft.segment(make_frame()).masks
    assert ((masks > 0) & (masks < 1)).any()
    for k, inst in enumerate(sorted(CLASSES)):
        np.testing.assert_array_equal(masks[k] > 0.5, ids == inst)


def test_spurious_masks(encoder: ClipTextEncoder) -> None:
    cfg = OracleConfig.exact(spurious_prob=1.0, max_spurious=2)
    oracle = OracleSegmenter(CLASSES, encoder, cfg)
    out, prov = oracle.segment_with_provenance(make_frame(), vocab_for(encoder))
    assert out.num_masks == 7
    spurious = [p for p in prov if not p.instance_ids]
    assert len(spurious) == 2 and all(p.emitted_class in CLASSES.values() for p in spurious)
    assert all(out.masks[k].sum() > 0 for k in (5, 6))
    assert oracle.stats.spurious == 2


def test_label_confusion_between_similar_classes(encoder: ClipTextEncoder) -> None:
    cfg = OracleConfig.exact(confusion_prob=1.0,
                             similar_classes={"desk": ["table"], "sofa": ["couch"]})
    assert cfg.similar_classes == {"couch": ["sofa"], "desk": ["table"], "sofa": ["couch"],
                                   "table": ["desk"]}
    oracle = OracleSegmenter(CLASSES, encoder, cfg)
    vocab = vocab_for(encoder)
    out, prov = oracle.segment_with_provenance(make_frame(), vocab)
    emitted = {p.true_class: p.emitted_class for p in prov}
    assert emitted == {"chair": "chair", "table": "desk", "lamp": "lamp", "sofa": "couch",
                       "desk": "table"}
    assert out.class_probs is not None
    assert [vocab.names[c] for c in out.class_probs.argmax(axis=1)] == [
        p.emitted_class for p in prov
    ]
    assert oracle.stats.confused == 3


def test_embedding_noise_and_determinism(encoder: ClipTextEncoder) -> None:
    cfg = OracleConfig.exact(embedding_noise=0.3, boundary_px=1, miss_prob=0.3, seed=7)
    clean = OracleSegmenter(CLASSES, encoder, OracleConfig.exact()).segment(make_frame(index=3))
    a = OracleSegmenter(CLASSES, encoder, cfg)
    b = OracleSegmenter(CLASSES, encoder, cfg)
    a3 = a.segment(make_frame(index=3))
    a5 = a.segment(make_frame(index=5))
    b5 = b.segment(make_frame(index=5))  # other order, other instance: same answer
    b3 = b.segment(make_frame(index=3))
    for x, y in ((a3, b3), (a5, b5)):
        np.testing.assert_array_equal(x.masks, y.masks)
        for space in x.embeddings:
            np.testing.assert_array_equal(x.embeddings[space], y.embeddings[space])
    other_seed = OracleSegmenter(CLASSES, encoder, OracleConfig.exact(embedding_noise=0.3, seed=8))
    assert not np.allclose(
        other_seed.segment(make_frame(index=3)).embeddings[SPACE_CLIP],
        OracleSegmenter(CLASSES, encoder, OracleConfig.exact(embedding_noise=0.3, seed=7))
        .segment(make_frame(index=3)).embeddings[SPACE_CLIP],
    )
    noisy = OracleSegmenter(CLASSES, encoder, OracleConfig.exact(embedding_noise=0.3))
    emb = noisy.segment(make_frame(index=3)).embeddings[SPACE_CLIP]
    cos = (emb * clean.embeddings[SPACE_CLIP]).sum(axis=1)
    assert (cos < 0.9999).all() and (cos > 0.85).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_diffusion_space_projection_for_wide_text_encoder() -> None:
    clip_cfg = ClipConfig(model_name="tiny", pretrained=None, tiny=True, tiny_embed_dim=300)
    wide = ClipTextEncoder(build_clip(clip_cfg), TextEncoderConfig(clip=clip_cfg))
    oracle = OracleSegmenter(CLASSES, wide, OracleConfig.exact())
    assert oracle.embedding_dims == {SPACE_DIFFUSION: 256, SPACE_CLIP: 300}
    np.testing.assert_allclose(oracle.projection.T @ oracle.projection, np.eye(256), atol=1e-5)
    vocab = vocab_for(wide)
    out = oracle.segment(make_frame(), vocab)
    assert out.embeddings[SPACE_DIFFUSION].shape == (5, 256)
    assert out.class_probs is not None
    assert [vocab.names[c] for c in out.class_probs.argmax(axis=1)] == [
        CLASSES[i] for i in sorted(CLASSES)
    ]
    again = OracleSegmenter(CLASSES, wide, OracleConfig.exact(seed=99))
    np.testing.assert_array_equal(again.projection, oracle.projection)


def test_fusion_matches_hand_computation() -> None:
    d_emb = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    d_txt = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    c_emb = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    c_txt = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)  # not normalised on purpose
    seen = np.array([True, False])
    scale, null, alpha, beta = 2.0, 0.5, 0.35, 0.65
    got = fuse_class_probabilities(
        diffusion_embeddings=d_emb, diffusion_text=d_txt, clip_embeddings=c_emb,
        clip_text=c_txt, seen=seen, logit_scale=scale, no_object_logit=null,
        alpha=alpha, beta=beta,
    )
    for i in range(2):
        ld = scale * d_emb[i] @ d_txt.T
        lc = scale * c_emb[i] @ (c_txt / np.linalg.norm(c_txt, axis=1, keepdims=True)).T
        pd = np.exp(ld) / np.exp(ld).sum()
        pc = np.exp(lc) / np.exp(lc).sum()
        p_null = np.exp(null) / (np.exp(ld).sum() + np.exp(null))
        a = np.array([alpha, beta])
        g = pd ** (1 - a) * pc**a
        np.testing.assert_allclose(got[i], g / g.sum() * (1 - p_null), rtol=1e-5)
    assert (got.sum(axis=1) < 1.0).all()


def test_classify_rejects_foreign_embeddings(encoder: ClipTextEncoder) -> None:
    oracle = OracleSegmenter(CLASSES, encoder, OracleConfig.exact())
    vocab = vocab_for(encoder)
    good = oracle.segment(make_frame()).embeddings
    with pytest.raises(InputError):
        oracle.classify({SPACE_CLIP: good[SPACE_CLIP]}, vocab)
    with pytest.raises(InputError):
        oracle.classify({**good, SPACE_CLIP: np.zeros((5, 768), np.float32)}, vocab)
    empty = oracle.segment(make_frame(ids=np.zeros((H, W), np.int32)), vocab)
    assert empty.num_masks == 0 and empty.class_probs is not None
    assert empty.class_probs.shape == (0, len(vocab))


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        from_dict(OracleConfig, {"miss_prob": 1.5})
    with pytest.raises(ConfigError):
        from_dict(OracleConfig, {"spurious_radius_frac": [0.2, 0.1]})
    cfg = from_dict(OracleConfig, {"boundary_px": 2, "similar_classes": {"mug": ["cup"]}})
    assert cfg.similar_classes == {"cup": ["mug"], "mug": ["cup"]}
    assert from_dict(OracleConfig, to_dict(cfg)) == cfg


def test_instances_embedded_as_colour_and_class() -> None:
    from diff2scene.segmentation.synthetic_text import SyntheticTextEncoder

    text = SyntheticTextEncoder()
    colours = {1: "red", 2: "brown", 3: "white", 4: "blue"}  # the desk (5) has no colour
    oracle = OracleSegmenter(CLASSES, text, OracleConfig.exact(), instance_colours=colours)
    masks, prov = oracle.segment_with_provenance(make_frame())
    assert [p.emitted_text for p in prov] == [
        "red chair", "brown table", "white lamp", "blue sofa", "desk"
    ]
    expected = text.encode([p.emitted_text for p in prov])
    np.testing.assert_allclose(masks.embeddings[SPACE_CLIP], expected, atol=1e-5)
    # Attribute queries tell instances of one class apart by colour in both spaces.
    vocab = build_vocabulary(["red chair", "blue chair", "table", "desk"], text, seen=set())
    probs = oracle.classify(masks.embeddings, vocab)
    assert int(np.argmax(probs[0])) == 0  # the red chair mask → "red chair"
    with pytest.raises(InputError, match="without a class"):
        OracleSegmenter(CLASSES, text, instance_colours={9: "red"})


def test_the_oracle_degrades_by_default_and_is_exact_only_when_asked() -> None:
    typical, exact = OracleConfig(), OracleConfig.exact()
    noise = ("boundary_px", "edge_softness_px", "miss_prob", "merge_prob", "spurious_prob",
             "confusion_prob", "embedding_noise")
    assert all(getattr(typical, name) > 0 for name in noise)
    assert all(getattr(exact, name) == 0 for name in noise) and exact.min_area_px == 1
    assert OracleConfig.exact(miss_prob=0.5).miss_prob == 0.5
    # a config file that sets one field keeps the preset's noise for the others
    from diff2scene.config import from_dict
    from diff2scene.segmentation.factory import SegmenterConfig

    seeded = from_dict(SegmenterConfig, {"kind": "oracle", "oracle": {"seed": 3}}).oracle
    assert seeded.seed == 3 and seeded.embedding_noise == typical.embedding_noise

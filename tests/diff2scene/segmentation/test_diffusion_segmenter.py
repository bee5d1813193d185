"""The tiny diffusion segmenter end to end: shapes, probabilities, determinism, windows, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diff2scene.errors import DataFormatError, InputError
from diff2scene.segmentation.base import Vocabulary
from diff2scene.segmentation.diffusion import DiffusionSegmenter, fuse_class_probabilities
from diff2scene.segmentation.profiles import build_segmenter, load_profile
from diff2scene.types import SPACE_CLIP, SPACE_DIFFUSION, CameraIntrinsics, Frame


def make_frame(height: int, width: int, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    # Smooth blobs rather than noise: closer to an image, and exercises real mask shapes.
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), np.float64)
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.1, 0.4) * min(height, width)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        rgb += blob[..., None] * rng.uniform(0, 255, 3)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return Frame(
        stamp_ns=0,
        rgb=rgb,
        depth_m=np.ones((height, width), np.float32),
        intrinsics=CameraIntrinsics(width, height, 500.0, 500.0, width / 2, height / 2),
        T_world_camera=np.eye(4),
    )


def make_vocabulary(dim: int, n: int = 5, seed: int = 1) -> Vocabulary:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    seen = np.arange(n) % 2 == 0
    return Vocabulary([f"class{i}" for i in range(n)], emb, seen)


@pytest.fixture(scope="module")
def segmenter() -> DiffusionSegmenter:
    return build_segmenter(load_profile("tiny"))


def test_segment_640x480_end_to_end(segmenter: DiffusionSegmenter) -> None:
    frame = make_frame(480, 640)
    dims = segmenter.embedding_dims
    vocab = make_vocabulary(dims[SPACE_CLIP])
    out = segmenter.segment(frame, vocab)
    n = segmenter.cfg.transformer_decoder.num_queries
    assert out.masks.shape == (n, 480, 640)
    assert out.masks.dtype == np.float32
    assert np.all((out.masks >= 0) & (out.masks <= 1))
    assert out.embeddings[SPACE_DIFFUSION].shape == (n, dims[SPACE_DIFFUSION])
    assert out.embeddings[SPACE_CLIP].shape == (n, dims[SPACE_CLIP])
    assert all(e.dtype == np.float32 for e in out.embeddings.values())
    assert all(np.isfinite(e).all() for e in out.embeddings.values())
    probs = out.class_probs
    assert probs is not None and probs.shape == (n, len(vocab)) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    row = probs.sum(axis=1)
    # The remainder of each row is the "no object" probability: strictly inside (0, 1].
    assert np.all(row <= 1 + 1e-5) and np.all(row > 0)
    assert not np.allclose(row, 1.0)
    # Relabelling from stored embeddings gives what segment() gave.
    np.testing.assert_allclose(segmenter.classify(out.embeddings, vocab), probs, atol=1e-6)
    assert segmenter.timings.total_s > 0


def test_same_seed_same_output_other_seed_differs() -> None:
    frame = make_frame(128, 128, seed=3)
    profile = load_profile("tiny")
    a = build_segmenter(profile).segment(frame)
    b = build_segmenter(profile).segment(frame)
    np.testing.assert_array_equal(a.masks, b.masks)
    for space in (SPACE_DIFFUSION, SPACE_CLIP):
        np.testing.assert_array_equal(a.embeddings[space], b.embeddings[space])
    assert profile.tiny is not None
    profile.tiny.seed = 1
    c = build_segmenter(profile).segment(frame)
    assert not np.allclose(a.embeddings[SPACE_DIFFUSION], c.embeddings[SPACE_DIFFUSION])


def _clip_fn(segmenter: DiffusionSegmenter):  # type: ignore[no-untyped-def]
    return lambda img: segmenter.model.clip_features(img)[0]


def test_sliding_window_equals_single_pass_at_window_size(segmenter: DiffusionSegmenter) -> None:
    backbone = segmenter.model.backbone
    win = backbone.cfg.window_size_px
    image = torch.from_numpy(make_frame(win, win, seed=5).rgb).permute(2, 0, 1)[None] / 255.0
    assert backbone.windows(win, win) == [(0, 0, win)]
    slid = backbone(image, _clip_fn(segmenter))
    single = backbone.window_forward(image, _clip_fn(segmenter))
    assert slid.keys() == single.keys() == {4, 8, 16, 32}
    for s in single:
        assert single[s].shape == (1, backbone.cfg.projection_dim, win // s, win // s)
        torch.testing.assert_close(slid[s], single[s], rtol=0, atol=0)


def test_overlapping_windows_are_stitched_and_averaged(segmenter: DiffusionSegmenter) -> None:
    backbone = segmenter.model.backbone
    win = backbone.cfg.window_size_px
    w = win + win // 2
    image = torch.from_numpy(make_frame(win, w, seed=6).rgb).permute(2, 0, 1)[None] / 255.0
    assert backbone.windows(win, w) == [(0, 0, win), (0, win // 2, win)]
    slid = backbone(image, _clip_fn(segmenter))
    left = backbone.window_forward(image[..., :win], _clip_fn(segmenter))
    right = backbone.window_forward(image[..., win // 2 :], _clip_fn(segmenter))
    for s, f in slid.items():
        assert f.shape[-2:] == (win // s, w // s)
        half = win // 2 // s
        torch.testing.assert_close(f[..., :half], left[s][..., :half])
        torch.testing.assert_close(f[..., -half:], right[s][..., -half:])
        torch.testing.assert_close(
            f[..., half : win // s], (left[s][..., half:] + right[s][..., :half]) / 2
        )


def test_taps_have_the_declared_strides(segmenter: DiffusionSegmenter) -> None:
    backbone = segmenter.model.backbone
    win = backbone.cfg.window_size_px
    image = torch.rand(1, 3, win, win, generator=torch.Generator().manual_seed(0))
    feats = backbone.raw_features(image, segmenter.model.clip_features(image)[0])
    assert len(feats) == len(backbone.taps) == 8
    for tap, f in zip(backbone.taps, feats, strict=True):
        assert f.shape[1] == tap.channels
        assert f.shape[-2:] == (win // tap.stride_px, win // tap.stride_px)
    # ODISE's grouping: s2 = enc5 + dec5, s3 = enc7 + unet11 + dec2, s4 = unet8, s5 = unet2 + unet5.
    assert backbone.stride_groups == {4: [0, 7], 8: [1, 5, 6], 16: [4], 32: [2, 3]}


def test_captioner_conditioning_reaches_the_unet(segmenter: DiffusionSegmenter) -> None:
    backbone = segmenter.model.backbone
    win = backbone.cfg.window_size_px
    image = torch.rand(1, 3, win, win, generator=torch.Generator().manual_seed(1))
    emb = segmenter.model.clip_features(image)[0]
    # α = 0 (ODISE's init) means the empty caption: the CLIP embedding cannot matter yet.
    a = backbone.raw_features(image, emb)[2]
    b = backbone.raw_features(image, emb * 3.0)[2]
    torch.testing.assert_close(a, b)
    captioner = backbone.captioner
    assert captioner.alpha_cond_time_embed is not None
    with torch.no_grad():
        captioner.alpha_cond.fill_(1.0)
        captioner.alpha_cond_time_embed.fill_(1.0)
    try:
        c = backbone.raw_features(image, emb)[2]
        d = backbone.raw_features(image, emb * 3.0)[2]
        assert not torch.allclose(c, d)
    finally:
        with torch.no_grad():
            captioner.alpha_cond.zero_()
            captioner.alpha_cond_time_embed.zero_()


def test_fusion_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    n, c, d, e = 3, 4, 6, 5
    mask = rng.normal(size=(n, d))
    text = rng.normal(size=(c, d))
    null = rng.normal(size=(1, d))
    cmask = rng.normal(size=(n, e))
    ctext = rng.normal(size=(c, e))
    seen = np.array([True, False, True, False])
    s_head, s_clip, alpha, beta = 10.0, 50.0, 0.35, 0.65

    def unit(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x / np.linalg.norm(x, axis=-1, keepdims=True)
        return out

    def softmax(x: np.ndarray) -> np.ndarray:
        z = np.exp(x - x.max(axis=-1, keepdims=True))
        out: np.ndarray = z / z.sum(axis=-1, keepdims=True)
        return out

    logits = s_head * unit(mask) @ unit(text).T
    null_logit = s_head * unit(mask) @ unit(null).T
    p_null = softmax(np.concatenate([logits, null_logit], 1))[:, -1]
    p_diff = softmax(logits)
    p_clip = softmax(s_clip * unit(cmask) @ unit(ctext).T)
    expected = np.empty((n, c))
    for k in range(c):
        a = alpha if seen[k] else beta
        expected[:, k] = p_diff[:, k] ** (1 - a) * p_clip[:, k] ** a
    expected = expected / expected.sum(1, keepdims=True) * (1 - p_null)[:, None]

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x)

    got = fuse_class_probabilities(
        mask_embed=t(mask),
        text_embed=t(text),
        null_embed=t(null),
        clip_mask_embed=t(cmask),
        clip_text_embed=t(ctext),
        seen=t(seen),
        head_logit_scale=s_head,
        clip_logit_scale=s_clip,
        alpha=alpha,
        beta=beta,
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(got.numpy().sum(1), 1 - p_null, rtol=1e-9)


def test_seen_and_novel_use_different_exponents(segmenter: DiffusionSegmenter) -> None:
    out = segmenter.segment(make_frame(128, 128, seed=2))
    vocab = make_vocabulary(segmenter.embedding_dims[SPACE_CLIP])
    all_seen = Vocabulary(vocab.names, vocab.text_embeddings, np.ones(len(vocab), bool))
    all_novel = Vocabulary(vocab.names, vocab.text_embeddings, np.zeros(len(vocab), bool))
    a = segmenter.classify(out.embeddings, all_seen)
    b = segmenter.classify(out.embeddings, all_novel)
    assert not np.allclose(a, b)
    # Both keep the same "no object" remainder, which only the head decides.
    np.testing.assert_allclose(a.sum(1), b.sum(1), rtol=1e-5)


def test_bad_inputs_are_rejected(segmenter: DiffusionSegmenter) -> None:
    frame = make_frame(64, 64)
    frame.rgb = frame.rgb.astype(np.float32)  # type: ignore[assignment]
    with pytest.raises(InputError):
        segmenter.segment(frame)
    frame = make_frame(64, 64)
    frame.rgb = frame.rgb[..., :2]
    with pytest.raises(InputError):
        segmenter.segment(frame)
    wrong = make_vocabulary(dim=7)
    emb = {
        SPACE_DIFFUSION: np.zeros((2, 32), np.float32),
        SPACE_CLIP: np.zeros((2, 48), np.float32),
    }
    with pytest.raises(InputError):
        segmenter.classify(emb, wrong)
    with pytest.raises(InputError):
        segmenter.classify({SPACE_CLIP: emb[SPACE_CLIP]}, make_vocabulary(48))


def test_head_checkpoint_round_trip(segmenter: DiffusionSegmenter, tmp_path) -> None:
    path = tmp_path / "head.safetensors"
    segmenter.save_head(path)
    profile = load_profile("tiny")
    assert profile.tiny is not None
    profile.tiny.seed = 7
    other = build_segmenter(profile)
    frame = make_frame(128, 128, seed=4)
    before = other.segment(frame)
    other.load_head(path)
    after = other.segment(frame)
    # SD and CLIP stay those of seed 7; only the head came from the file.
    assert not np.allclose(before.embeddings[SPACE_DIFFUSION], after.embeddings[SPACE_DIFFUSION])
    mine = segmenter.model.head_state_dict()
    for k, v in other.model.head_state_dict().items():
        torch.testing.assert_close(v, mine[k], rtol=0, atol=0)
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(DataFormatError):
        other.load_head(tmp_path / "bad.safetensors")
    with pytest.raises(DataFormatError):
        other.load_head(tmp_path / "missing.safetensors")

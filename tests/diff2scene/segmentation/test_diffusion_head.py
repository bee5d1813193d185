"""Mask2Former head parts: deformable sampling, pixel decoder, masked-attention decoder."""

from __future__ import annotations

import torch

from diff2scene.segmentation.diffusion.pixel_decoder import (
    MSDeformAttn,
    MSDeformAttnPixelDecoder,
    PixelDecoderConfig,
    ms_deform_attn_sample,
)
from diff2scene.segmentation.diffusion.transformer_decoder import (
    MultiScaleMaskedTransformerDecoder,
    TransformerDecoderConfig,
    mask_pool,
)

TINY_PD = PixelDecoderConfig(
    conv_dim=16,
    mask_dim=16,
    num_layers=2,
    num_heads=2,
    num_points=2,
    dim_feedforward=32,
    norm_groups=4,
)
TINY_TD = TransformerDecoderConfig(
    hidden_dim=16, num_queries=5, num_heads=2, dim_feedforward=32, num_layers=4, mask_dim=16
)


def test_deformable_sampling_at_pixel_centres_reads_the_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    b, heads, hd = 1, 2, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, hd, generator=g)
    # Query 0 looks at pixel (y=1, x=2) of level 0 only; query 1 at (y=0, x=1) of level 1 only.
    loc = torch.zeros(b, 2, heads, 2, 1, 2)
    loc[0, 0, :, 0, 0] = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3])
    loc[0, 1, :, 1, 0] = torch.tensor([(1 + 0.5) / 2, (0 + 0.5) / 2])
    weights = torch.zeros(b, 2, heads, 2, 1)
    weights[0, 0, :, 0] = 1.0
    weights[0, 1, :, 1] = 1.0
    out = ms_deform_attn_sample(value, shapes, loc, weights).view(b, 2, heads, hd)
    level0 = value[0, :12].view(3, 4, heads, hd)
    level1 = value[0, 12:].view(2, 2, heads, hd)
    torch.testing.assert_close(out[0, 0], level0[1, 2])
    torch.testing.assert_close(out[0, 1], level1[0, 1])
    # Halfway between two pixel centres: the bilinear mean of both.
    loc[0, 0, :, 0, 0, 0] = (2 + 1.0) / 4
    out = ms_deform_attn_sample(value, shapes, loc, weights).view(b, 2, heads, hd)
    torch.testing.assert_close(out[0, 0], (level0[1, 2] + level0[1, 3]) / 2)


def test_deformable_attention_with_zero_offsets_reads_the_reference_pixel() -> None:
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
        logits = torch.zeros(2, 2 * 2)
        logits[:, 0] = 50.0  # every head: level 0, point 0
        attn.attention_weights.bias.copy_(logits.view(-1))
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
    shapes = [(3, 4), (2, 2)]
    value = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(1))
    query = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(2))
    ref = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    out = attn(query, ref, value, shapes)
    torch.testing.assert_close(out[0, 0], value[0, 1 * 4 + 2], rtol=1e-4, atol=1e-5)


def test_pixel_decoder_shapes() -> None:
    torch.manual_seed(0)
    dec = MSDeformAttnPixelDecoder(TINY_PD, {4: 24, 8: 24, 16: 24, 32: 24})
    assert dec.num_fpn_levels == 1
    feats = {s: torch.randn(2, 24, 128 // s, 96 // s) for s in (4, 8, 16, 32)}
    mask_features, multi = dec(feats)
    assert mask_features.shape == (2, 16, 32, 24)
    assert [tuple(m.shape) for m in multi] == [(2, 16, 4, 3), (2, 16, 8, 6), (2, 16, 16, 12)]
    assert torch.isfinite(mask_features).all()
    names = set(dec.state_dict())
    # Mask2Former's parameter names, which the ODISE converter relies on.
    for key in (
        "input_proj.2.1.weight",
        "transformer.level_embed",
        "transformer.encoder.layers.1.self_attn.sampling_offsets.bias",
        "transformer.encoder.layers.0.linear2.weight",
        "mask_features.weight",
        "adapter_1.norm.weight",
        "layer_1.weight",
    ):
        assert key in names, key


def test_transformer_decoder_shapes_and_pooled_embeddings() -> None:
    torch.manual_seed(0)
    dec = MultiScaleMaskedTransformerDecoder(TINY_TD, 16)
    multi = [torch.randn(1, 16, 4, 3), torch.randn(1, 16, 8, 6), torch.randn(1, 16, 16, 12)]
    mask_features = torch.randn(1, 16, 32, 24)
    logits, emb = dec(multi, mask_features)
    assert logits.shape == (1, 5, 32, 24)
    assert emb.shape == (1, 5, 16)
    assert torch.isfinite(logits).all() and torch.isfinite(emb).all()


def test_mask_pool_is_the_mean_inside_the_hard_mask() -> None:
    feats = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    logits = torch.full((1, 2, 3, 4), -5.0)
    logits[0, 0, 0, :2] = 5.0  # two pixels
    pooled = mask_pool(feats, logits, 0.5)
    torch.testing.assert_close(pooled[0, 0], feats[0, :, 0, :2].mean(-1))
    torch.testing.assert_close(pooled[0, 1], torch.zeros(2))  # empty mask pools to zero

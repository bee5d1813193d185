"""ODISE checkpoint conversion on synthetic checkpoints carrying ODISE's key names.

The key names below are written out from ODISE's public code (detectron2 ``BottleneckBlock``,
``LdmImplicitCaptionerExtractor``, Mask2Former's ``MSDeformAttnPixelDecoder`` and
``MultiScaleMaskedTransformerDecoder``, ODISE's ``PooledMaskEmbed`` and ``CategoryEmbed``),
independently of our module names: a rename the converter gets wrong shows up as an unmapped
or missing key. Shapes are those of the tiny profile (parameterised widths); the real-size
shapes are checked against ODISE's known values separately.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from diff2scene.errors import DataFormatError
from diff2scene.segmentation import cli as seg_cli
from diff2scene.segmentation.convert_odise import (
    convert_odise,
    expected_head_shapes,
    rename_key,
)
from diff2scene.segmentation.profiles import ModelProfile, build_segmenter, load_profile


def _linear(prefix: str) -> list[str]:
    return [prefix + ".weight", prefix + ".bias"]


def _conv_gn(prefix: str) -> list[str]:
    return [prefix + ".weight", prefix + ".norm.weight", prefix + ".norm.bias"]


def odise_keys(profile: ModelProfile, feature_channels: list[int]) -> list[str]:
    """Every tensor name of an ODISE head checkpoint for ``profile``'s depths."""
    cfg = profile.segmenter
    fe = "backbone.feature_extractor."
    keys = [*_linear(fe + "clip_project.linear"), fe + "clip_project.positional_embedding"]
    keys += [fe + "alpha_cond", fe + "alpha_cond_time_embed"]
    keys += _linear(fe + "time_embed_project.linear")
    keys += [fe + "time_embed_project.positional_embedding"]
    for i, channels in enumerate(feature_channels):
        p = f"backbone.feature_projections.{i}.0."
        for conv in ("conv1", "conv2", "conv3"):
            keys += _conv_gn(p + conv)
        if channels != cfg.backbone.projection_dim:
            keys += _conv_gn(p + "shortcut")
    pd = "sem_seg_head.pixel_decoder."
    for i in range(3):
        keys += [f"{pd}input_proj.{i}.0.weight", f"{pd}input_proj.{i}.0.bias"]
        keys += [f"{pd}input_proj.{i}.1.weight", f"{pd}input_proj.{i}.1.bias"]
    keys.append(pd + "transformer.level_embed")
    for layer in range(cfg.pixel_decoder.num_layers):
        p = f"{pd}transformer.encoder.layers.{layer}."
        for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            keys += _linear(p + "self_attn." + name)
        for name in ("norm1", "linear1", "linear2", "norm2"):
            keys += _linear(p + name)
    keys += _linear(pd + "mask_features")
    keys += _conv_gn(pd + "adapter_1") + _conv_gn(pd + "layer_1")
    pr = "sem_seg_head.predictor."
    for layer in range(cfg.transformer_decoder.num_layers):
        for block, attn in (
            ("transformer_self_attention_layers", "self_attn"),
            ("transformer_cross_attention_layers", "multihead_attn"),
        ):
            p = f"{pr}{block}.{layer}."
            keys += [p + attn + ".in_proj_weight", p + attn + ".in_proj_bias"]
            keys += _linear(p + attn + ".out_proj") + _linear(p + "norm")
        p = f"{pr}transformer_ffn_layers.{layer}."
        keys += _linear(p + "linear1") + _linear(p + "linear2") + _linear(p + "norm")
    keys += _linear(pr + "decoder_norm")
    keys += [pr + "query_feat.weight", pr + "query_embed.weight", pr + "level_embed.weight"]
    for i in range(3):
        keys += _linear(f"{pr}mask_embed.layers.{i}")
        keys += _linear(f"{pr}post_mask_embed.mask_embed.1.layers.{i}")
    keys += _linear(pr + "post_mask_embed.pool_proj.0") + _linear(
        pr + "post_mask_embed.pool_proj.1"
    )
    keys += [*_linear(pr + "post_mask_embed.mask_embed.0"), pr + "post_mask_embed.logit_scale"]
    keys += [*_linear("category_head.text_proj"), "category_head.null_embed"]
    return keys


@pytest.fixture(scope="module")
def tiny_profile() -> ModelProfile:
    return load_profile("tiny")


def synthetic_checkpoint(
    profile: ModelProfile, path: Path, seed: int = 0
) -> dict[str, torch.Tensor]:
    shapes = expected_head_shapes(profile)
    channels = [
        int(shapes[f"backbone.feature_projections.{i}.0.conv1.weight"][1]) for i in range(8)
    ]
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key in odise_keys(profile, channels):
        ours = rename_key(key)
        assert ours is not None and ours in shapes, f"ODISE key {key} has no counterpart"
        state[key] = torch.randn(shapes[ours], generator=g)
    # What a detectron2 checkpoint also holds: a loss buffer, dropped by the converter.
    state["criterion.empty_weight"] = torch.ones(134)
    torch.save({"model": state, "iteration": 368750}, path)
    return state


def test_converted_checkpoint_loads_into_the_model(
    tiny_profile: ModelProfile, tmp_path: Path
) -> None:
    ckpt = tmp_path / "odise_label_coco_50e.pth"
    odise = synthetic_checkpoint(tiny_profile, ckpt)
    out = tmp_path / "head.safetensors"
    converted = convert_odise(ckpt, out, tiny_profile)
    assert len(converted) == len(odise) - 1  # all but criterion.empty_weight
    seg = build_segmenter(tiny_profile)
    seg.load_head(out)
    state = seg.model.head_state_dict()
    torch.testing.assert_close(
        state["backbone.captioner.alpha_cond"], odise["backbone.feature_extractor.alpha_cond"]
    )
    torch.testing.assert_close(
        state["predictor.transformer_cross_attention_layers.2.multihead_attn.in_proj_weight"],
        odise[
            "sem_seg_head.predictor.transformer_cross_attention_layers.2.multihead_attn.in_proj_weight"
        ],
    )
    torch.testing.assert_close(
        state["pixel_decoder.adapter_1.norm.bias"],
        odise["sem_seg_head.pixel_decoder.adapter_1.norm.bias"],
    )
    torch.testing.assert_close(state["category_head.null_embed"], odise["category_head.null_embed"])


def _write(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "modified.pth"
    torch.save({"model": state}, path)
    return path


def test_unmapped_misshaped_and_missing_tensors_fail(
    tiny_profile: ModelProfile, tmp_path: Path
) -> None:
    odise = synthetic_checkpoint(tiny_profile, tmp_path / "ok.pth")
    out = tmp_path / "head.safetensors"
    extra = dict(odise, **{"sem_seg_head.predictor.class_embed.weight": torch.zeros(3, 3)})
    with pytest.raises(DataFormatError, match="unmapped key"):
        convert_odise(_write(tmp_path, extra), out, tiny_profile)
    stranger = dict(odise, **{"some_other_head.weight": torch.zeros(1)})
    with pytest.raises(DataFormatError, match=r"some_other_head\.weight"):
        convert_odise(_write(tmp_path, stranger), out, tiny_profile)
    bad = dict(odise)
    bad["category_head.text_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(DataFormatError, match=r"mis-shaped.*category_head.text_proj.weight"):
        convert_odise(_write(tmp_path, bad), out, tiny_profile)
    short = dict(odise)
    del short["sem_seg_head.predictor.query_feat.weight"]
    with pytest.raises(DataFormatError, match=r"missing.*predictor.query_feat.weight"):
        convert_odise(_write(tmp_path, short), out, tiny_profile)
    assert not out.exists()


class NotATensor:
    """A pickled object that weights-only loading must refuse."""


def test_checkpoints_needing_pickle_or_garbage_are_refused(
    tiny_profile: ModelProfile, tmp_path: Path
) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": NotATensor()}}, path)
    with pytest.raises(DataFormatError, match="weights-only"):
        convert_odise(path, tmp_path / "o.safetensors", tiny_profile)
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage")
    with pytest.raises(DataFormatError):
        convert_odise(tmp_path / "garbage.pth", tmp_path / "o.safetensors", tiny_profile)
    torch.save({"optimizer": {}}, tmp_path / "nomodel.pth")
    with pytest.raises(DataFormatError):
        convert_odise(tmp_path / "nomodel.pth", tmp_path / "o.safetensors", tiny_profile)
    with pytest.raises(DataFormatError, match="not found"):
        convert_odise(tmp_path / "absent.pth", tmp_path / "o.safetensors", tiny_profile)


def test_real_size_shapes_match_odise() -> None:
    shapes = expected_head_shapes(load_profile("odise_sd15"))
    # ODISE's released head holds only its ~28M trainable parameters (SD and CLIP come apart).
    total = sum(s.numel() for s in shapes.values())
    assert 27.5e6 < total < 28.5e6
    facts = {
        "backbone.captioner.clip_project.linear.weight": (768, 768),
        "backbone.captioner.clip_project.positional_embedding": (1, 77, 768),
        "backbone.captioner.alpha_cond": (1, 77, 768),
        "backbone.captioner.time_embed_project.linear.weight": (1280, 768),
        "backbone.captioner.alpha_cond_time_embed": (1280,),
        # Features: VAE enc (512, 512), UNet (2560, 1920, 960, 640), VAE dec (512, 512).
        "backbone.feature_projections.2.0.conv1.weight": (128, 2560, 1, 1),
        "backbone.feature_projections.3.0.shortcut.weight": (512, 1920, 1, 1),
        "backbone.feature_projections.5.0.conv1.weight": (128, 640, 1, 1),
        "backbone.feature_projections.7.0.conv3.weight": (512, 128, 1, 1),
        "pixel_decoder.input_proj.0.0.weight": (256, 512, 1, 1),
        "pixel_decoder.transformer.level_embed": (3, 256),
        "pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.weight": (192, 256),
        "pixel_decoder.transformer.encoder.layers.5.self_attn.attention_weights.weight": (96, 256),
        "pixel_decoder.transformer.encoder.layers.5.linear1.weight": (1024, 256),
        "predictor.transformer_ffn_layers.8.linear1.weight": (2048, 256),
        "predictor.query_feat.weight": (100, 256),
        "predictor.post_mask_embed.logit_scale": (),
        "category_head.text_proj.weight": (256, 768),
        "category_head.null_embed": (1, 768),
    }
    for key, shape in facts.items():
        assert tuple(shapes[key]) == shape, key
    # Features whose width already is 512 have an identity shortcut, as in detectron2.
    assert "backbone.feature_projections.0.0.shortcut.weight" not in shapes
    assert "predictor.transformer_self_attention_layers.9.norm.weight" not in shapes


def test_cli_converts(
    tiny_profile: ModelProfile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "odise.pth"
    synthetic_checkpoint(tiny_profile, ckpt, seed=2)
    parser = argparse.ArgumentParser()
    seg_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "head.safetensors"
    args = parser.parse_args(["convert-odise", str(ckpt), str(out), "--profile", "tiny"])
    assert args.func(args) == 0
    assert out.is_file() and "tensors" in capsys.readouterr().out

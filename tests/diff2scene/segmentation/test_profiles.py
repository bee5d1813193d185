"""Model profiles: loading, strictness, and fast, precise failure when weights are missing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diff2scene.errors import DRY_RUN_HINT, ConfigError, MissingWeightsError
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.profiles import (
    ModelProfile,
    WeightsConfig,
    build_segmenter,
    clip_text_hidden_states,
    load_profile,
    profile_from_dict,
    sd_empty_prompt_embedding,
)


def test_bundled_profiles_load() -> None:
    tiny = load_profile("tiny")
    assert tiny.tiny is not None and tiny.weights is None
    real = load_profile("odise_sd15")
    assert real.weights is not None and real.tiny is None
    # The real profile keeps every ODISE constant at its default.
    seg = real.segmenter
    assert seg.transformer_decoder.num_queries == 100
    assert seg.transformer_decoder.num_layers == 9
    assert seg.pixel_decoder.num_layers == 6 and seg.pixel_decoder.conv_dim == 256
    assert seg.backbone.projection_dim == 512
    assert (seg.alpha_seen, seg.beta_novel) == (0.35, 0.65)
    assert real.weights.clip.model_name == "ViT-L-14-336"


def test_unknown_profile_and_bad_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown model profile .*known: odise_sd15, tiny"):
        load_profile("no_such_profile")
    with pytest.raises(ConfigError, match="unknown key"):
        profile_from_dict({"name": "x", "tiny": {"unett": {}}})
    with pytest.raises(ConfigError, match="exactly one"):
        profile_from_dict({"name": "x"})
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsegmenter: {alpha_seen: 1.5}\ntiny: {}\n")
    with pytest.raises(ConfigError, match="alpha_seen"):
        load_profile(path)


def _real(tmp_path: Path, **weights: object) -> ModelProfile:
    base = {
        "sd_model": str(tmp_path / "sd"),
        "cache_dir": str(tmp_path / "cache"),
        "offline": True,
        "clip": {"pretrained": None},
        "head_checkpoint": str(tmp_path / "head.safetensors"),
    }
    base.update(weights)
    return profile_from_dict({"name": "real", "weights": base})


def test_missing_head_fails_fast_naming_the_file_and_the_converter(tmp_path: Path) -> None:
    head = tmp_path / "head.safetensors"
    t0 = time.perf_counter()
    with pytest.raises(MissingWeightsError) as info:
        build_segmenter(_real(tmp_path))
    assert time.perf_counter() - t0 < 5.0
    msg = str(info.value)
    assert info.value.path == head
    assert f"ODISE head checkpoint not found: {head}" in msg
    assert f"`diff2scene convert-odise odise_label_coco_50e-b67d2efc.pth {head}`" in msg
    assert msg.endswith(DRY_RUN_HINT) and "segmenter.profile: tiny" in DRY_RUN_HINT


def test_relative_head_is_looked_for_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as info:
        build_segmenter(_real(tmp_path, head_checkpoint="models/head.safetensors"))
    assert info.value.path == tmp_path / "models" / "head.safetensors"
    assert str(tmp_path / "models" / "head.safetensors") in str(info.value)
    with pytest.raises(ConfigError, match=r"names no ODISE head.*convert-odise"):
        build_segmenter(_real(tmp_path, head_checkpoint=None))


def test_incomplete_sd_directory_lists_missing_files(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(1)}, str(tmp_path / "head.safetensors"))
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "sd" / "unet" / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError) as info:
        build_segmenter(_real(tmp_path))
    assert info.value.path == tmp_path / "sd" / "unet/diffusion_pytorch_model.safetensors"
    msg = str(info.value)
    assert "vae/config.json" in msg and "text_encoder/model.safetensors" in msg
    assert "unet/diffusion_pytorch_model.safetensors" in msg
    assert "unet/config.json" not in msg.split("missing:")[1]


def test_offline_hub_id_fails_fast_with_instructions(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(1)}, str(tmp_path / "head.safetensors"))
    profile = _real(tmp_path, sd_model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    t0 = time.perf_counter()
    with pytest.raises(MissingWeightsError) as info:
        build_segmenter(profile)
    folder = "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    assert info.value.path == tmp_path / "cache" / folder
    msg = str(info.value)
    assert "offline" in msg and "unet/diffusion_pytorch_model.safetensors" in msg
    assert "models--stable-diffusion-v1-5--stable-diffusion-v1-5" in msg
    assert str(tmp_path / "cache") in msg
    assert time.perf_counter() - t0 < 5.0


def test_weights_config_defaults_point_at_sd15() -> None:
    assert WeightsConfig().sd_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _hf_text_state(model: object) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIPTextModel state dict carrying an open_clip text tower's weights."""
    m: object = model
    sd: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": m.token_embedding.weight,  # type: ignore[attr-defined]
        "text_model.embeddings.position_embedding.weight": m.positional_embedding,  # type: ignore[attr-defined]
        "text_model.final_layer_norm.weight": m.ln_final.weight,  # type: ignore[attr-defined]
        "text_model.final_layer_norm.bias": m.ln_final.bias,  # type: ignore[attr-defined]
    }
    for i, block in enumerate(m.transformer.resblocks):  # type: ignore[attr-defined]
        p = f"text_model.encoder.layers.{i}."
        q, k, v = block.attn.in_proj_weight.chunk(3)
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        sd.update(
            {
                p + "self_attn.q_proj.weight": q,
                p + "self_attn.q_proj.bias": qb,
                p + "self_attn.k_proj.weight": k,
                p + "self_attn.k_proj.bias": kb,
                p + "self_attn.v_proj.weight": v,
                p + "self_attn.v_proj.bias": vb,
                p + "self_attn.out_proj.weight": block.attn.out_proj.weight,
                p + "self_attn.out_proj.bias": block.attn.out_proj.bias,
                p + "layer_norm1.weight": block.ln_1.weight,
                p + "layer_norm1.bias": block.ln_1.bias,
                p + "layer_norm2.weight": block.ln_2.weight,
                p + "layer_norm2.bias": block.ln_2.bias,
                p + "mlp.fc1.weight": block.mlp.c_fc.weight,
                p + "mlp.fc1.bias": block.mlp.c_fc.bias,
                p + "mlp.fc2.weight": block.mlp.c_proj.weight,
                p + "mlp.fc2.bias": block.mlp.c_proj.bias,
            }
        )
    return {k: t.detach().clone() for k, t in sd.items()}


def test_empty_prompt_encoding_matches_open_clip_text_tower(tmp_path: Path) -> None:
    bundle = build_clip(ClipConfig.tiny_profile(seed=3))
    model = bundle.model
    ids = bundle.tokenizer([""])  # BOS, EOS, zero padding
    with torch.no_grad():
        x = model.token_embedding(ids) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    state = _hf_text_state(model)
    heads = model.transformer.resblocks[0].attn.num_heads
    got = clip_text_hidden_states(state, ids[0].tolist(), num_heads=heads)
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-5)
    # SD pads with EOS instead of zeros; causal attention keeps BOS and EOS positions identical.
    (tmp_path / "text_encoder").mkdir()
    save_file(state, str(tmp_path / "text_encoder" / "model.safetensors"))
    sd = sd_empty_prompt_embedding(tmp_path, num_heads=heads)
    assert sd.shape == (1, 77, x.shape[-1])
    torch.testing.assert_close(sd[:, :2], x[:, :2], rtol=1e-4, atol=1e-5)

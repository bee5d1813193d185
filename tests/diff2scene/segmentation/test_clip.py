"""CLIP construction: the tiny profile is a working open_clip CLIP; missing weights fail fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diff2scene.config import from_dict
from diff2scene.errors import ConfigError, WeightsUnavailableError
from diff2scene.segmentation.clip import ClipConfig, build_clip, resolve_weights


def test_tiny_clip_encodes_text_and_images() -> None:
    bundle = build_clip(ClipConfig.tiny_profile())
    assert not bundle.model.training
    assert all(not p.requires_grad for p in bundle.model.parameters())
    tokens = bundle.tokenizer(["a photo of a chair.", "a table"])
    assert tokens.shape == (2, bundle.context_length) and tokens.dtype == torch.int64
    text = bundle.model.encode_text(tokens)
    assert text.shape == (2, bundle.embed_dim)
    image = torch.rand(1, 3, bundle.image_size, bundle.image_size)
    assert bundle.model.encode_image(image).shape == (1, bundle.embed_dim)
    assert bundle.image_size % bundle.patch_size == 0
    assert len(bundle.image_mean) == 3 and bundle.weights_path is None


def test_tiny_clip_is_seeded() -> None:
    a = build_clip(ClipConfig.tiny_profile(seed=3)).model.state_dict()
    b = build_clip(ClipConfig.tiny_profile(seed=3)).model.state_dict()
    c = build_clip(ClipConfig.tiny_profile(seed=4)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["text_projection"], c["text_projection"])


def test_offline_real_loader_fails_fast_naming_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ClipConfig(model_name="ViT-L-14-336", pretrained="openai", cache_dir=tmp_path)
    # Weights are resolved before the network is built, so this returns without any download
    # attempt or 430M-parameter initialisation.
    with pytest.raises(WeightsUnavailableError) as info:
        build_clip(cfg)
    message = str(info.value)
    assert "timm/vit_large_patch14_clip_336.openai" in message
    assert "open_clip_model.safetensors" in message
    assert "open_clip_pytorch_model.bin" in message
    assert str(tmp_path) in message


def test_offline_flag_without_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = ClipConfig(pretrained="someone/some-clip", cache_dir=tmp_path, offline=True)
    with pytest.raises(WeightsUnavailableError, match="someone/some-clip"):
        resolve_weights(cfg)


def test_local_weights_resolution(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsUnavailableError, match=r"open_clip_model\.safetensors"):
        resolve_weights(ClipConfig(pretrained=str(empty)))
    full = tmp_path / "full"
    full.mkdir()
    save_file({"x": torch.zeros(1)}, str(full / "open_clip_model.safetensors"))
    (full / "notes.txt").write_text("not a checkpoint")
    assert resolve_weights(ClipConfig(pretrained=str(full))) == full / "open_clip_model.safetensors"
    single = tmp_path / "clip.safetensors"
    save_file({"x": torch.zeros(1)}, str(single))
    assert resolve_weights(ClipConfig(pretrained=str(single))) == single
    assert resolve_weights(ClipConfig(pretrained=None)) is None


def test_bad_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="architecture"):
        build_clip(ClipConfig(model_name="ViT-Q-99", pretrained=None))
    with pytest.raises(ConfigError, match="openai"):
        resolve_weights(ClipConfig(pretrained="no-such-tag"))
    with pytest.raises(ConfigError, match="tiny_patch_size"):
        from_dict(ClipConfig, {"tiny": True, "tiny_image_size": 60, "tiny_patch_size": 16})


def test_real_architecture_builds_without_weights() -> None:
    bundle = build_clip(ClipConfig(model_name="ViT-L-14-336", pretrained=None))
    assert bundle.weights_path is None
    assert (bundle.embed_dim, bundle.image_size, bundle.patch_size) == (768, 336, 14)
    assert bundle.context_length == 77
    assert bundle.model.visual.conv1.weight.shape == (1024, 3, 14, 14)
    assert not bundle.model.training

"""The local-directory loading path, end to end, on tiny models of the real classes.

Random weights are written in the layouts users place offline (diffusers ``unet/``, ``vae/``,
``text_encoder/``; an ``open_clip`` checkpoint of an architecture registered from a JSON
config; our head), a profile YAML points at them, and the factory the node uses loads them
with the hub switched off. The loaded model must reproduce the one that wrote the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml

from diff2scene.config import load_yaml
from diff2scene.segmentation.clip import ClipConfig
from diff2scene.segmentation.diffusion import DiffusionSegmenter
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
from diff2scene.segmentation.local_weights import (
    LocalWeights,
    TextEncoderShape,
    write_random_weights,
    write_sd_text_encoder,
)
from diff2scene.segmentation.profile_lookup import find_profile
from diff2scene.segmentation.profiles import (
    clip_text_hidden_states,
    load_profile,
    profile_from_dict,
    sd_empty_prompt_embedding,
)
from diff2scene.types import SPACE_CLIP, SPACE_DIFFUSION, CameraIntrinsics, Frame

#: An open_clip architecture that is not built in: it exists only through its JSON config.
TINY_CLIP_NAME = "d2s-test-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 48,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _frame(size_px: int = 128) -> Frame:
    rng = np.random.default_rng(3)
    return Frame(
        stamp_ns=0,
        rgb=rng.integers(0, 256, (size_px, size_px, 3), dtype=np.uint8),
        depth_m=np.ones((size_px, size_px), np.float32),
        intrinsics=CameraIntrinsics(size_px, size_px, 100.0, 100.0, 64.0, 64.0),
        T_world_camera=np.eye(4),
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub: offline flag set and an empty cache, so only the local files can be used."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))


def test_local_files_load_through_the_factory_and_reproduce_the_writer(
    tmp_path: Path, offline: None
) -> None:
    config_path = tmp_path / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config_path)
    tiny = load_profile("tiny")
    assert tiny.tiny is not None
    clip = ClipConfig(model_name=TINY_CLIP_NAME)
    files, written = write_random_weights(
        tmp_path / "weights",
        segmenter=tiny.segmenter,
        unet_config=tiny.tiny.unet,
        vae_config=tiny.tiny.vae,
        clip=clip,
        text_encoder=TextEncoderShape(num_layers=2, num_heads=2),
        seed=5,
    )
    # The files have the layouts users download.
    for name in ("unet", "vae"):
        assert (files.sd_dir / name / "config.json").is_file()
        assert (files.sd_dir / name / "diffusion_pytorch_model.safetensors").is_file()
    assert (files.sd_dir / "text_encoder" / "model.safetensors").is_file()
    assert files.clip_checkpoint.name == "open_clip_model.safetensors"

    # A copy of the tiny profile's segmenter section, pointed at the files.
    profile_yaml = tmp_path / "local.yaml"
    base = load_yaml(find_profile("tiny"))
    profile_yaml.write_text(
        yaml.safe_dump(
            {
                "name": "local",
                "segmenter": base["segmenter"],
                "weights": files.weights_section(clip),
            }
        )
    )
    segmenter, encoder = build_segmenter(
        SegmenterConfig(kind="diffusion", profile=str(profile_yaml))
    )
    assert isinstance(segmenter, DiffusionSegmenter)
    frame = _frame()
    loaded = segmenter.segment(frame)
    reference = DiffusionSegmenter(written).segment(frame)
    np.testing.assert_allclose(loaded.masks, reference.masks, atol=1e-5)
    for space in (SPACE_DIFFUSION, SPACE_CLIP):
        np.testing.assert_allclose(loaded.embeddings[space], reference.embeddings[space], atol=1e-5)
    # The text tower came from the same checkpoint file as the image tower.
    tokens = open_clip.get_tokenizer(TINY_CLIP_NAME)(["a chair"])
    with torch.no_grad():
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=str(files.clip_checkpoint))
        expected = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    np.testing.assert_allclose(encoder.encode(["a chair"]), expected.numpy(), atol=1e-5)


def test_text_encoder_heads_come_from_its_config(tmp_path: Path) -> None:
    # 32 wide with 2 heads: SD v1.x's default of 12 heads would not even divide the width.
    shape = TextEncoderShape(num_layers=1, num_heads=2)
    path = write_sd_text_encoder(tmp_path / "sd" / "text_encoder", hidden_size=32, shape=shape)
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = clip_text_hidden_states(state, [49406] + [49407] * 76, num_heads=2)
    got = sd_empty_prompt_embedding(tmp_path / "sd")
    assert got.shape == (1, 77, 32)
    torch.testing.assert_close(got, expected)
    # A head count other than the config's gives other states: the config is really read.
    other = clip_text_hidden_states(state, [49406] + [49407] * 76, num_heads=4)
    assert not torch.allclose(got, other)


def test_weights_section_is_a_valid_profile(tmp_path: Path) -> None:
    files = LocalWeights(tmp_path / "sd", tmp_path / "clip.safetensors", tmp_path / "head.st")
    profile = profile_from_dict(
        {"name": "p", "weights": files.weights_section(ClipConfig(model_name="ViT-B-32"))}
    )
    assert profile.weights is not None
    assert profile.weights.offline is True
    assert profile.weights.clip.pretrained == str(files.clip_checkpoint)
    assert profile.weights.clip.model_name == "ViT-B-32"
    assert Path(profile.weights.sd_model) == files.sd_dir

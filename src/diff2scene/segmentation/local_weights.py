"""Random-weight model files in the layouts users place on an offline machine.

A robot without network gets its 2D model as files: a Stable Diffusion v1.x directory in the
diffusers layout (``unet/``, ``vae/``, ``text_encoder/``), an ``open_clip`` checkpoint file and
our head checkpoint. Real weights cannot be downloaded here, so this module writes files of the
same layouts and architectures with seeded random weights; a profile pointing at them then
drives the real loading path (:func:`diff2scene.segmentation.profiles.build_segmenter`, the
factory the node uses) without a hub. The benchmark does it at full size, the tests with tiny
configurations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from diff2scene.config import to_dict
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.diffusion.backbone import DiffusionBackbone
from diff2scene.segmentation.diffusion.maskclip import ClipImageFeatures
from diff2scene.segmentation.diffusion.segmenter import (
    DiffusionSegmenterConfig,
    DiffusionSegmenterModel,
)
from diff2scene.segmentation.profiles import sd_empty_prompt_embedding

#: File name ``open_clip`` checkpoints have on the Hugging Face Hub.
CLIP_CHECKPOINT_NAME = "open_clip_model.safetensors"
#: CLIP BPE vocabulary size and SD's text context length.
CLIP_VOCAB_SIZE = 49408
SD_TEXT_TOKENS = 77


@dataclass(frozen=True)
class TextEncoderShape:
    """Stable Diffusion's text encoder (a Hugging Face ``CLIPTextModel``); defaults: SD v1.x."""

    #: Transformer layers (SD v1.x: 12).
    num_layers: int = 12
    #: Attention heads (SD v1.x: 12); must divide the UNet's cross-attention width.
    num_heads: int = 12
    #: MLP width as a multiple of the hidden width (SD v1.x: 3072 / 768 = 4).
    mlp_ratio: int = 4


@dataclass(frozen=True)
class LocalWeights:
    """Where :func:`write_random_weights` put each file."""

    #: Stable Diffusion directory (diffusers layout).
    sd_dir: Path
    #: ``open_clip`` checkpoint (safetensors) of the whole CLIP model, both towers.
    clip_checkpoint: Path
    #: Our head checkpoint (``DiffusionSegmenter.save_head`` format).
    head_checkpoint: Path

    def weights_section(self, clip: ClipConfig) -> dict[str, Any]:
        """The ``weights`` section of a profile that loads these files and nothing else."""
        clip_section = to_dict(clip)
        clip_section["pretrained"] = str(self.clip_checkpoint)
        return {
            "sd_model": str(self.sd_dir),
            "offline": True,
            "clip": clip_section,
            "head_checkpoint": str(self.head_checkpoint),
        }


def write_sd_text_encoder(
    directory: Path, *, hidden_size: int, shape: TextEncoderShape, seed: int = 0
) -> Path:
    """Random ``CLIPTextModel`` weights and config in the Hugging Face layout; returns the file.

    Only the tensors SD's text encoder holds (``text_model.*``) are written, under their
    Hugging Face names, so no ``transformers`` install is needed to write or read them.
    """
    if hidden_size % shape.num_heads:
        raise ValueError(f"hidden_size {hidden_size} not divisible by {shape.num_heads} heads")
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    d, inner = hidden_size, hidden_size * shape.mlp_ratio

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen) * 0.02

    p = "text_model."
    state: dict[str, torch.Tensor] = {
        p + "embeddings.token_embedding.weight": rand(CLIP_VOCAB_SIZE, d),
        p + "embeddings.position_embedding.weight": rand(SD_TEXT_TOKENS, d),
        p + "final_layer_norm.weight": torch.ones(d),
        p + "final_layer_norm.bias": torch.zeros(d),
    }
    for layer in range(shape.num_layers):
        q = f"{p}encoder.layers.{layer}."
        for norm in ("layer_norm1", "layer_norm2"):
            state[f"{q}{norm}.weight"] = torch.ones(d)
            state[f"{q}{norm}.bias"] = torch.zeros(d)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{q}self_attn.{proj}.weight"] = rand(d, d)
            state[f"{q}self_attn.{proj}.bias"] = torch.zeros(d)
        state[q + "mlp.fc1.weight"] = rand(inner, d)
        state[q + "mlp.fc1.bias"] = torch.zeros(inner)
        state[q + "mlp.fc2.weight"] = rand(d, inner)
        state[q + "mlp.fc2.bias"] = torch.zeros(d)
    path = directory / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    config = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_size": d,
        "intermediate_size": inner,
        "num_attention_heads": shape.num_heads,
        "num_hidden_layers": shape.num_layers,
        "max_position_embeddings": SD_TEXT_TOKENS,
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": d,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def write_random_weights(
    out_dir: Path,
    *,
    segmenter: DiffusionSegmenterConfig,
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    clip: ClipConfig,
    text_encoder: TextEncoderShape | None = None,
    seed: int = 0,
) -> tuple[LocalWeights, DiffusionSegmenterModel]:
    """Write SD (UNet, VAE, text encoder), CLIP and a head with seeded random weights.

    ``clip`` names an ``open_clip`` architecture (built in, or registered with
    ``open_clip.add_model_config``); its ``pretrained`` field is ignored. Returns the file
    locations and the in-memory model they describe (what loading them must reproduce).
    The head's empty-caption embedding is computed from the written text encoder, as the
    loader computes it.
    """
    sd_dir = out_dir / "sd"
    text_shape = text_encoder or TextEncoderShape()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        bundle = build_clip(
            ClipConfig(
                model_name=clip.model_name,
                pretrained=None,
                quick_gelu=clip.quick_gelu,
                device="cpu",
            )
        )
        # diffusers' type information does not cover save_pretrained's keyword arguments.
        unet_any: Any = unet
        vae_any: Any = vae
        unet_any.save_pretrained(sd_dir / "unet", safe_serialization=True)
        vae_any.save_pretrained(sd_dir / "vae", safe_serialization=True)
        write_sd_text_encoder(
            sd_dir / "text_encoder",
            hidden_size=int(unet_any.config["cross_attention_dim"]),
            shape=text_shape,
            seed=seed,
        )
        clip_path = out_dir / "clip" / CLIP_CHECKPOINT_NAME
        clip_path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in bundle.model.state_dict().items()}
        save_file(state, str(clip_path), metadata={"format": "pt"})
        backbone = DiffusionBackbone(
            segmenter.backbone,
            unet=unet,
            vae=vae,
            clip_dim=bundle.embed_dim,
            uncond_embedding=sd_empty_prompt_embedding(sd_dir),
        )
        model = DiffusionSegmenterModel(
            segmenter, backbone=backbone, clip_features=ClipImageFeatures(bundle)
        )
    head_path = out_dir / "head.safetensors"
    head = {k: v.detach().cpu().contiguous() for k, v in model.head_state_dict().items()}
    save_file(head, str(head_path), metadata={"format": "diff2scene-odise-head", "version": "1"})
    return LocalWeights(sd_dir, clip_path, head_path), model.eval()

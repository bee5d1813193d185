"""Convert ODISE's released head checkpoint to our safetensors head.

ODISE (``odise_label_coco_50e``) is a detectron2 checkpoint: a torch pickle whose ``model`` entry
holds only the trainable ~28M parameters (its SD and CLIP wrappers save empty state dicts).
Our modules carry ODISE's names below these prefixes, so the mapping is a prefix rename:

======================================  ================================
ODISE key prefix                        ours
======================================  ================================
``backbone.feature_extractor.``         ``backbone.captioner.``
``backbone.feature_projections.``       ``backbone.feature_projections.``
``sem_seg_head.pixel_decoder.``         ``pixel_decoder.``
``sem_seg_head.predictor.``             ``predictor.``
``category_head.``                      ``category_head.``
======================================  ================================

Training-only tensors (``criterion.*``) and weights of the frozen networks, should a checkpoint
carry them, are dropped by name; any other key, a missing key or a shape that differs from our
model's is an error. The pickle is read with ``torch.load(weights_only=True)``: no code in it
runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from diff2scene.errors import DataFormatError
from diff2scene.segmentation.diffusion.backbone import DiffusionBackbone
from diff2scene.segmentation.diffusion.segmenter import build_head_modules
from diff2scene.segmentation.profiles import (
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    ModelProfile,
)

log = logging.getLogger(__name__)

#: ODISE key prefix → our key prefix (longest match wins).
PREFIX_MAP: tuple[tuple[str, str], ...] = (
    ("backbone.feature_extractor.", "backbone.captioner."),
    ("backbone.feature_projections.", "backbone.feature_projections."),
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("sem_seg_head.predictor.", "predictor."),
    ("category_head.", "category_head."),
)
#: Keys dropped on purpose: losses' class weights, and frozen SD/CLIP weights that come from
#: their own releases (ODISE does not normally save them).
DROPPED_PREFIXES: tuple[str, ...] = (
    "criterion.",
    "backbone.feature_extractor.ldm_extractor.",
    "backbone.feature_extractor.clip.",
    "category_head.clip.",
    "clip_head.",
)
#: Non-trainable buffers of ODISE modules (cached label embeddings), dropped when present.
DROPPED_KEYS: frozenset[str] = frozenset({"category_head.text_embed"})


def load_odise_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of a detectron2/ODISE checkpoint; no pickled code runs."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"ODISE checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataFormatError(
            f"{path} cannot be read as a weights-only torch checkpoint ({type(exc).__name__}: "
            f"{exc}). Only plain tensors and containers are accepted; a checkpoint that needs "
            "arbitrary pickled objects is refused."
        ) from exc
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise DataFormatError(f"{path}: expected a mapping with a non-empty 'model' state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise DataFormatError(f"{path}: entry {key!r} is {type(value).__name__}, not a tensor")
        out[str(key)] = value
    return out


def rename_key(key: str) -> str | None:
    """Our name of an ODISE key, None if dropped on purpose; raises for an unknown key."""
    if key in DROPPED_KEYS or key.startswith(DROPPED_PREFIXES):
        return None
    for src, dst in PREFIX_MAP:
        if key.startswith(src):
            return dst + key[len(src) :]
    raise KeyError(key)


def expected_head_shapes(profile: ModelProfile) -> dict[str, torch.Size]:
    """Names and shapes of our head tensors for ``profile``, from a weightless (meta) build.

    SD's block widths come from the profile's tiny configs or, for real profiles, the SD v1.x
    configs ODISE was trained with; CLIP's width from ``open_clip``'s model config.
    """
    unet_cfg: dict[str, Any]
    vae_cfg: dict[str, Any]
    if profile.tiny is not None:
        unet_cfg, vae_cfg = profile.tiny.unet, profile.tiny.vae
        clip_dim = profile.tiny.clip.tiny_embed_dim
        text_tokens = profile.tiny.text_tokens
    else:
        assert profile.weights is not None
        unet_cfg, vae_cfg = SD15_UNET_CONFIG, SD15_VAE_CONFIG
        model_cfg = open_clip.get_model_config(profile.weights.clip.model_name)
        if not model_cfg:
            raise DataFormatError(f"unknown CLIP model {profile.weights.clip.model_name!r}")
        clip_dim = int(model_cfg["embed_dim"])
        text_tokens = 77
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        uncond = torch.empty(1, text_tokens, int(unet_cfg["cross_attention_dim"]))
        backbone = DiffusionBackbone(
            profile.segmenter.backbone,
            unet=unet,
            vae=vae,
            clip_dim=clip_dim,
            uncond_embedding=uncond,
        )
        pixel_decoder, predictor, category_head = build_head_modules(
            profile.segmenter, backbone, clip_dim
        )
    shapes = {f"backbone.{k}": v.shape for k, v in backbone.head_state_dict().items()}
    for name, module in (
        ("pixel_decoder", pixel_decoder),
        ("predictor", predictor),
        ("category_head", category_head),
    ):
        shapes.update({f"{name}.{k}": v.shape for k, v in module.state_dict().items()})
    # Computed from SD's own text encoder at build time, never part of ODISE's checkpoint.
    shapes.pop("backbone.uncond_embedding")
    return shapes


def convert_state_dict(
    odise: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """Rename ODISE tensors to ours, checking that the result is exactly ``expected``."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    wrong: dict[str, str] = {}  # our key -> description
    dropped: list[str] = []
    for key, value in odise.items():
        try:
            ours = rename_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if ours is None:
            dropped.append(key)
            continue
        if ours not in expected:
            unknown.append(key)
        elif value.shape != expected[ours]:
            wrong[ours] = f"{key}: {tuple(value.shape)}, expected {tuple(expected[ours])}"
        else:
            out[ours] = value.detach().to(torch.float32).contiguous()
    missing = sorted(set(expected) - set(out) - set(wrong))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unmapped key(s): {sorted(unknown)[:20]}")
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped tensor(s): {sorted(wrong.values())[:20]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:20]}")
    if problems:
        raise DataFormatError("ODISE checkpoint does not match the model: " + "; ".join(problems))
    if dropped:
        log.info("dropped %d training-only/frozen tensors (e.g. %s)", len(dropped), dropped[0])
    return out


def convert_odise(
    checkpoint: str | Path, out: str | Path, profile: ModelProfile
) -> dict[str, torch.Tensor]:
    """Read ODISE's checkpoint, map it onto ``profile``'s head and write safetensors to ``out``."""
    state = convert_state_dict(load_odise_checkpoint(checkpoint), expected_head_shapes(profile))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        state,
        str(out),
        metadata={
            "format": "diff2scene-odise-head",
            "version": "1",
            "source": Path(checkpoint).name,
            "profile": profile.name,
        },
    )
    return state

"""Model profiles of the diffusion segmenter: what to build and where the weights come from.

A profile is a YAML file (``tiny.yaml``, ``odise_sd15.yaml`` in the repository's ``models/``,
found by name wherever diff2scene is installed: :mod:`~diff2scene.segmentation.profile_lookup`)
holding the segmenter config plus *either* a ``tiny`` section (diffusers configs of small
networks with seeded random weights — same classes as the real model, what tests and CI run) *or* a
``weights`` section (Stable Diffusion by Hugging Face id or local directory, CLIP, and our head
checkpoint). Every weight file is located before anything is built, so a machine without the
weights fails at once with :class:`MissingWeightsError` naming the missing file, how to make
or fetch it, and the ``tiny`` profile that runs without any.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from diff2scene.config import from_dict, load_yaml
from diff2scene.errors import ConfigError, DataFormatError, MissingWeightsError
from diff2scene.segmentation.clip import ClipConfig, build_clip, hub_offline, resolve_weights
from diff2scene.segmentation.diffusion.backbone import DiffusionBackbone
from diff2scene.segmentation.diffusion.maskclip import ClipImageFeatures
from diff2scene.segmentation.diffusion.segmenter import (
    DiffusionSegmenter,
    DiffusionSegmenterConfig,
    DiffusionSegmenterModel,
)
from diff2scene.segmentation.profile_lookup import find_profile

#: Stable Diffusion v1.x UNet (``unet/config.json`` of SD 1.5), for random-weight builds.
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
#: Stable Diffusion v1.x VAE (``vae/config.json`` of SD 1.5).
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
#: Files of a Stable Diffusion v1.x repository the segmenter reads (diffusers layout).
SD_FILES: tuple[tuple[str, ...], ...] = (
    ("unet/config.json",),
    ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    ("vae/config.json",),
    ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
    ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
)


@dataclass
class TinyArchConfig:
    """Small random networks of the real classes (seeded), for tests and CI."""

    #: Keyword arguments of ``diffusers.UNet2DConditionModel``.
    unet: dict[str, Any] = field(default_factory=dict)
    #: Keyword arguments of ``diffusers.AutoencoderKL``.
    vae: dict[str, Any] = field(default_factory=dict)
    #: The CLIP model (normally ``tiny: true``).
    clip: ClipConfig = field(default_factory=ClipConfig.tiny_profile)
    #: Number of text-conditioning tokens (SD: 77).
    text_tokens: int = 77
    #: Seed of every random initialisation.
    seed: int = 0


@dataclass
class WeightsConfig:
    """Where the real weights come from."""

    #: Stable Diffusion v1.x: a Hugging Face repo id (diffusers layout) or a local directory.
    sd_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    #: Git revision of ``sd_model`` on the Hub.
    sd_revision: str = "main"
    #: Hugging Face cache directory; None = the hub default (``$HF_HUB_CACHE``).
    cache_dir: Path | None = None
    #: Never touch the network, even when ``HF_HUB_OFFLINE`` is unset.
    offline: bool = False
    #: CLIP for the implicit captioner, MaskCLIP and text (ODISE: ViT-L-14-336, OpenAI).
    clip: ClipConfig = field(default_factory=ClipConfig)
    #: Our head checkpoint (safetensors), e.g. from ``diff2scene convert-odise``.
    head_checkpoint: Path | None = None
    #: Build the real architecture with random weights instead (benchmarks); nothing is read.
    random_init: bool = False


@dataclass
class ModelProfile:
    """A complete, buildable description of one diffusion segmenter."""

    #: Profile name, for logs.
    name: str = "unnamed"
    #: Architecture and inference constants.
    segmenter: DiffusionSegmenterConfig = field(default_factory=DiffusionSegmenterConfig)
    #: Tiny random networks (exclusive with ``weights``).
    tiny: TinyArchConfig | None = None
    #: Real weights (exclusive with ``tiny``).
    weights: WeightsConfig | None = None

    def __post_init__(self) -> None:
        if (self.tiny is None) == (self.weights is None):
            raise ValueError("a profile needs exactly one of `tiny` or `weights`")


def load_profile(name_or_path: str | Path) -> ModelProfile:
    """A profile by name (``tiny``, ``odise_sd15``; see :func:`find_profile`) or YAML path."""
    path = find_profile(name_or_path)
    return profile_from_dict(load_yaml(path), where=str(path))


def profile_from_dict(data: Mapping[str, Any], *, where: str = "profile") -> ModelProfile:
    return from_dict(ModelProfile, data, where=where)


def build_segmenter(profile: ModelProfile, *, device: str = "cpu") -> DiffusionSegmenter:
    """Build (and load) the segmenter a profile describes."""
    if profile.tiny is not None:
        model = _build_tiny(profile.segmenter, profile.tiny)
        return DiffusionSegmenter(model, device=device)
    assert profile.weights is not None
    return _build_real(profile.segmenter, profile.weights, device=device)


def _assemble(
    cfg: DiffusionSegmenterConfig,
    *,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    clip_cfg: ClipConfig,
    uncond: torch.Tensor | None,
    text_tokens: int = 77,
) -> DiffusionSegmenterModel:
    bundle = build_clip(clip_cfg)
    clip_features = ClipImageFeatures(bundle)
    if uncond is None:
        uncond = torch.zeros(1, text_tokens, _cross_attention_dim(unet))
    backbone = DiffusionBackbone(
        cfg.backbone, unet=unet, vae=vae, clip_dim=bundle.embed_dim, uncond_embedding=uncond
    )
    return DiffusionSegmenterModel(cfg, backbone=backbone, clip_features=clip_features)


def _cross_attention_dim(unet: Any) -> int:
    return int(unet.config["cross_attention_dim"])


def _build_tiny(cfg: DiffusionSegmenterConfig, tiny: TinyArchConfig) -> DiffusionSegmenterModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.seed)
        unet = UNet2DConditionModel(**tiny.unet)
        vae = AutoencoderKL(**tiny.vae)
        uncond = torch.randn(1, tiny.text_tokens, _cross_attention_dim(unet))
        return _assemble(
            cfg, unet=unet, vae=vae, clip_cfg=tiny.clip, uncond=uncond, text_tokens=tiny.text_tokens
        )


def _build_real(
    cfg: DiffusionSegmenterConfig, weights: WeightsConfig, *, device: str
) -> DiffusionSegmenter:
    if weights.random_init:
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        clip_cfg = dataclasses.replace(weights.clip, pretrained=None)
        model = _assemble(cfg, unet=unet, vae=vae, clip_cfg=clip_cfg, uncond=None)
        return DiffusionSegmenter(model, device=device)
    # Locate every file first: a missing one costs milliseconds, not a 4 GB build.
    head = _require_head(weights)
    sd_dir = resolve_sd_dir(weights)
    resolve_weights(weights.clip)
    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(sd_dir, subfolder="vae", local_files_only=True)
    uncond = sd_empty_prompt_embedding(sd_dir)
    model = _assemble(cfg, unet=unet, vae=vae, clip_cfg=weights.clip, uncond=uncond)
    segmenter = DiffusionSegmenter(model, device=device)
    segmenter.load_head(head)
    return segmenter


#: ODISE's released head checkpoint, the input of ``diff2scene convert-odise``.
ODISE_CHECKPOINT = "odise_label_coco_50e-b67d2efc.pth"


def _require_head(weights: WeightsConfig) -> Path:
    make = (
        f"download {ODISE_CHECKPOINT} from the NVlabs/ODISE release page on a connected machine "
        f"and run `diff2scene convert-odise {ODISE_CHECKPOINT} {{out}}`"
    )
    if weights.head_checkpoint is None:
        raise ConfigError(
            "the profile names no ODISE head (weights.head_checkpoint): "
            + make.format(out="odise_head.safetensors")
            + ", then set weights.head_checkpoint to the output file"
        )
    # A relative path is relative to the working directory, as on the command line; shown
    # absolute so the message says exactly where the file was looked for.
    head = Path(weights.head_checkpoint).expanduser().absolute()
    if not head.is_file():
        raise MissingWeightsError(
            f"ODISE head checkpoint not found: {head} (weights.head_checkpoint of the model "
            f"profile). Make it from ODISE's released odise_label_coco_50e checkpoint: "
            + make.format(out=head)
            + " (or point weights.head_checkpoint at an existing converted head).",
            path=head,
        )
    return head


def resolve_sd_dir(weights: WeightsConfig) -> Path:
    """Local diffusers-layout directory of the Stable Diffusion model, fetched if allowed."""
    source = Path(weights.sd_model).expanduser()
    if source.is_dir():
        absent = [alts for alts in SD_FILES if not any((source / a).is_file() for a in alts)]
        if absent:
            raise MissingWeightsError(
                f"Stable Diffusion directory {source} is incomplete; missing: "
                + "; ".join(" or ".join(alts) for alts in absent)
                + ". It must have the diffusers layout of stable-diffusion-v1-5 "
                "(unet/, vae/, text_encoder/ subfolders).",
                path=source / absent[0][0],
            )
        return source
    if weights.sd_model.count("/") != 1:
        raise ConfigError(
            f"weights.sd_model={weights.sd_model!r} is neither a directory nor a Hub repo id"
        )
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    cache = None if weights.cache_dir is None else str(weights.cache_dir)
    repo = weights.sd_model
    found: dict[tuple[str, ...], str] = {}
    for alts in SD_FILES:
        for name in alts:
            hit = try_to_load_from_cache(repo, name, cache_dir=cache, revision=weights.sd_revision)
            if isinstance(hit, str):
                found[alts] = hit
                break
    if len(found) == len(SD_FILES):
        return Path(found[SD_FILES[0]]).parent.parent
    offline = weights.offline or hub_offline(weights.clip)
    missing: list[str] = [alts[0] for alts in SD_FILES if alts not in found]
    if not offline:
        try:
            return Path(
                snapshot_download(
                    repo,
                    revision=weights.sd_revision,
                    cache_dir=cache,
                    allow_patterns=[name for alts in SD_FILES for name in alts],
                )
            )
        except Exception as exc:
            why = f"download failed: {type(exc).__name__}: {exc}"
    else:
        why = "offline (HF_HUB_OFFLINE=1 or weights.offline: true)"
    from huggingface_hub import constants

    cache_root = cache or constants.HF_HUB_CACHE
    folder = f"models--{repo.replace('/', '--')}"
    raise MissingWeightsError(
        f"Stable Diffusion weights {repo} are not available: {why}. Needed files: "
        f"{', '.join(missing)}. Run `huggingface-cli download {repo} {' '.join(missing)}` on a "
        f"connected machine and copy its cache folder {folder} into {cache_root}, or copy the "
        "files (same sub-folders) into a directory and set `weights.sd_model` to it.",
        path=Path(cache_root) / folder,
    )


def sd_empty_prompt_embedding(sd_dir: Path, *, num_heads: int | None = None) -> torch.Tensor:
    """SD's text encoding of the empty caption, (1, 77, 768): the captioner's base conditioning.

    Computed from ``text_encoder/`` (OpenAI CLIP ViT-L/14 text tower, Hugging Face layout)
    with plain tensor ops, so neither ``transformers`` nor the tokenizer is needed: the empty
    prompt is BOS followed by EOS padding. The head count is not in the weights' shapes: it
    comes from ``num_heads``, else ``text_encoder/config.json``, else SD v1.x's 12.
    """
    folder = sd_dir / "text_encoder"
    if num_heads is None:
        num_heads = _text_encoder_heads(folder / "config.json")
    path = folder / "model.safetensors"
    if path.is_file():
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataFormatError(f"cannot read SD text encoder in {folder}: {exc}") from exc
    return clip_text_hidden_states(state, [49406] + [49407] * 76, num_heads=num_heads)


def _text_encoder_heads(config_path: Path, default: int = 12) -> int:
    if not config_path.is_file():
        return default
    try:
        heads = json.loads(config_path.read_text()).get("num_attention_heads", default)
    except (OSError, ValueError, AttributeError) as exc:
        raise DataFormatError(f"cannot read SD text-encoder config {config_path}: {exc}") from exc
    if not isinstance(heads, int) or heads < 1:
        raise DataFormatError(f"{config_path}: num_attention_heads must be a positive integer")
    return heads


def clip_text_hidden_states(
    state: Mapping[str, torch.Tensor], token_ids: list[int], *, num_heads: int
) -> torch.Tensor:
    """Last hidden states (1, T, D) of a Hugging Face ``CLIPTextModel`` state dict.

    Causal pre-norm transformer with QuickGELU MLPs and a final LayerNorm, as OpenAI CLIP.
    """
    p = "text_model."

    def get(name: str) -> torch.Tensor:
        try:
            return state[name].float()
        except KeyError as exc:
            raise DataFormatError(f"not a CLIP text-encoder state dict: missing {name}") from exc

    def lin(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, get(name + ".weight"), get(name + ".bias"))

    def norm(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, (h.shape[-1],), get(name + ".weight"), get(name + ".bias"))

    ids = torch.tensor([token_ids])
    x = get(p + "embeddings.token_embedding.weight")[ids]
    x = x + get(p + "embeddings.position_embedding.weight")[: len(token_ids)]
    t, d = x.shape[1], x.shape[2]
    causal = torch.full((t, t), float("-inf")).triu(1)
    layer = 0
    while f"{p}encoder.layers.{layer}.layer_norm1.weight" in state:
        q = f"{p}encoder.layers.{layer}."
        h = norm(q + "layer_norm1", x)
        qkv = [
            lin(f"{q}self_attn.{n}_proj", h).view(1, t, num_heads, d // num_heads).transpose(1, 2)
            for n in ("q", "k", "v")
        ]
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=causal)
        x = x + lin(q + "self_attn.out_proj", att.transpose(1, 2).reshape(1, t, d))
        h = lin(q + "mlp.fc1", norm(q + "layer_norm2", x))
        x = x + lin(q + "mlp.fc2", h * torch.sigmoid(1.702 * h))
        layer += 1
    if layer == 0:
        raise DataFormatError(f"not a CLIP text-encoder state dict: no {p}encoder.layers.0.*")
    return norm(p + "final_layer_norm", x)

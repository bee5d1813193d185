"""Construction of the ``open_clip`` CLIP model used by MaskCLIP and the text encoder.

Two profiles share one code path downstream:

* **tiny** — a real :class:`open_clip.model.CLIP` with tiny towers, seeded random weights. It
  uses the real BPE tokenizer (77-token context, full vocabulary), so every piece of code that
  tokenises, pools and projects runs unchanged in tests and CI.
* **real** — a built-in ``open_clip`` architecture (default ``ViT-L-14-336``, ODISE's) with
  weights from a pretrained tag (``"openai"``), a Hugging Face repo id, a local file or
  directory, or no weights at all (``pretrained=None``: random init of the full-size network,
  what the latency benchmarks use).

Weights are located *before* the network is built, so a machine without them fails in
milliseconds with :class:`~diff2scene.errors.WeightsUnavailableError` naming the exact files
and where to put them, instead of after seconds of initialising 430M parameters or a long
network time-out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from diff2scene.errors import ConfigError, WeightsUnavailableError

#: File names ``open_clip`` stores CLIP checkpoints under on the Hugging Face Hub, in the order
#: we prefer them (safetensors needs no unpickling).
HUB_WEIGHT_FILES: tuple[str, ...] = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: Local checkpoint suffixes we accept; ``.bin``/``.pth`` are read with ``weights_only=True``.
LOCAL_WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pth")

Tokenizer = Callable[[Sequence[str]], torch.Tensor]


@dataclass
class ClipConfig:
    """Which CLIP to build and where its weights come from."""

    #: ``open_clip`` built-in architecture name (ODISE/MaskCLIP use ViT-L/14 at 336 px).
    model_name: str = "ViT-L-14-336"
    #: Weight source: an ``open_clip`` pretrained tag (``"openai"``), a Hugging Face repo id
    #: (``"org/repo"``, holding ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``),
    #: a local checkpoint file or a directory containing one, or None for random weights.
    pretrained: str | None = "openai"
    #: Hugging Face cache directory to look in / download to; None = the hub default
    #: (``$HF_HUB_CACHE``, usually ``~/.cache/huggingface/hub``).
    cache_dir: Path | None = None
    #: Never touch the network, even when ``HF_HUB_OFFLINE`` is unset.
    offline: bool = False
    #: QuickGELU activations; OpenAI's CLIP weights were trained with them.
    quick_gelu: bool = True
    #: Torch device the model is placed on.
    device: str = "cpu"
    #: Build the tiny seeded random profile instead (tests, CI); the fields below apply.
    tiny: bool = False
    #: Tiny profile: width of both towers' transformers.
    tiny_width: int = 64
    #: Tiny profile: transformer layers in each tower.
    tiny_layers: int = 2
    #: Tiny profile: attention heads in each tower (``tiny_width`` must be divisible by it).
    tiny_heads: int = 2
    #: Tiny profile: square input resolution of the vision tower, pixels.
    tiny_image_size: int = 64
    #: Tiny profile: ViT patch size, pixels.
    tiny_patch_size: int = 16
    #: Tiny profile: width of the joint image-text embedding space.
    tiny_embed_dim: int = 64
    #: Tiny profile: seed of the random initialisation.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tiny:
            if min(self.tiny_width, self.tiny_layers, self.tiny_heads, self.tiny_embed_dim) < 1:
                raise ValueError("tiny widths, layers, heads and embed_dim must be positive")
            if self.tiny_width % self.tiny_heads:
                raise ValueError(
                    f"tiny_width {self.tiny_width} not divisible by tiny_heads {self.tiny_heads}"
                )
            if self.tiny_patch_size < 1 or self.tiny_image_size % self.tiny_patch_size:
                raise ValueError(
                    f"tiny_image_size {self.tiny_image_size} must be a multiple of "
                    f"tiny_patch_size {self.tiny_patch_size}"
                )

    @classmethod
    def tiny_profile(cls, *, seed: int = 0) -> ClipConfig:
        """The reduced profile tests and CI use (a few hundred thousand parameters + embeddings)."""
        return cls(model_name="tiny", pretrained=None, tiny=True, seed=seed)


@dataclass
class ClipBundle:
    """A CLIP model in eval mode with what is needed to feed it.

    ``tokenizer(texts)`` returns a (T, context_length) int64 tensor. Images must be resized to
    ``image_size`` (or a multiple of ``patch_size`` for dense MaskCLIP features), scaled to
    [0, 1] and normalised with ``image_mean``/``image_std`` (RGB order).
    """

    model: Any  # open_clip.model.CLIP (the package ships no type information)
    tokenizer: Tokenizer
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    #: Width of the joint embedding space (768 for ViT-L/14).
    embed_dim: int
    #: Native square input resolution of the vision tower, pixels.
    image_size: int
    patch_size: int
    context_length: int
    #: Where the weights came from (a file path), or None for random weights.
    weights_path: Path | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device  # type: ignore[no-any-return]


def hub_offline(cfg: ClipConfig) -> bool:
    """True if the hub must not be contacted (config flag or ``HF_HUB_OFFLINE``)."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return cfg.offline or env in {"1", "ON", "YES", "TRUE"}


def build_clip(cfg: ClipConfig) -> ClipBundle:
    """Build the configured CLIP model (eval mode, gradients off).

    Raises :class:`WeightsUnavailableError` if weights are requested but cannot be found
    locally or downloaded, and :class:`ConfigError` for an unknown architecture or tag.
    """
    if cfg.tiny:
        return _build_tiny(cfg)
    return _build_real(cfg)


def _build_tiny(cfg: ClipConfig) -> ClipBundle:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    context_length = 77
    vision = CLIPVisionCfg(
        layers=cfg.tiny_layers,
        width=cfg.tiny_width,
        head_width=cfg.tiny_width // cfg.tiny_heads,
        patch_size=cfg.tiny_patch_size,
        image_size=cfg.tiny_image_size,
    )
    text = CLIPTextCfg(
        context_length=context_length,
        width=cfg.tiny_width,
        heads=cfg.tiny_heads,
        layers=cfg.tiny_layers,
    )
    # fork_rng keeps the caller's global RNG stream untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = CLIP(
            embed_dim=cfg.tiny_embed_dim,
            vision_cfg=vision,
            text_cfg=text,
            quick_gelu=cfg.quick_gelu,
        )
    model = model.to(cfg.device).eval().requires_grad_(False)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    return ClipBundle(
        model=model,
        tokenizer=open_clip.tokenizer.SimpleTokenizer(context_length=context_length),
        image_mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        image_std=(float(std[0]), float(std[1]), float(std[2])),
        embed_dim=cfg.tiny_embed_dim,
        image_size=cfg.tiny_image_size,
        patch_size=cfg.tiny_patch_size,
        context_length=context_length,
        weights_path=None,
    )


def _build_real(cfg: ClipConfig) -> ClipBundle:
    if cfg.model_name not in open_clip.list_models():
        raise ConfigError(
            f"unknown open_clip architecture {cfg.model_name!r}; e.g. ViT-L-14-336, ViT-B-16"
        )
    weights = resolve_weights(cfg)
    model = open_clip.create_model(
        cfg.model_name,
        pretrained=None if weights is None else str(weights),
        force_quick_gelu=cfg.quick_gelu,
        device=cfg.device,
        cache_dir=None if cfg.cache_dir is None else str(cfg.cache_dir),
        pretrained_text=False,
        weights_only=True,
    )
    model = model.eval().requires_grad_(False)
    pp = model.visual.preprocess_cfg
    mean = tuple(float(v) for v in pp["mean"])
    std = tuple(float(v) for v in pp["std"])
    size = model.visual.image_size
    patch = model.visual.patch_size
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(cfg.model_name),
        image_mean=(mean[0], mean[1], mean[2]),
        image_std=(std[0], std[1], std[2]),
        embed_dim=int(model.text_projection.shape[1]),
        image_size=int(size[0] if isinstance(size, tuple | list) else size),
        patch_size=int(patch[0] if isinstance(patch, tuple | list) else patch),
        context_length=int(model.context_length),
        weights_path=weights,
    )


def resolve_weights(cfg: ClipConfig) -> Path | None:
    """Local path of the checkpoint ``cfg.pretrained`` designates, downloading it if allowed.

    Order: None → random init; an existing file or directory; a known ``open_clip`` tag of
    ``cfg.model_name`` (through its Hugging Face repo); any other ``org/repo`` string as a Hub
    repo id. Nothing is built here, so failures are immediate.
    """
    source = cfg.pretrained
    if source is None:
        return None
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _checkpoint_in_dir(path)
    tag_cfg = open_clip.get_pretrained_cfg(cfg.model_name, source)
    if tag_cfg:
        hub = str(tag_cfg.get("hf_hub", "")).rstrip("/")
        if not hub:
            raise WeightsUnavailableError(
                f"pretrained tag {source!r} of {cfg.model_name} has no Hugging Face repo; "
                f"download {tag_cfg.get('url', 'its checkpoint')} elsewhere, convert it to "
                "safetensors and set `pretrained` to the file"
            )
        parts = hub.split("/")
        repo_id = "/".join(parts[:2])
        filename = "/".join(parts[2:])
        return _from_hub(cfg, repo_id, (filename,) if filename else HUB_WEIGHT_FILES)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return _from_hub(cfg, source, HUB_WEIGHT_FILES)
    known = open_clip.list_pretrained_tags_by_model(cfg.model_name)
    raise ConfigError(
        f"pretrained={source!r} is neither an existing file/directory, a tag of "
        f"{cfg.model_name} ({', '.join(known) or 'none'}), nor a Hugging Face repo id"
    )


def _checkpoint_in_dir(directory: Path) -> Path:
    for name in HUB_WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.iterdir() if p.suffix in LOCAL_WEIGHT_SUFFIXES)
    safes = [p for p in found if p.suffix == ".safetensors"]
    if safes or found:
        return (safes or found)[0]
    raise WeightsUnavailableError(
        f"no CLIP checkpoint in {directory}: expected one of {', '.join(HUB_WEIGHT_FILES)} "
        f"(or any *{' / *'.join(LOCAL_WEIGHT_SUFFIXES)} file)"
    )


def _from_hub(cfg: ClipConfig, repo_id: str, filenames: Sequence[str]) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache_dir = None if cfg.cache_dir is None else str(cfg.cache_dir)
    for name in filenames:
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached)
    offline = hub_offline(cfg)
    errors: list[str] = []
    if not offline:
        from huggingface_hub.errors import RemoteEntryNotFoundError

        for name in filenames:
            try:
                return Path(hf_hub_download(repo_id, name, cache_dir=cache_dir))
            except RemoteEntryNotFoundError as exc:
                errors.append(f"{name}: not in the repo ({exc})")
            except Exception as exc:  # unreachable hub or auth: no point trying more files
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                break
    cache_root = cache_dir or _default_hub_cache()
    why = "offline (HF_HUB_OFFLINE=1 or offline: true)" if offline else "; ".join(errors)
    raise WeightsUnavailableError(
        f"CLIP weights for {cfg.model_name} (pretrained={cfg.pretrained!r}) are not available: "
        f"{why}. Needed: one of {', '.join(filenames)} from the Hugging Face repo {repo_id}. "
        f"Either run `huggingface-cli download {repo_id} {filenames[0]}` on a connected "
        f"machine and copy its cache folder models--{repo_id.replace('/', '--')} into "
        f"{cache_root}, or put the file anywhere and set `pretrained` to its path "
        "(or to the directory holding it)."
    )


def _default_hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)

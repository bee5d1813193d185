"""ODISE's open-vocabulary mask model as a :class:`Segmenter2D`.

Diffusion features → Mask2Former head → N masks with 256-d embeddings; MaskCLIP pools CLIP
patch embeddings inside each mask → 768-d embeddings. A vocabulary is scored in both spaces
and the two class distributions are fused by a weighted geometric mean, leaning on CLIP more
for classes the head never saw in training (ODISE: ``p = p_diff^(1−α) · p_clip^α``, α for seen
and β for novel classes), then scaled by the head's "not an object" probability.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file
from torch import nn

from diff2scene.errors import DataFormatError, InputError
from diff2scene.segmentation.base import Segmenter2D, Vocabulary
from diff2scene.segmentation.diffusion.backbone import BackboneConfig, DiffusionBackbone
from diff2scene.segmentation.diffusion.maskclip import ClipImageFeatures
from diff2scene.segmentation.diffusion.pixel_decoder import (
    MSDeformAttnPixelDecoder,
    PixelDecoderConfig,
)
from diff2scene.segmentation.diffusion.transformer_decoder import (
    MultiScaleMaskedTransformerDecoder,
    TransformerDecoderConfig,
)
from diff2scene.segmentation.fusion import fuse_logits
from diff2scene.types import SPACE_CLIP, SPACE_DIFFUSION, Frame, MaskSet


@dataclass
class DiffusionSegmenterConfig:
    """The whole 2D model; every default is ODISE's (``odise_label_coco_50e``)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    transformer_decoder: TransformerDecoderConfig = field(
        default_factory=TransformerDecoderConfig
    )
    #: CLIP's weight in the fused class probability for classes seen in the head's training.
    alpha_seen: float = 0.35
    #: CLIP's weight for novel classes (the head generalises worse to them).
    beta_novel: float = 0.65
    #: Sigmoid threshold of a mask when pooling CLIP patch embeddings inside it.
    clip_mask_threshold: float = 0.5
    #: Upper bound of CLIP's learned logit scale (OpenAI CLIP clamps at 100).
    clip_logit_scale_max: float = 100.0
    #: Upper bound of the head's learned logit scale.
    head_logit_scale_max: float = 100.0

    def __post_init__(self) -> None:
        for name in ("alpha_seen", "beta_novel", "clip_mask_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


class CategoryHead(nn.Module):
    """Maps CLIP text embeddings into the mask-embedding space; holds the "no object" embedding."""

    def __init__(self, clip_dim: int, mask_dim: int) -> None:
        super().__init__()
        self.text_proj = nn.Linear(clip_dim, mask_dim)
        self.null_embed = nn.Parameter(torch.randn(1, clip_dim) * 0.02)

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised text (C, D_clip) → projected text (C, mask_dim), projected null (1, mask_dim).

        ODISE projects *unnormalised* CLIP text embeddings; ours arrive normalised (the
        Vocabulary contract), so they are rescaled to the norm of the learned empty-caption
        embedding, the one unnormalised CLIP text embedding the checkpoint keeps.
        """
        scale = self.null_embed.norm(dim=-1, keepdim=True)
        return self.text_proj(text * scale), self.text_proj(self.null_embed)


@dataclass
class SegmentTimings:
    """Seconds spent in each part of the last :meth:`DiffusionSegmenter.segment` call."""

    diffusion_features_s: float = 0.0
    clip_s: float = 0.0
    head_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.diffusion_features_s + self.clip_s + self.head_s


def build_head_modules(
    cfg: DiffusionSegmenterConfig, backbone: DiffusionBackbone, clip_dim: int
) -> tuple[MSDeformAttnPixelDecoder, MultiScaleMaskedTransformerDecoder, CategoryHead]:
    """The Mask2Former head and text projection on top of ``backbone``'s features."""
    if cfg.pixel_decoder.mask_dim != cfg.transformer_decoder.mask_dim:
        raise ValueError("pixel_decoder.mask_dim must equal transformer_decoder.mask_dim")
    in_channels = dict.fromkeys(backbone.out_strides, cfg.backbone.projection_dim)
    return (
        MSDeformAttnPixelDecoder(cfg.pixel_decoder, in_channels),
        MultiScaleMaskedTransformerDecoder(cfg.transformer_decoder, cfg.pixel_decoder.conv_dim),
        CategoryHead(clip_dim, cfg.transformer_decoder.mask_dim),
    )


class DiffusionSegmenterModel(nn.Module):
    """Padded image (B, 3, H, W) in [0, 1], H and W multiples of 64 →

    mask logits (B, N, H/4, W/4), diffusion embeddings (B, N, mask_dim), CLIP embeddings
    (B, N, D_clip).
    """

    def __init__(
        self,
        cfg: DiffusionSegmenterConfig,
        *,
        backbone: DiffusionBackbone,
        clip_features: ClipImageFeatures,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.pixel_decoder, self.predictor, self.category_head = build_head_modules(
            cfg, backbone, clip_features.embed_dim
        )
        self.clip_features = clip_features
        self.timings = SegmentTimings()

    @contextmanager
    def _timed(self, part: str, device: torch.device) -> Iterator[None]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            name = f"{part}_s"
            setattr(self.timings, name, getattr(self.timings, name) + time.perf_counter() - t0)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.timings = SegmentTimings()
        dev = image.device
        with self._timed("clip", dev):
            full_cls: torch.Tensor
            full_cls, dense = self.clip_features(image)

        def clip_embed(window: torch.Tensor) -> torch.Tensor:
            # The captioner embeds each window; a window that is the whole image reuses the
            # full-image pass made for MaskCLIP.
            if window.shape == image.shape and torch.equal(window, image):
                return full_cls
            with self._timed("clip", dev):
                cls: torch.Tensor = self.clip_features(window)[0]
            return cls

        t0 = self.timings.clip_s
        with self._timed("diffusion_features", dev):
            feats = self.backbone(image, clip_embed)
        # CLIP passes for windows ran inside the backbone's time: count them once, as CLIP.
        self.timings.diffusion_features_s -= self.timings.clip_s - t0
        with self._timed("head", dev):
            mask_features, multi_scale = self.pixel_decoder(feats)
            mask_logits, mask_embed = self.predictor(multi_scale, mask_features)
        with self._timed("clip", dev):
            dense_up = F.interpolate(
                dense, size=mask_logits.shape[-2:], mode="bilinear", align_corners=False
            )
            mask = (mask_logits.sigmoid() > self.cfg.clip_mask_threshold).to(dense_up.dtype)
            clip_embed_per_mask = torch.einsum(
                "bchw,bqhw->bqc", dense_up, mask / (mask.sum(dim=(-1, -2), keepdim=True) + 1e-8)
            )
        return mask_logits, mask_embed, clip_embed_per_mask

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors of our checkpoint: everything but the frozen SD and CLIP networks."""
        out = {f"backbone.{k}": v for k, v in self.backbone.head_state_dict().items()}
        for name in ("pixel_decoder", "predictor", "category_head"):
            module = getattr(self, name)
            out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        return out

    def load_head_state_dict(self, state: dict[str, torch.Tensor], *, source: str = "") -> None:
        """Load :meth:`head_state_dict` tensors; a missing, extra or mis-shaped key is an error."""
        expected = self.head_state_dict()
        # ODISE's checkpoint has no empty-caption embedding: it is computed from SD's text
        # encoder when the model is built, and kept when a checkpoint lacks it.
        optional = {"backbone.uncond_embedding"}
        missing = sorted(set(expected) - set(state) - optional)
        extra = sorted(set(state) - set(expected))
        wrong = sorted(
            f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        )
        if missing or extra or wrong:
            raise DataFormatError(
                f"head checkpoint {source} does not fit this model: "
                f"missing {missing[:10]}{'…' if len(missing) > 10 else ''} "
                f"({len(missing)}), unexpected {extra[:10]} ({len(extra)}), "
                f"wrong shapes {wrong[:10]} ({len(wrong)})"
            )
        with torch.no_grad():
            for k, v in expected.items():
                if k in state:
                    v.copy_(state[k].to(v.dtype))


class DiffusionSegmenter(Segmenter2D):
    """The ODISE-architecture 2D branch behind the :class:`Segmenter2D` interface.

    One instance serves one thread at a time (the backbone collects features through hooks
    into per-call state); the mapping pipeline runs it in a single worker.
    """

    def __init__(
        self, model: DiffusionSegmenterModel, *, device: str | torch.device = "cpu"
    ) -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.cfg = model.cfg

    @property
    def embedding_dims(self) -> dict[str, int]:
        return {
            SPACE_DIFFUSION: self.cfg.transformer_decoder.mask_dim,
            SPACE_CLIP: self.model.clip_features.embed_dim,
        }

    @property
    def timings(self) -> SegmentTimings:
        """Where the time of the last :meth:`segment` call went."""
        return self.model.timings

    def segment(self, frame: Frame, vocabulary: Vocabulary | None = None) -> MaskSet:
        rgb = frame.rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(
                "bad image", f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}"
            )
        h, w = rgb.shape[:2]
        if min(h, w) < 16:
            raise InputError("bad image", f"image {w}x{h} is too small to segment")
        image = _tensor_of(rgb, np.uint8).to(self.device)
        image = image.permute(2, 0, 1).unsqueeze(0).float() / 255.0
        div = self.cfg.backbone.size_divisibility
        ph, pw = -(-h // div) * div, -(-w // div) * div
        image = F.pad(image, (0, pw - w, 0, ph - h))
        mask_logits, mask_embed, clip_embed = self.model(image)
        masks = F.interpolate(mask_logits, size=(ph, pw), mode="bilinear", align_corners=False)
        masks = masks[0, :, :h, :w].sigmoid()
        embeddings = {
            SPACE_DIFFUSION: mask_embed[0].float().cpu().numpy(),
            SPACE_CLIP: clip_embed[0].float().cpu().numpy(),
        }
        result = MaskSet(masks=masks.float().cpu().numpy(), embeddings=embeddings)
        if vocabulary is not None:
            result.class_probs = self.classify(embeddings, vocabulary)
        return result

    def classify(
        self, embeddings: dict[str, NDArray[np.float32]], vocabulary: Vocabulary
    ) -> NDArray[np.float32]:
        for space in (SPACE_DIFFUSION, SPACE_CLIP):
            if space not in embeddings:
                raise InputError("missing embeddings", f"need the {space!r} space")
        text = _tensor_of(vocabulary.text_embeddings, np.float32)
        if text.shape[1] != self.model.clip_features.embed_dim:
            raise InputError(
                "vocabulary mismatch",
                f"text embeddings are {text.shape[1]}-d, CLIP space is "
                f"{self.model.clip_features.embed_dim}-d",
            )
        diff = _tensor_of(embeddings[SPACE_DIFFUSION], np.float32)
        clip = _tensor_of(embeddings[SPACE_CLIP], np.float32)
        if len(vocabulary) == 0 or diff.shape[0] == 0:
            return np.zeros((diff.shape[0], len(vocabulary)), dtype=np.float32)
        seen = _tensor_of(vocabulary.seen, np.bool_)
        dev = self.device
        with torch.no_grad():
            text_diff, null = self.model.category_head(text.to(dev))
            post: Any = self.model.predictor.post_mask_embed
            scale = post.logit_scale.detach().exp().clamp(max=self.cfg.head_logit_scale_max)
            clip_scale = self.model.clip_features.logit_scale.detach().exp()
            clip_scale = clip_scale.clamp(max=self.cfg.clip_logit_scale_max)
            probs = fuse_class_probabilities(
                mask_embed=diff.to(dev),
                text_embed=text_diff,
                null_embed=null,
                clip_mask_embed=clip.to(dev),
                clip_text_embed=text.to(dev),
                seen=seen.to(dev),
                head_logit_scale=float(scale),
                clip_logit_scale=float(clip_scale),
                alpha=self.cfg.alpha_seen,
                beta=self.cfg.beta_novel,
            )
        return probs.cpu().numpy().astype(np.float32)

    def save_head(self, path: str | Path) -> None:
        """Write the trainable head (captioner, projections, Mask2Former, text_proj)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.head_state_dict().items()}
        save_file(state, str(path), metadata={"format": "diff2scene-odise-head", "version": "1"})

    def load_head(self, path: str | Path) -> None:
        """Load a head checkpoint written by :meth:`save_head` or ``diff2scene convert-odise``."""
        try:
            state = load_file(str(path), device="cpu")
        except FileNotFoundError as exc:
            raise DataFormatError(f"head checkpoint not found: {path}") from exc
        except Exception as exc:
            raise DataFormatError(f"cannot read head checkpoint {path}: {exc}") from exc
        self.model.load_head_state_dict(state, source=str(path))


def fuse_class_probabilities(
    *,
    mask_embed: torch.Tensor,
    text_embed: torch.Tensor,
    null_embed: torch.Tensor,
    clip_mask_embed: torch.Tensor,
    clip_text_embed: torch.Tensor,
    seen: torch.Tensor,
    head_logit_scale: float,
    clip_logit_scale: float,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """ODISE's class probabilities of N masks over C classes, (N, C); rows sum to 1 − p(no object).

    ``mask_embed`` (N, D), ``text_embed`` (C, D), ``null_embed`` (1, D) live in the head's space;
    ``clip_mask_embed`` (N, E), ``clip_text_embed`` (C, E) in CLIP's. ``seen`` (C,) bool picks
    α (seen) or β (novel) as CLIP's exponent in ``p_diff^(1−a) · p_clip^a``.
    """
    m = F.normalize(mask_embed, dim=-1)
    clip_logits = clip_logit_scale * (
        F.normalize(clip_mask_embed, dim=-1) @ F.normalize(clip_text_embed, dim=-1).T
    )
    return fuse_logits(
        diffusion_logits=head_logit_scale * m @ F.normalize(text_embed, dim=-1).T,
        null_logits=head_logit_scale * m @ F.normalize(null_embed, dim=-1).T,
        clip_logits=clip_logits,
        seen=seen,
        alpha=alpha,
        beta=beta,
    )


def _tensor_of(array: NDArray[Any], dtype: type[np.generic]) -> torch.Tensor:
    """A CPU tensor of ``array`` as ``dtype``, sharing its memory only where that is safe.

    Frames decoded from message or bag buffers and the map snapshot's mask embeddings are
    read-only views; ``torch.from_numpy`` would hand out a tensor over memory that must not be
    written (PyTorch warns about it on every process's first such call), so those are copied.
    The copies are small next to the model's own work: one image, or (N, D) embeddings.
    """
    out = np.ascontiguousarray(array, dtype=dtype)
    if not out.flags.writeable:
        out = out.copy()
    return torch.from_numpy(out)

"""CLIP text tower as the one text encoder shared by vocabulary labelling and queries.

A live map answers many queries and relabels with vocabularies whose prompts repeat, while a
ViT-L/14 text forward costs ~80 ms on this CPU; an LRU cache keyed by the exact prompt makes
repeated text free. The encoder is thread-safe: the ROS service thread (queries) and the
segmentation worker (vocabularies) may share one instance.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from diff2scene.errors import InputError
from diff2scene.segmentation.base import TextEncoder
from diff2scene.segmentation.clip import ClipBundle, ClipConfig, build_clip

#: Prompt ensemble for class names; ``{}`` is replaced by the name. Averaging several prompts
#: is the usual zero-shot CLIP practice and steadies scores of short, ambiguous class names.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "there is a {} in the scene.",
    "a {} in a room.",
)


@dataclass
class TextEncoderConfig:
    """Batching, caching and prompt templates of :class:`ClipTextEncoder`."""

    #: Prompts per text-tower forward pass (bounds activation memory).
    batch_size: int = 64
    #: Embeddings kept in the LRU cache (each is ``dim`` float32, 3 KiB at 768-d); 0 disables.
    cache_size: int = 4096
    #: Prompt templates averaged by :meth:`ClipTextEncoder.encode_classes`; each holds one ``{}``.
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    #: Longest accepted text in characters; longer input is rejected as an absurd query.
    max_text_chars: int = 1000
    #: The CLIP model whose text tower is used.
    clip: ClipConfig = field(default_factory=ClipConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")
        if not self.templates:
            raise ValueError("templates must not be empty")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}'")


@dataclass(frozen=True)
class CacheInfo:
    """Counters of the embedding cache since construction (or :meth:`clear_cache`)."""

    hits: int
    misses: int
    size: int
    capacity: int


class ClipTextEncoder:
    """Texts → (C, dim) float32 L2-normalised CLIP text embeddings (``TextEncoder`` protocol)."""

    def __init__(self, bundle: ClipBundle, config: TextEncoderConfig | None = None) -> None:
        self._bundle = bundle
        self.config = config or TextEncoderConfig()
        self._cache: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # One forward at a time: bounds memory and keeps torch's intra-op pool uncontended.
        self._model_lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @classmethod
    def from_config(cls, config: TextEncoderConfig) -> ClipTextEncoder:
        """Build the CLIP model named by ``config.clip`` and wrap its text tower."""
        return cls(build_clip(config.clip), config)

    @property
    def dim(self) -> int:
        return self._bundle.embed_dim

    @property
    def bundle(self) -> ClipBundle:
        """The CLIP model this encoder uses (MaskCLIP can share it instead of loading twice)."""
        return self._bundle

    def cache_info(self) -> CacheInfo:
        with self._cache_lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self.config.cache_size)

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._hits = 0
            self._misses = 0

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """(C, dim) float32, one L2-normalised row per text, cached by exact text.

        Raises :class:`InputError` for non-string or over-long texts.
        """
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of strings", f"got the string {texts!r}")
        for text in texts:
            if not isinstance(text, str):
                raise InputError("texts must be strings", f"got {type(text).__name__}")
            if len(text) > self.config.max_text_chars:
                raise InputError(
                    "text too long",
                    f"{len(text)} characters > max_text_chars={self.config.max_text_chars}",
                )
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._cache_lock:
            for row, text in enumerate(texts):
                cached = self._cache.get(text)
                if cached is not None:
                    self._cache.move_to_end(text)
                    out[row] = cached
                    self._hits += 1
                else:
                    # Duplicates inside one call are encoded once and count as one miss.
                    if text in missing:
                        self._hits += 1
                    else:
                        self._misses += 1
                    missing.setdefault(text, []).append(row)
        if missing:
            unique = list(missing)
            fresh = self._forward(unique)
            with self._cache_lock:
                for text, emb in zip(unique, fresh, strict=True):
                    out[missing[text]] = emb
                    self._remember(text, emb)
        return out

    def encode_classes(
        self, names: Sequence[str], templates: Sequence[str] | None = None
    ) -> NDArray[np.float32]:
        """(C, dim) float32: per class, the renormalised mean of its prompt-template embeddings.

        ``templates`` defaults to the configured ensemble; each must contain one ``{}``.
        """
        chosen = tuple(templates) if templates is not None else self.config.templates
        return ensemble_embeddings(self, names, chosen)

    def _forward(self, texts: list[str]) -> NDArray[np.float32]:
        model = self._bundle.model
        device = self._bundle.device
        chunks: list[NDArray[np.float32]] = []
        with self._model_lock, torch.inference_mode():
            for start in range(0, len(texts), self.config.batch_size):
                tokens = self._bundle.tokenizer(texts[start : start + self.config.batch_size])
                feats = _encode_text_truncated(model, tokens.to(device)).float()
                feats = torch.nn.functional.normalize(feats, dim=-1)
                chunks.append(feats.cpu().numpy().astype(np.float32, copy=False))
        return np.concatenate(chunks, axis=0)

    def _remember(self, text: str, emb: NDArray[np.float32]) -> None:
        """Insert under ``_cache_lock``; evicts least recently used entries beyond capacity."""
        capacity = self.config.cache_size
        if capacity == 0:
            return
        self._cache[text] = emb.copy()
        self._cache.move_to_end(text)
        while len(self._cache) > capacity:
            self._cache.popitem(last=False)


def ensemble_embeddings(
    encoder: TextEncoder, names: Sequence[str], templates: Sequence[str]
) -> NDArray[np.float32]:
    """(C, dim) float32: per name, the renormalised mean of its prompt-template embeddings.

    Works with any :class:`TextEncoder`; every template must contain exactly one ``{}``.
    """
    if not templates:
        raise InputError("no prompt templates given")
    for template in templates:
        if template.count("{}") != 1:
            raise InputError("bad prompt template", f"{template!r} needs exactly one '{{}}'")
    prompts = [template.replace("{}", name) for name in names for template in templates]
    emb = encoder.encode(prompts).reshape(len(names), len(templates), encoder.dim)
    mean = emb.mean(axis=1)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    result: NDArray[np.float32] = (mean / np.maximum(norm, 1e-12)).astype(np.float32)
    return result


def default_templates(encoder: TextEncoder) -> tuple[str, ...]:
    """The prompt ensemble to embed class names with: the encoder's own if it has one.

    Everything that embeds class names (vocabularies, the oracle segmenter) goes through this,
    so the same class always gets the same embedding.
    """
    if isinstance(encoder, ClipTextEncoder):
        return encoder.config.templates
    return DEFAULT_TEMPLATES


def _encode_text_truncated(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` run on only the tokens up to the batch's last end-of-text token.

    CLIP's text tower is causal and reads its output at the end-of-text token (the largest
    token id), so the padding after it cannot change the result; dropping it makes a short
    query several times cheaper than the full 77-token pass. Models that pool differently or
    have no causal mask go through ``encode_text`` unchanged.
    """
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) != "argmax" or mask is None:
        return model.encode_text(tokens)  # type: ignore[no-any-return]
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=mask[:length, :length])
    x = model.ln_final(x)
    pooled: torch.Tensor = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return pooled
    out: torch.Tensor = (
        projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
    )
    return out

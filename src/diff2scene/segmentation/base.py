"""Interfaces of the 2D branch.

Everything downstream (mask unprojection, distillation, the query ensemble) talks to these and
cannot tell the diffusion model from the oracle-noise segmenter used in the synthetic benchmark.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from diff2scene.types import Frame, MaskSet


class TextEncoder(Protocol):
    """Maps text prompts to L2-normalised embeddings in the CLIP text space."""

    @property
    def dim(self) -> int:
        """Width of the embedding (768 for CLIP ViT-L/14)."""
        ...

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """(C, dim) float32, one L2-normalised row per text."""
        ...


@dataclass
class Vocabulary:
    """Class names with their text embeddings, ready to score masks against.

    ``seen[c]`` is True for classes that were in the 2D head's training labels; the fusion of
    diffusion and CLIP probabilities uses α for seen and β for novel classes, as ODISE does.
    """

    names: list[str]
    text_embeddings: NDArray[np.float32]  # (C, D_text) L2-normalised
    seen: NDArray[np.bool_]  # (C,)

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.text_embeddings.ndim != 2 or self.text_embeddings.shape[0] != n:
            raise ValueError(
                f"text_embeddings must be ({n}, D), got {self.text_embeddings.shape}"
            )
        if self.seen.shape != (n,):
            raise ValueError(f"seen must be ({n},), got {self.seen.shape}")

    def __len__(self) -> int:
        return len(self.names)


class Segmenter2D(ABC):
    """Image → N probability masks, per-mask embeddings in each space, class probabilities."""

    @property
    @abstractmethod
    def embedding_dims(self) -> dict[str, int]:
        """Width of each embedding space it fills, e.g. {"diffusion": 256, "clip": 768}."""

    @abstractmethod
    def segment(self, frame: Frame, vocabulary: Vocabulary | None = None) -> MaskSet:
        """Segment ``frame.rgb``; fill ``class_probs`` when a vocabulary is given.

        Only the oracle segmenter reads anything but ``frame.rgb`` (the ground-truth ids).
        """

    @abstractmethod
    def classify(
        self, embeddings: dict[str, NDArray[np.float32]], vocabulary: Vocabulary
    ) -> NDArray[np.float32]:
        """Class probabilities (N, C) of masks from their stored embeddings.

        Rows sum to at most 1: the remainder is the "no object" probability. Kept separate from
        :meth:`segment` so a saved map can be relabelled with a new vocabulary without images.
        """

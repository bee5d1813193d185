"""Label every voxel of a map with a vocabulary: best class and its confidence.

The vocabulary is a named one (``scannet20``, ``scannet200``, or a vocabulary file) or an
explicit list of class names; names are embedded with the configured prompt-template ensemble.
Scores come from :class:`~diff2scene.query.ensemble.EnsembleScorer` chunk by chunk, so a
200-class vocabulary over a million voxels never holds the (M, C) matrix. Voxels whose best
score is below ``min_confidence`` are labelled -1 (unknown): the ensemble's evidence prior makes
weakly observed voxels land there instead of getting a confident guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError
from diff2scene.query.ensemble import Branch, EnsembleScorer
from diff2scene.segmentation.base import TextEncoder, Vocabulary
from diff2scene.segmentation.vocabularies import build_vocabulary, get_vocabulary_names


class MaskClassifier(Protocol):
    """What labelling and queries need of a segmenter: ``Segmenter2D.classify``."""

    def classify(
        self, embeddings: dict[str, NDArray[np.float32]], vocabulary: Vocabulary
    ) -> NDArray[np.float32]: ...


@dataclass
class LabellingConfig:
    """Which vocabulary labels the map, with which prompts."""

    #: Named vocabulary or vocabulary file; ignored when ``classes`` is given.
    vocabulary: str = "scannet20"
    #: Explicit class names (overrides ``vocabulary``).
    classes: tuple[str, ...] = ()
    #: Prompt templates, each with one ``{}``; None = the encoder's ensemble.
    templates: tuple[str, ...] | None = None
    #: Classes of the 2D head's training labels (fused with α instead of β).
    seen_classes: tuple[str, ...] = ()
    #: Voxels whose best score is below this get label -1 (unknown).
    min_confidence: float = 0.1
    #: Scoring branch.
    branch: Branch = "ensemble"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")

    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes else get_vocabulary_names(self.vocabulary)


@dataclass
class Labelling:
    """Per-voxel labels of one vocabulary."""

    names: list[str]
    #: (M,) int32 index into ``names``, -1 = unknown.
    labels: NDArray[np.int32]
    #: (M,) float32 score of the chosen class.
    confidence: NDArray[np.float32]


def label_map(
    scorer: EnsembleScorer,
    bank_embeddings: Mapping[str, NDArray[np.float32]],
    encoder: TextEncoder,
    classifier: MaskClassifier,
    config: LabellingConfig | None = None,
) -> Labelling:
    """Labels and confidences for every voxel of the map behind ``scorer``."""
    cfg = config or LabellingConfig()
    names = cfg.class_names()
    vocab = build_vocabulary(names, encoder, seen=cfg.seen_classes, templates=cfg.templates)
    if scorer.num_masks == 0:
        m = scorer.num_voxels
        return Labelling(vocab.names, np.full(m, -1, np.int32), np.zeros(m, np.float32))
    probs = classifier.classify({s: np.asarray(e) for s, e in bank_embeddings.items()}, vocab)
    if probs.shape != (scorer.num_masks, len(vocab)):
        raise InputError("classifier returned the wrong shape", f"{probs.shape}")
    labels, conf = scorer.label(np.ascontiguousarray(probs, dtype=np.float32), cfg.branch)
    labels[conf < cfg.min_confidence] = -1
    return Labelling(vocab.names, labels, conf)

"""Free-text queries over a semantic map: per-voxel scores, matching voxels, ranked instances.

A query phrase is classified together with a **background vocabulary** (ScanNet20 plus a few
stuff classes by default): the mask class probabilities ``p_i^q`` are a softmax over the query
and the background, so for an absent thing the masks give their probability to the background
and no voxel clears the threshold, instead of the least-bad voxels being returned. Background
names equal to a query phrase are left out so a class does not compete with itself.

Text goes through the shared :class:`~diff2scene.segmentation.base.TextEncoder` (its LRU cache
makes repeated phrases free); the background is embedded once when the engine is built.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import ConfigError, InputError
from diff2scene.query.ensemble import Branch, EnsembleConfig, EnsembleScorer
from diff2scene.query.grammar import ParsedQuery, parse_query
from diff2scene.query.instances import Instance, InstanceConfig, find_instances
from diff2scene.query.relations import RelationConfig, rerank
from diff2scene.segmentation.base import TextEncoder, Vocabulary
from diff2scene.segmentation.text import default_templates, ensemble_embeddings

#: Stuff classes every background has, so walls and floors do not answer object queries.
DEFAULT_BACKGROUND_EXTRA: tuple[str, ...] = ("wall", "floor", "ceiling", "object")


class MaskClassifier(Protocol):
    """What the engine needs of a segmenter: ``Segmenter2D.classify``."""

    def classify(
        self, embeddings: dict[str, NDArray[np.float32]], vocabulary: Vocabulary
    ) -> NDArray[np.float32]: ...


@dataclass
class QueryConfig:
    """Background, thresholds and limits of text queries."""

    #: Named vocabulary (``scannet20``, ``scannet200``) or file whose classes form the
    #: background the query competes with; "" for none.
    background_vocabulary: str = "scannet20"
    #: Extra background classes added to the vocabulary's.
    background_extra: tuple[str, ...] = DEFAULT_BACKGROUND_EXTRA
    #: Prompt templates for query and background phrases; None = the encoder's ensemble. One
    #: template by default: each template is a text-tower forward (~80-150 ms for ViT-L/14 on
    #: a CPU) and a cold query must answer within ~150 ms.
    templates: tuple[str, ...] | None = ("a photo of a {}.",)
    #: Default per-voxel score a voxel needs to match.
    score_threshold: float = 0.25
    #: Default number of instances returned.
    top_k: int = 10
    #: Longest accepted query, characters.
    max_query_chars: int = 200
    #: Scoring branch: "ensemble", or "salient"/"geometric" for ablations.
    branch: Branch = "ensemble"
    #: Grouping of matching voxels into instances.
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    #: Distances of the spatial relations.
    relations: RelationConfig = field(default_factory=RelationConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.top_k < 1 or self.max_query_chars < 1:
            raise ValueError("top_k and max_query_chars must be >= 1")


@dataclass
class QueryResult:
    """The answer to one query."""

    text: str
    parsed: ParsedQuery
    #: (M,) float32 per-voxel score of the target phrase.
    scores: NDArray[np.float32] = field(repr=False)
    #: (n,) int64 voxel indices whose score clears the threshold (before any relation).
    matched: NDArray[np.int64] = field(repr=False)
    #: Target instances, best first, at most top-k (re-ranked by the relation if any).
    instances: list[Instance]
    #: Anchor instances of a relation query (empty otherwise).
    anchor_instances: list[Instance] = field(default_factory=list)
    #: Wall time of the stages, milliseconds.
    timings_ms: dict[str, float] = field(default_factory=dict)


class QueryEngine:
    """Answers text queries over one map (arrays of a ``SemanticMap``; see :meth:`from_map`)."""

    def __init__(
        self,
        scorer: EnsembleScorer,
        *,
        coords: NDArray[np.int32],
        points_m: NDArray[np.float32],
        bank_embeddings: Mapping[str, NDArray[np.float32]],
        encoder: TextEncoder,
        classifier: MaskClassifier,
        config: QueryConfig | None = None,
    ) -> None:
        self.config = config or QueryConfig()
        if coords.shape != (scorer.num_voxels, 3) or points_m.shape != coords.shape:
            raise InputError("map arrays disagree", f"{coords.shape}, {points_m.shape}")
        self.scorer = scorer
        self.coords = coords
        self.points_m = points_m
        self.bank_embeddings = {
            s: np.asarray(e, dtype=np.float32) for s, e in bank_embeddings.items()
        }
        self.encoder = encoder
        self.classifier = classifier
        #: Viewpoint (3,) for left/right relations, e.g. the last camera position; None = +y.
        self.viewpoint_m: NDArray[np.float64] | None = None
        self._templates = (
            tuple(self.config.templates) if self.config.templates else default_templates(encoder)
        )
        names = list(self.config.background_extra)
        if self.config.background_vocabulary:
            from diff2scene.segmentation.vocabularies import get_vocabulary_names

            names = get_vocabulary_names(self.config.background_vocabulary) + names
        self.background_names = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
        self._background_emb = (
            ensemble_embeddings(encoder, self.background_names, self._templates)
            if self.background_names
            else np.zeros((0, encoder.dim), dtype=np.float32)
        )

    @classmethod
    def from_map(
        cls,
        semantic_map: object,
        encoder: TextEncoder,
        classifier: MaskClassifier,
        config: QueryConfig | None = None,
        *,
        ensemble: EnsembleConfig | None = None,
    ) -> QueryEngine:
        """Engine over a :class:`~diff2scene.mapping.SemanticMap` (builds the 3D index once)."""
        try:
            bank = semantic_map.mask_bank.embeddings  # type: ignore[attr-defined]
            scorer = EnsembleScorer.from_arrays(
                semantic_map.member_ids,  # type: ignore[attr-defined]
                semantic_map.member_weights,  # type: ignore[attr-defined]
                bank,
                semantic_map.features_3d,  # type: ignore[attr-defined]
                ensemble,
            )
            coords = semantic_map.coords  # type: ignore[attr-defined]
            points = semantic_map.points_m  # type: ignore[attr-defined]
        except AttributeError as exc:
            raise ConfigError(f"not a semantic map: {exc}") from exc
        return cls(
            scorer,
            coords=coords,
            points_m=points,
            bank_embeddings=bank,
            encoder=encoder,
            classifier=classifier,
            config=config,
        )

    @property
    def templates(self) -> tuple[str, ...]:
        """Prompt templates phrases are embedded with (evaluation labels with the same)."""
        return self._templates

    def phrase_scores(
        self, phrases: Sequence[str], branch: Branch | None = None
    ) -> NDArray[np.float32]:
        """(M, len(phrases)) per-voxel scores of phrases competing with the background."""
        wanted = set(phrases)
        keep = [i for i, n in enumerate(self.background_names) if n not in wanted]
        text = np.concatenate(
            [
                ensemble_embeddings(self.encoder, list(phrases), self._templates),
                self._background_emb[keep],
            ]
        )
        names = list(phrases) + [self.background_names[i] for i in keep]
        vocab = Vocabulary(
            names=names, text_embeddings=text, seen=np.zeros(len(names), dtype=np.bool_)
        )
        if self.scorer.num_masks == 0:
            return np.zeros((self.scorer.num_voxels, len(phrases)), dtype=np.float32)
        probs = self.classifier.classify(dict(self.bank_embeddings), vocab)[:, : len(phrases)]
        return self.scorer.scores(np.ascontiguousarray(probs), branch or self.config.branch)

    def query(
        self,
        text: str,
        score_threshold: float | None = None,
        top_k: int | None = None,
        *,
        branch: Branch | None = None,
    ) -> QueryResult:
        """Answer ``text``; raises :class:`InputError` for malformed queries or arguments."""
        t0 = time.perf_counter()
        threshold = (
            self.config.score_threshold if score_threshold is None else float(score_threshold)
        )
        k = self.config.top_k if top_k is None else int(top_k)
        if not 0.0 <= threshold <= 1.0 or not np.isfinite(threshold):
            raise InputError("score_threshold must be in [0, 1]", str(score_threshold))
        if k < 1:
            raise InputError("top_k must be >= 1", str(top_k))
        parsed = parse_query(text, max_chars=self.config.max_query_chars)
        phrases = [parsed.target]
        if parsed.anchor is not None and parsed.anchor != parsed.target:
            phrases.append(parsed.anchor)
        t1 = time.perf_counter()
        scores = self.phrase_scores(phrases, branch)
        t2 = time.perf_counter()
        cfg = self.config.instances

        def instances_of(label: str, column: int) -> tuple[NDArray[np.float32], list[Instance]]:
            col_scores = np.ascontiguousarray(scores[:, column])
            hits = np.flatnonzero(col_scores >= threshold).astype(np.int64)
            found = find_instances(
                label, hits, col_scores, coords=self.coords, points_m=self.points_m, config=cfg
            )
            return col_scores, found

        target_scores, targets = instances_of(parsed.target, 0)
        matched = np.flatnonzero(target_scores >= threshold).astype(np.int64)
        anchors: list[Instance] = []
        if parsed.relation is not None and parsed.anchor is not None:
            _, anchors = instances_of(parsed.anchor, 0 if parsed.anchor == parsed.target else 1)
            targets = rerank(
                parsed.relation, targets, anchors, self.config.relations, self.viewpoint_m
            )
        t3 = time.perf_counter()
        return QueryResult(
            text=text,
            parsed=parsed,
            scores=target_scores,
            matched=matched,
            instances=targets[:k],
            anchor_instances=anchors,
            timings_ms={
                "parse": 1e3 * (t1 - t0),
                "score": 1e3 * (t2 - t1),
                "instances": 1e3 * (t3 - t2),
                "total": 1e3 * (t3 - t0),
            },
        )

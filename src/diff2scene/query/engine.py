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

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.mapping.snapshot import MapSnapshot
from diff2scene.query.ensemble import Branch, EnsembleConfig, EnsembleScorer, GeometricIndex
from diff2scene.query.grammar import ParsedQuery, parse_query
from diff2scene.query.instances import (
    Instance,
    InstanceConfig,
    find_instances,
    prune_instances,
)
from diff2scene.query.labelling import Labelling, LabellingConfig, MaskClassifier, label_map
from diff2scene.query.relations import RelationConfig, rerank
from diff2scene.segmentation.base import TextEncoder, Vocabulary
from diff2scene.segmentation.text import default_templates, ensemble_embeddings

#: Stuff classes every background has, so walls and floors do not answer object queries.
DEFAULT_BACKGROUND_EXTRA: tuple[str, ...] = ("wall", "floor", "ceiling", "object")


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
    #: Target instances, largest mass first (nearest first for "closest to"), at most top-k,
    #: fragments pruned; filtered and re-scored by the relation if any.
    instances: list[Instance]
    #: Anchor instances of a relation query (empty otherwise).
    anchor_instances: list[Instance] = field(default_factory=list)
    #: Wall time of the stages, milliseconds.
    timings_ms: dict[str, float] = field(default_factory=dict)


class QueryEngine:
    """Answers text queries over one frozen :class:`~diff2scene.mapping.snapshot.MapSnapshot`.

    Nothing per request is stored on the engine (the viewpoint of a relation is an argument of
    :meth:`query`), so one engine serves concurrent queries from several threads.
    """

    def __init__(
        self,
        snapshot: MapSnapshot,
        scorer: EnsembleScorer,
        *,
        encoder: TextEncoder,
        classifier: MaskClassifier,
        config: QueryConfig | None = None,
    ) -> None:
        self.config = config or QueryConfig()
        if scorer.num_voxels != snapshot.num_voxels or scorer.num_masks != snapshot.num_masks:
            raise InputError(
                "scorer_snapshot_mismatch",
                f"scorer has {scorer.num_voxels} voxels / {scorer.num_masks} masks, snapshot "
                f"{snapshot.num_voxels} / {snapshot.num_masks}",
            )
        self.snapshot = snapshot
        self.scorer = scorer
        self.encoder = encoder
        self.classifier = classifier
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
    def from_snapshot(
        cls,
        snapshot: MapSnapshot,
        encoder: TextEncoder,
        classifier: MaskClassifier,
        config: QueryConfig | None = None,
        *,
        ensemble: EnsembleConfig | None = None,
        geometric: GeometricIndex | None = None,
    ) -> QueryEngine:
        """Engine over a snapshot; the geometric index is built unless an up-to-date one is
        given (a :class:`~diff2scene.query.session.QuerySession` keeps one incrementally)."""
        ids, weights = snapshot.membership_blocks()
        scorer = EnsembleScorer.from_arrays(
            ids,
            weights,
            snapshot.bank_embeddings,
            snapshot.features_3d,
            ensemble,
            geometric=geometric,
        )
        return cls(snapshot, scorer, encoder=encoder, classifier=classifier, config=config)

    @classmethod
    def from_map(
        cls,
        semantic_map: SemanticMap,
        encoder: TextEncoder,
        classifier: MaskClassifier,
        config: QueryConfig | None = None,
        *,
        ensemble: EnsembleConfig | None = None,
    ) -> QueryEngine:
        """Engine over the map as it is now (a snapshot; the map may go on changing)."""
        return cls.from_snapshot(
            semantic_map.snapshot(), encoder, classifier, config, ensemble=ensemble
        )

    @property
    def map_version(self) -> int:
        """Version of the map state the engine answers from."""
        return self.snapshot.version

    @property
    def coords(self) -> NDArray[np.int32]:
        """(M, 3) int32 voxel coordinates of the snapshot."""
        return self.snapshot.coords

    @property
    def points_m(self) -> NDArray[np.float32]:
        """(M, 3) float32 voxel centres of the snapshot, metres."""
        return self.snapshot.points_m

    @property
    def bank_embeddings(self) -> Mapping[str, NDArray[np.float32]]:
        """Space → (K, D) float32 mask embeddings of the snapshot."""
        return self.snapshot.bank_embeddings

    def label(self, config: LabellingConfig | None = None) -> Labelling:
        """Every voxel of the snapshot labelled with a vocabulary (see :func:`label_map`)."""
        return label_map(
            self.scorer, self.bank_embeddings, self.encoder, self.classifier, config
        )

    @property
    def templates(self) -> tuple[str, ...]:
        """Prompt templates phrases are embedded with (evaluation labels with the same)."""
        return self._templates

    def phrase_scores(
        self,
        phrases: Sequence[str],
        branch: Branch | None = None,
        *,
        timings_ms: dict[str, float] | None = None,
    ) -> NDArray[np.float32]:
        """(M, len(phrases)) per-voxel scores of phrases competing with the background.

        ``timings_ms``, if given, receives the wall time of text encoding ("text"), mask
        classification ("classify") and the two branches over all voxels ("score").
        """
        t0 = time.perf_counter()
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
        t1 = time.perf_counter()
        if self.scorer.num_masks == 0:
            return np.zeros((self.scorer.num_voxels, len(phrases)), dtype=np.float32)
        probs = self.classifier.classify(dict(self.bank_embeddings), vocab)[:, : len(phrases)]
        t2 = time.perf_counter()
        out = self.scorer.scores(np.ascontiguousarray(probs), branch or self.config.branch)
        if timings_ms is not None:
            timings_ms["text"] = 1e3 * (t1 - t0)
            timings_ms["classify"] = 1e3 * (t2 - t1)
            timings_ms["score"] = 1e3 * (time.perf_counter() - t2)
        return out

    def query(
        self,
        text: str,
        score_threshold: float | None = None,
        top_k: int | None = None,
        *,
        branch: Branch | None = None,
        viewpoint_m: NDArray[np.floating] | None = None,
    ) -> QueryResult:
        """Answer ``text``; raises :class:`InputError` for malformed queries or arguments.

        ``viewpoint_m`` (3,) is where left/right relations are seen from (e.g. the latest camera
        position); None = looking along +y.
        """
        t0 = time.perf_counter()
        threshold = (
            self.config.score_threshold if score_threshold is None else float(score_threshold)
        )
        k = self.config.top_k if top_k is None else int(top_k)
        if not 0.0 <= threshold <= 1.0 or not np.isfinite(threshold):
            raise InputError("score_threshold must be in [0, 1]", str(score_threshold))
        if k < 1:
            raise InputError("top_k must be >= 1", str(top_k))
        viewpoint = None
        if viewpoint_m is not None:
            viewpoint = np.asarray(viewpoint_m, dtype=np.float64)
            if viewpoint.shape != (3,) or not np.all(np.isfinite(viewpoint)):
                raise InputError("viewpoint_m must be 3 finite numbers", str(viewpoint_m))
        parsed = parse_query(text, max_chars=self.config.max_query_chars)
        phrases = [parsed.target]
        if parsed.anchor is not None and parsed.anchor != parsed.target:
            phrases.append(parsed.anchor)
        t1 = time.perf_counter()
        stages: dict[str, float] = {}
        scores = self.phrase_scores(phrases, branch, timings_ms=stages)
        t2 = time.perf_counter()
        cfg = self.config.instances

        def instances_of(label: str, column: int) -> tuple[NDArray[np.float32], list[Instance]]:
            col_scores = np.ascontiguousarray(scores[:, column])
            hits = np.flatnonzero(col_scores >= threshold).astype(np.int64)
            found = find_instances(
                label, hits, col_scores, coords=self.coords, points_m=self.points_m,
                config=cfg, voxel_size_m=self.snapshot.voxel_size_m,
            )  # fmt: skip
            return col_scores, found

        target_scores, targets = instances_of(parsed.target, 0)
        matched = np.flatnonzero(target_scores >= threshold).astype(np.int64)
        anchors: list[Instance] = []
        if parsed.relation is not None and parsed.anchor is not None:
            _, anchors = instances_of(parsed.anchor, 0 if parsed.anchor == parsed.target else 1)
            anchors = prune_instances(anchors, cfg.min_relative_mass)
            # Every candidate is tested before fragments are pruned: the mug on the table may
            # be smaller than a mug elsewhere that does not answer the question.
            targets = rerank(
                parsed.relation, targets, anchors, self.config.relations, viewpoint,
                points_m=self.points_m,
            )  # fmt: skip
        targets = prune_instances(targets, cfg.min_relative_mass)
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
                **stages,
                "instances": 1e3 * (t3 - t2),
                "total": 1e3 * (t3 - t0),
            },
        )

"""Per-voxel class scores from the 2D masks (salient) and the 3D features (geometric).

The ensemble of the two branches: ``p^c(v) = λ Σ_i p_i^c B3d_i(v) + (1 − λ) Σ_i p_i^c B'3d_i(v)``.

**Normalisation.** Raw sums grow with the number of keyframes that saw a voxel, so each branch
is turned into a shrunk weighted average::

    S^c(v) = Σ_i p_i^c B_i(v) / (Σ_i B_i(v) + τ)

``τ`` (``evidence_prior``) is a pseudo-mass of "no object": a voxel in one weak mask reports a
low score instead of that mask's confident class, while a voxel in many masks approaches the
masks' average class probability. Rows of ``p_i`` sum to at most 1 (the rest is "no object"),
so every score is in [0, 1).

**Salient branch** (exact). The map keeps each voxel's top-k memberships; as a sparse (M, K)
matrix ``W`` the branch is ``W @ P / (W·1 + τ)``, O(M·k·C) instead of O(M·K·C).

**Geometric branch** (documented approximation). ``B'3d_i(v) = sigmoid(<F3d(v), f_i>)`` per
embedding space, fused across spaces like the 2D branch fuses probabilities,
``B' = B'_diff^(1−a) · B'_clip^a`` (``a`` = ``clip_weight``). The exact sum touches every mask
for every voxel (1M voxels × 10k masks × 1024 dims ≈ 10^13 FLOPs), so a
:class:`GeometricIndex` is built once per 3D update:

1. the mask bank is clustered (k-means on the concatenated embeddings) into ``num_prototypes``
   prototypes; masks seen in many keyframes of one object have near-identical embeddings, so a
   prototype's centroid stands in for its ``n_j`` members,
2. per voxel only the ``geometric_top_t`` prototypes with the largest mass ``n_j · B'_j(v)``
   are kept (the distillation drives ``B'`` to ~0 for masks that do not contain the voxel).

3. the mass of the prototypes left out, ``r(v) = Σ_{j∉top} n_j B'_j(v)``, is kept per voxel
   (it is computed anyway while ranking): a distilled network does not drive ``B'`` exactly to
   0, and ten thousand masks at sigmoid 0.1 would otherwise be dropped from the denominator.
   It counts as "no object" evidence: it stays in the denominator and gives no class mass.
   (Estimating its class mass with the bank's mean class probability ``p̄^c`` was tried and
   measured worse: the masks a voxel is *not* in are mostly walls and floors, so ``p̄`` pulled
   every weakly-fitted voxel towards the frequent classes — on a synthetic room with a briefly
   distilled network the geometric branch fell from 11.5 to 6.9 mIoU and dragged the ensemble
   below the 2D masks alone, 39.2 vs 41.8, where this rule gives 42.8.)

The branch then has the salient branch's sparse form with prototype class mass
``P'_j^c = Σ_{i∈j} p_i^c``::

    G^c(v) ≈ Σ_{j∈top} P'_j^c B'_j(v) / (Σ_{j∈top} n_j B'_j(v) + r(v) + τ)

a lower bound of the exact score that becomes exact as the network drives ``B'`` of masks
that do not contain the voxel to 0.

and queries cost O(M·t). With ``num_prototypes = 0`` every mask is its own prototype and only
the tail estimate remains approximate; with ``geometric_top_t ≥ K`` as well it is exact. The
test suite measures the error against :func:`exact_geometric_scores` on a small map (20
objects × 20 views, 40 prototypes, t = 8: mean absolute error 0.034, max 0.13, the same best
class for 97.7 % of voxels).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from diff2scene.errors import InputError

Branch = Literal["salient", "geometric", "ensemble"]
#: The three ways to score, for ablations (the paper's table).
BRANCHES: tuple[Branch, ...] = ("salient", "geometric", "ensemble")


@dataclass
class EnsembleConfig:
    """Weights of the two branches, normalisation, and the geometric index's approximation."""

    #: λ: weight of the salient (unprojected 2D masks) branch; 1 − λ goes to the 3D branch.
    salient_weight: float = 0.5
    #: τ: pseudo-mass of "no object" added to each voxel's membership mass (see module doc).
    evidence_prior: float = 0.5
    #: Exponent of the CLIP-space mask in the fused B'3d = B'_diff^(1−a) · B'_clip^a.
    clip_weight: float = 0.35
    #: Prototypes the mask bank is clustered into for the 3D branch; 0 = one per mask.
    num_prototypes: int = 512
    #: Prototypes kept per voxel in the 3D branch (largest n_j · B'_j).
    geometric_top_t: int = 8
    #: k-means iterations when clustering the bank.
    kmeans_iterations: int = 8
    #: Seed of the k-means initialisation.
    seed: int = 0
    #: Working-memory budget per chunk of voxels, in MiB (bounds every dense temporary).
    chunk_mib: int = 64
    #: A clustered geometric index follows new masks by assigning them to the existing
    #: prototypes; once the bank grew by this fraction since the last k-means fit, it is
    #: refitted (a full build, in the query session's background thread).
    geometric_refit_growth: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.salient_weight <= 1.0:
            raise ValueError(f"salient_weight must be in [0, 1], got {self.salient_weight}")
        if self.evidence_prior < 0.0:
            raise ValueError(f"evidence_prior must be >= 0, got {self.evidence_prior}")
        if not 0.0 <= self.clip_weight <= 1.0:
            raise ValueError(f"clip_weight must be in [0, 1], got {self.clip_weight}")
        if self.num_prototypes < 0 or self.geometric_top_t < 1 or self.kmeans_iterations < 0:
            raise ValueError("num_prototypes >= 0, geometric_top_t >= 1, kmeans_iterations >= 0")
        if self.chunk_mib < 1:
            raise ValueError(f"chunk_mib must be >= 1, got {self.chunk_mib}")
        if self.geometric_refit_growth <= 0.0:
            raise ValueError(
                f"geometric_refit_growth must be > 0, got {self.geometric_refit_growth}"
            )


#: Threads that score blocks of voxels at once (the compiled kernels release the GIL).
_POOL_THREADS = min(4, os.cpu_count() or 1)
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL  # noqa: PLW0603 - one pool per process, made on first use
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(_POOL_THREADS, thread_name_prefix="diff2scene_score")
        return _POOL


def _score_part(
    part: tuple[NDArray[np.int32], NDArray[np.float32], slice],
    *,
    column: NDArray[np.float32] | None,
    probs: NDArray[np.float32],
    tau: np.float32,
    factor: np.float32,
    chunk: NDArray[np.float32],
) -> None:
    """Add the salient scores of one block of voxels into its rows of ``chunk``."""
    ids, weights, at = part
    if column is not None:
        _salient_kernel_1(ids, weights, column, tau, factor, chunk[at, 0])
    else:
        _salient_kernel(ids, weights, probs, tau, factor, chunk[at])


_WARM = False


def _warm_kernels() -> None:
    """Load (or compile) the scoring kernels once per process, when the first engine is
    built (in the background for a node), so that the first query does not pay for it
    (measured: its score stage took 0.7 s instead of 0.25 s at 16M voxels)."""
    global _WARM  # noqa: PLW0603 - once per process
    if _WARM:
        return
    ids = np.zeros((1, 1), np.int32)
    weights = np.ones((1, 1), np.float32)
    one, probs = np.float32(1.0), np.ones((1, 2), np.float32)
    _salient_kernel_1(ids, weights, probs[:, 0].copy(), one, one, np.zeros(1, np.float32))
    _salient_kernel(ids, weights, probs, one, one, np.zeros((1, 2), np.float32))
    _WARM = True


def membership_matrix(
    member_ids: NDArray[np.int32], member_weights: NDArray[np.float32], num_masks: int
) -> sp.csr_matrix:
    """(M, K) sparse B3d from the map's top-k table; ids of -1 (empty slots) are dropped."""
    if member_ids.shape != member_weights.shape or member_ids.ndim != 2:
        raise InputError(
            "membership shape mismatch", f"ids {member_ids.shape}, weights {member_weights.shape}"
        )
    m = member_ids.shape[0]
    if m and int(member_ids.max(initial=-1)) >= num_masks:
        raise InputError("membership refers to a mask outside the bank", f"bank has {num_masks}")
    valid = (member_ids >= 0) & (member_weights > 0)
    counts = valid.sum(axis=1)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix(
        (member_weights[valid].astype(np.float32), member_ids[valid].astype(np.int32), indptr),
        shape=(m, num_masks),
    )


def _log_sigmoid(x: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = -np.logaddexp(np.float32(0.0), -x).astype(np.float32)
    return out


def fused_predicted_masks(
    features: Mapping[str, NDArray[np.floating]],
    embeddings: Mapping[str, NDArray[np.float32]],
    clip_weight: float,
) -> NDArray[np.float32]:
    """(m, K) fused B'3d of m voxels against K embeddings, over the spaces both sides have.

    Two spaces fuse geometrically with exponent ``clip_weight`` on the "clip" space; a single
    shared space is used alone.
    """
    spaces = sorted(set(features) & set(embeddings))
    if not spaces:
        raise InputError(
            "no shared embedding space", f"features {sorted(features)}, bank {sorted(embeddings)}"
        )
    if len(spaces) == 1:
        weights = {spaces[0]: 1.0}
    else:
        weights = {s: (clip_weight if s == "clip" else 1.0 - clip_weight) for s in spaces}
        total = sum(weights.values())
        weights = {s: w / total for s, w in weights.items()}
    log_b: NDArray[np.float32] | None = None
    for space in spaces:
        logits = features[space].astype(np.float32) @ embeddings[space].astype(np.float32).T
        term = np.float32(weights[space]) * _log_sigmoid(logits)
        log_b = term if log_b is None else log_b + term
    assert log_b is not None
    out: NDArray[np.float32] = np.exp(log_b)
    return out


def exact_geometric_scores(
    features: Mapping[str, NDArray[np.floating]],
    embeddings: Mapping[str, NDArray[np.float32]],
    mask_probs: NDArray[np.float32],
    *,
    clip_weight: float,
    evidence_prior: float,
) -> NDArray[np.float32]:
    """(M, C) reference geometric branch over every mask; O(M·K·D), for small maps and tests."""
    b = fused_predicted_masks(features, embeddings, clip_weight)
    out: NDArray[np.float32] = (b @ mask_probs) / (b.sum(axis=1, keepdims=True) + evidence_prior)
    return out.astype(np.float32)


def _kmeans(
    x: NDArray[np.float32], k: int, iterations: int, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Centroids (k, D) and assignment (N,) of Lloyd's k-means on the rows of ``x``."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(n, size=k, replace=False)].copy()
    assign = np.zeros(n, dtype=np.int32)
    sq = (x * x).sum(axis=1)
    for _ in range(iterations + 1):
        best_dist = np.full(n, np.inf, dtype=np.float32)
        # Chunk over points so the (N, k) distance matrix stays bounded.
        for lo in range(0, n, 4096):
            xs = x[lo : lo + 4096]
            d = sq[lo : lo + 4096, None] - 2.0 * xs @ centroids.T + (centroids**2).sum(axis=1)
            assign[lo : lo + 4096] = d.argmin(axis=1)
            best_dist[lo : lo + 4096] = d.min(axis=1)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        # Empty clusters take the worst-fitted points, so no prototype is wasted.
        empty = np.flatnonzero(~filled)
        if empty.size:
            worst = np.argsort(-best_dist)[: empty.size]
            centroids[empty[: worst.size]] = x[worst]
    return centroids.astype(np.float32), assign


#: Columns per space whose change marks a voxel's 3D features as changed (see
#: :meth:`GeometricIndex.update`): a network's output row that changes at all changes in
#: every column, so a few columns find the changed rows without reading all of them.
FINGERPRINT_COLUMNS = 8


def feature_fingerprint(
    features: Mapping[str, NDArray[np.floating]], spaces: list[str], rows: slice | None = None
) -> NDArray[np.float16]:
    """(M, F) float16 first :data:`FINGERPRINT_COLUMNS` columns of each space's features."""
    sl = rows if rows is not None else slice(None)
    parts = [np.asarray(features[s][sl, :FINGERPRINT_COLUMNS], dtype=np.float16) for s in spaces]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def _score_rows(
    features: Mapping[str, NDArray[np.floating]],
    spaces: list[str],
    rows: NDArray[np.int64],
    *,
    protos: Mapping[str, NDArray[np.float32]],
    counts: NDArray[np.float32],
    config: EnsembleConfig,
) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.float32]]:
    """Top-t prototypes (cols, B') and tail mass of the given voxel rows; chunked."""
    k_p = counts.shape[0]
    t = min(config.geometric_top_t, k_p)
    n = rows.shape[0]
    width = sum(int(features[s].shape[1]) for s in spaces)
    chunk = max(256, (config.chunk_mib << 20) // (4 * (k_p * 3 + width)))
    data = np.empty((n, t), dtype=np.float32)
    cols = np.empty((n, t), dtype=np.int32)
    tail = np.empty(n, dtype=np.float32)
    contiguous = n > 0 and int(rows[-1]) - int(rows[0]) == n - 1
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        if contiguous:
            sel: slice | NDArray[np.int64] = slice(int(rows[lo]), int(rows[hi - 1]) + 1)
        else:
            sel = rows[lo:hi]
        b = fused_predicted_masks({s: features[s][sel] for s in spaces}, protos, config.clip_weight)
        mass = b * counts
        if t < k_p:
            top = np.argpartition(-mass, t - 1, axis=1)[:, :t]
        else:
            top = np.broadcast_to(np.arange(k_p), (hi - lo, k_p))
        cols[lo:hi] = top
        data[lo:hi] = np.take_along_axis(b, top, axis=1)
        kept = np.take_along_axis(mass, top, axis=1).sum(axis=1)
        tail[lo:hi] = np.maximum(mass.sum(axis=1) - kept, 0.0)
    return cols, data, tail


@dataclass
class GeometricIndex:
    """Per-voxel top-t prototypes of the 3D branch (see module doc).

    ``cols``/``data`` are the (M, t) prototype numbers and fused B'3d of each voxel's kept
    prototypes (``weights`` is the same as a sparse (M, K') matrix), ``tail_mass`` (M,) the
    mass Σ n_j B'_j of the others, ``mask_prototype`` (K,) the prototype of each mask,
    ``prototype_counts`` (K',) n_j, ``prototypes`` the (K', D) centroids per space.

    :meth:`build` clusters the bank and scores every voxel; :meth:`update` follows a growing
    map without refitting (see there for what it approximates), and callers refit with
    :meth:`build` when :meth:`needs_refit` says the bank outgrew the fit.
    """

    cols: NDArray[np.int32]
    data: NDArray[np.float32]
    tail_mass: NDArray[np.float32]
    mask_prototype: NDArray[np.int32]
    prototype_counts: NDArray[np.float32]
    prototypes: dict[str, NDArray[np.float32]]
    #: (M, F) float16 feature fingerprint the rows were scored with (change detection).
    fingerprint: NDArray[np.float16]
    #: Masks the prototypes were fitted on (by k-means, or one per mask).
    fit_num_masks: int
    #: True when every mask is its own prototype (no clustering).
    per_mask: bool
    #: Mask bank size and voxel count the index is up to date with (staleness check).
    num_masks: int
    num_voxels: int

    @property
    def spaces(self) -> list[str]:
        return sorted(self.prototypes)

    @property
    def weights(self) -> sp.csr_matrix:
        """(M, K') sparse fused B'3d of the kept prototypes."""
        m, t = self.cols.shape
        indptr = np.arange(0, m * t + 1, t, dtype=np.int64) if t else np.zeros(m + 1, np.int64)
        return sp.csr_matrix(
            (self.data.reshape(-1), self.cols.reshape(-1), indptr),
            shape=(m, self.prototype_counts.shape[0]),
        )

    @classmethod
    def build(
        cls,
        features: Mapping[str, NDArray[np.floating]],
        embeddings: Mapping[str, NDArray[np.float32]],
        config: EnsembleConfig,
    ) -> GeometricIndex:
        """Cluster the bank and keep each voxel's top-t prototypes; chunked over voxels."""
        spaces = sorted(set(features) & set(embeddings))
        if not spaces:
            raise InputError("no shared embedding space between 3D features and the bank")
        num_masks = int(embeddings[spaces[0]].shape[0])
        num_voxels = int(features[spaces[0]].shape[0])
        fingerprint = feature_fingerprint(features, spaces)
        if num_masks == 0:
            return cls(
                np.zeros((num_voxels, 0), np.int32),
                np.zeros((num_voxels, 0), np.float32),
                np.zeros(num_voxels, dtype=np.float32),
                np.zeros(0, dtype=np.int32),
                np.zeros(0, dtype=np.float32),
                {s: np.zeros((0, embeddings[s].shape[1]), np.float32) for s in spaces},
                fingerprint,
                0,
                config.num_prototypes == 0,
                0,
                num_voxels,
            )
        per_mask = config.num_prototypes == 0 or config.num_prototypes >= num_masks
        if per_mask:
            protos = {s: np.array(embeddings[s], dtype=np.float32) for s in spaces}
            assign = np.arange(num_masks, dtype=np.int32)
        else:
            stacked = np.concatenate([embeddings[s] for s in spaces], axis=1).astype(np.float32)
            centroids, assign = _kmeans(
                stacked, config.num_prototypes, config.kmeans_iterations, config.seed
            )
            bounds = np.cumsum([0] + [embeddings[s].shape[1] for s in spaces])
            protos = {
                s: np.ascontiguousarray(centroids[:, bounds[j] : bounds[j + 1]])
                for j, s in enumerate(spaces)
            }
        counts = np.bincount(assign, minlength=protos[spaces[0]].shape[0]).astype(np.float32)
        cols, data, tail = _score_rows(
            features, spaces, np.arange(num_voxels, dtype=np.int64),
            protos=protos, counts=counts, config=config,
        )  # fmt: skip
        return cls(
            cols, data, tail, assign.astype(np.int32), counts, protos, fingerprint,
            num_masks, per_mask, num_masks, num_voxels,
        )  # fmt: skip

    def needs_refit(self, num_masks: int, config: EnsembleConfig) -> bool:
        """Whether the bank grew so much since the fit that :meth:`build` should run again."""
        if self.per_mask:
            # One prototype per mask stays exact under update() until clustering would start.
            return config.num_prototypes != 0 and num_masks > config.num_prototypes
        return num_masks > (1.0 + config.geometric_refit_growth) * max(self.fit_num_masks, 1)

    def update(
        self,
        features: Mapping[str, NDArray[np.floating]],
        embeddings: Mapping[str, NDArray[np.float32]],
        config: EnsembleConfig,
    ) -> GeometricIndex:
        """A new index for the grown map (this one is left as it is, for readers of it).

        * New voxels, and voxels whose features changed (found by their fingerprint), are
          scored against the prototypes: exact, given the prototypes.
        * Per-mask index: new masks become prototypes; every voxel scores them and the top-t
          is merged: exact.
        * Clustered index: new masks join their nearest prototype (no refit), so prototype
          class mass and counts stay exact, but the choice of each unchanged voxel's top-t is
          kept, and its tail mass grows by its mean tail B' times the new masks that went to
          prototypes outside its top-t. That estimate is bounded by refitting (``build``)
          once the bank grew by ``geometric_refit_growth`` (see :meth:`needs_refit`).
        """
        spaces = self.spaces
        if sorted(set(features) & set(embeddings)) != spaces:
            raise InputError("geometric index update", "embedding spaces changed; rebuild")
        m_new = int(features[spaces[0]].shape[0])
        k_new = int(embeddings[spaces[0]].shape[0])
        m_old, k_old = self.num_voxels, self.num_masks
        if m_new < m_old or k_new < k_old:
            raise InputError("geometric index update", "the map shrank; rebuild")
        if k_old == 0:  # nothing was fitted yet
            return GeometricIndex.build(features, embeddings, config)
        fp_new = feature_fingerprint(features, spaces)
        changed = np.flatnonzero(np.any(fp_new[:m_old] != self.fingerprint, axis=1))
        t_cfg = config.geometric_top_t
        new_emb = {s: np.asarray(embeddings[s][k_old:k_new], dtype=np.float32) for s in spaces}
        cols = self.cols
        data = self.data
        tail = self.tail_mass
        if self.per_mask:
            protos = {s: np.concatenate([self.prototypes[s], new_emb[s]]) for s in spaces}
            counts = np.ones(k_new, dtype=np.float32)
            assign = np.arange(k_new, dtype=np.int32)
            cols, data, tail = self._merge_new_prototypes(
                features, new_emb, k_old=k_old, m_old=m_old, config=config
            )
        else:
            protos = self.prototypes
            k_p = self.prototype_counts.shape[0]
            new_assign = _nearest_centroid(
                np.concatenate([new_emb[s] for s in spaces], axis=1),
                np.concatenate([protos[s] for s in spaces], axis=1),
            )
            delta = np.bincount(new_assign, minlength=k_p).astype(np.float32)
            counts = self.prototype_counts + delta
            assign = np.concatenate([self.mask_prototype, new_assign])
            if k_new > k_old and m_old:
                n_tail = k_old - self.prototype_counts[cols].sum(axis=1)
                mean_tail_b = np.where(n_tail > 0, tail / np.maximum(n_tail, 1.0), 0.0)
                new_in_tail = (k_new - k_old) - delta[cols].sum(axis=1)
                tail = (tail + mean_tail_b * new_in_tail).astype(np.float32)
        rescore = np.concatenate([changed, np.arange(m_old, m_new)]).astype(np.int64)
        if cols.shape[0] != m_new:
            t = cols.shape[1]
            cols = np.concatenate([cols, np.zeros((m_new - m_old, t), np.int32)])
            data = np.concatenate([data, np.zeros((m_new - m_old, t), np.float32)])
            tail = np.concatenate([tail, np.zeros(m_new - m_old, np.float32)])
        elif rescore.size:
            cols, data, tail = cols.copy(), data.copy(), tail.copy()
        if rescore.size and counts.size:
            c, d, r = _score_rows(
                features, spaces, rescore, protos=protos, counts=counts, config=config
            )
            if c.shape[1] != cols.shape[1]:  # t grew with the prototypes (small banks)
                width = min(t_cfg, counts.shape[0])
                cols = _pad_cols(cols, width, 0).astype(np.int32)
                data = _pad_cols(data, width, 0.0).astype(np.float32)
            cols[rescore], data[rescore], tail[rescore] = c, d, r
        return GeometricIndex(
            cols, data, tail.astype(np.float32), assign.astype(np.int32), counts, dict(protos),
            fp_new, self.fit_num_masks, self.per_mask, k_new, m_new,
        )  # fmt: skip

    def _merge_new_prototypes(
        self,
        features: Mapping[str, NDArray[np.floating]],
        new_emb: Mapping[str, NDArray[np.float32]],
        *,
        k_old: int,
        m_old: int,
        config: EnsembleConfig,
    ) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.float32]]:
        """Per-mask index: the old voxels' top-t merged with the new one-mask prototypes."""
        spaces = self.spaces
        k_add = next(iter(new_emb.values())).shape[0]
        if k_add == 0 or m_old == 0:
            return self.cols, self.data, self.tail_mass
        t = min(config.geometric_top_t, k_old + k_add)
        cols = np.empty((m_old, t), np.int32)
        data = np.empty((m_old, t), np.float32)
        tail = np.empty(m_old, np.float32)
        width = sum(int(features[s].shape[1]) for s in spaces)
        step = max(256, (config.chunk_mib << 20) // (4 * (3 * (k_add + t) + width)))
        for lo in range(0, m_old, step):
            hi = min(m_old, lo + step)
            b_new = fused_predicted_masks(
                {s: features[s][lo:hi] for s in spaces}, new_emb, config.clip_weight
            )
            # Per-mask prototypes all have n_j = 1: mass = B'.
            cand_b = np.concatenate([self.data[lo:hi], b_new], axis=1)
            cand_c = np.concatenate(
                [self.cols[lo:hi], np.broadcast_to(np.arange(k_old, k_old + k_add), b_new.shape)],
                axis=1,
            ).astype(np.int32)
            if t < cand_b.shape[1]:
                top = np.argpartition(-cand_b, t - 1, axis=1)[:, :t]
            else:
                top = np.broadcast_to(np.arange(cand_b.shape[1]), cand_b.shape)
            kept = np.take_along_axis(cand_b, top, axis=1)
            cols[lo:hi] = np.take_along_axis(cand_c, top, axis=1)
            data[lo:hi] = kept
            tail[lo:hi] = np.maximum(
                self.tail_mass[lo:hi] + cand_b.sum(axis=1) - kept.sum(axis=1), 0.0
            )
        return cols, data, tail

    def prototype_probs(self, mask_probs: NDArray[np.float32]) -> NDArray[np.float32]:
        """(K', C) class mass of each prototype, Σ over its masks of p_i^c."""
        k_p = self.prototype_counts.shape[0]
        out = np.empty((k_p, mask_probs.shape[1]), dtype=np.float32)
        for c in range(mask_probs.shape[1]):  # bincount: ~50x np.add.at for 10k masks
            out[:, c] = np.bincount(self.mask_prototype, weights=mask_probs[:, c], minlength=k_p)
        return out


#: Class probabilities below this are scored as 0. A softmax over many competing texts gives
#: classes far from a mask probabilities under float32's normal range (< 1.2e-38); x86 CPUs
#: multiply such subnormal numbers in microcode, and one of them in a query's (K, C) column
#: made the (M, K) sparse product ~20x slower (measured: 79 ms instead of 3.7 ms at 546k
#: voxels). What is dropped changes a score by less than this.
PROB_FLOOR = 1e-30


def _flush_tiny(probs: NDArray[np.float32]) -> NDArray[np.float32]:
    """``probs`` with entries below :data:`PROB_FLOOR` set to 0 (a copy only when needed)."""
    tiny = probs < PROB_FLOOR
    if not tiny.any():
        return probs
    out = probs.copy()
    out[tiny] = 0.0
    return out


def _nearest_centroid(x: NDArray[np.float32], centroids: NDArray[np.float32]) -> NDArray[np.int32]:
    """(N,) int32 nearest of the (k, D) centroids for each (N, D) row."""
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    d = (centroids**2).sum(axis=1)[None, :] - 2.0 * x.astype(np.float32) @ centroids.T
    out: NDArray[np.int32] = d.argmin(axis=1).astype(np.int32)
    return out


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _salient_kernel(  # noqa: PLR0917 - compiled kernels take positional arrays
    ids: NDArray[np.int32],
    weights: NDArray[np.float32],
    probs: NDArray[np.float32],
    tau: np.float32,
    factor: np.float32,
    out: NDArray[np.float32],
) -> None:  # pragma: no cover - compiled; tested through EnsembleScorer
    """``out[i] += factor * Σ_j w_ij p_(id_ij) / (Σ_j w_ij + τ)`` over voxel i's valid slots
    (id >= 0, w > 0): the salient branch straight from the top-k table, no sparse matrix (one
    pass over the table: as fast as a CSR product, without the CSR's ~70 bytes per voxel)."""
    k, num_classes = ids.shape[1], probs.shape[1]
    acc = np.zeros(num_classes, dtype=np.float32)
    for i in range(ids.shape[0]):
        mass = np.float32(0.0)
        acc[:] = 0
        for j in range(k):
            m = ids[i, j]
            w = weights[i, j]
            if m >= 0 and w > 0:
                mass += w
                for c in range(num_classes):
                    acc[c] += w * probs[m, c]
        if mass > 0:
            inv = np.float32(1.0) / (mass + tau)
            for c in range(num_classes):
                out[i, c] += factor * (acc[c] * inv)

@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _salient_kernel_1(  # noqa: PLR0917 - compiled kernels take positional arrays
    ids: NDArray[np.int32],
    weights: NDArray[np.float32],
    probs: NDArray[np.float32],
    tau: np.float32,
    factor: np.float32,
    out: NDArray[np.float32],
) -> None:  # pragma: no cover - compiled; tested through EnsembleScorer
    """:func:`_salient_kernel` for one class (a query's phrase): (K,) ``probs``, (n,) ``out``
    (twice as fast as the general kernel on one column)."""
    k = ids.shape[1]
    for i in range(ids.shape[0]):
        mass = np.float32(0.0)
        num = np.float32(0.0)
        for j in range(k):
            m = ids[i, j]
            w = weights[i, j]
            if m >= 0 and w > 0:
                mass += w
                num += w * probs[m]
        if mass > 0:
            out[i] += factor * (num / (mass + tau))


def _pad_cols(arr: NDArray[np.generic], width: int, fill: float) -> NDArray[np.generic]:
    """``arr`` (M, w) widened to (M, width) with ``fill``."""
    if arr.shape[1] >= width:
        return arr
    pad = np.full((arr.shape[0], width - arr.shape[1]), fill, dtype=arr.dtype)
    return np.concatenate([arr, pad], axis=1)


def _scale_rows(matrix: sp.csr_matrix, factor: NDArray[np.floating]) -> sp.csr_matrix:
    """``diag(factor) @ matrix`` for a CSR matrix, float32."""
    counts = np.diff(matrix.indptr)
    data = matrix.data.astype(np.float32) * np.repeat(factor.astype(np.float32), counts)
    return sp.csr_matrix((data, matrix.indices, matrix.indptr), shape=matrix.shape)


def _rows_of(matrix: sp.csr_matrix, rows: slice) -> sp.csr_matrix:
    """Row block of a CSR matrix; the whole matrix without a copy when the block is all rows."""
    if rows.start == 0 and rows.stop == matrix.shape[0]:
        return matrix
    return matrix[rows]


class EnsembleScorer:
    """Chunked per-voxel class scores of one map for any (K, C) mask class probabilities.

    ``member_ids``/``member_weights`` are the map's (M, k) top-k memberships, whole or as
    consecutive row blocks (a snapshot's own blocks: nothing per voxel is copied, so an engine
    over a 10M-voxel map costs no memory beyond the map's). ``geometric`` is None when the map
    has no 3D features (the geometric branch is then unavailable and the ensemble falls back to
    the salient branch alone).
    """

    def __init__(
        self,
        member_ids: NDArray[np.int32] | Sequence[NDArray[np.int32]],
        member_weights: NDArray[np.float32] | Sequence[NDArray[np.float32]],
        num_masks: int,
        *,
        geometric: GeometricIndex | None = None,
        config: EnsembleConfig | None = None,
    ) -> None:
        self.config = config or EnsembleConfig()
        self.num_masks = int(num_masks)
        _warm_kernels()
        id_blocks = [member_ids] if isinstance(member_ids, np.ndarray) else list(member_ids)
        w_blocks = (
            [member_weights] if isinstance(member_weights, np.ndarray) else list(member_weights)
        )
        if len(id_blocks) != len(w_blocks):
            raise InputError("membership shape mismatch", "ids and weights in different blocks")
        self._blocks: list[tuple[NDArray[np.int32], NDArray[np.float32]]] = []
        for ids, weights in zip(id_blocks, w_blocks, strict=True):
            if ids.shape != weights.shape or ids.ndim != 2:
                raise InputError(
                    "membership shape mismatch", f"ids {ids.shape}, weights {weights.shape}"
                )
            if ids.shape[0] and int(ids.max(initial=-1)) >= self.num_masks:
                raise InputError(
                    "membership refers to a mask outside the bank", f"bank has {self.num_masks}"
                )
            ids32 = np.ascontiguousarray(ids, dtype=np.int32)
            self._blocks.append((ids32, np.ascontiguousarray(weights, dtype=np.float32)))
        #: First voxel of each block, and the total.
        sizes = [ids.shape[0] for ids, _ in self._blocks]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.geometric = geometric
        if geometric is not None and (
            geometric.num_voxels != self.num_voxels or geometric.num_masks != self.num_masks
        ):
            raise InputError(
                "stale geometric index",
                f"index for {geometric.num_voxels} voxels / {geometric.num_masks} masks, map has "
                f"{self.num_voxels} / {self.num_masks}",
            )
        tau = np.float32(self.config.evidence_prior)
        self._geo_mass: NDArray[np.float32] | None = None
        self._geo_scaled: sp.csr_matrix | None = None
        if geometric is not None:
            weights = geometric.weights
            kept = np.asarray(weights @ geometric.prototype_counts).ravel()
            self._geo_mass = (kept + geometric.tail_mass).astype(np.float32)
            self._geo_scaled = _scale_rows(weights, 1.0 / (self._geo_mass + tau))

    @property
    def salient(self) -> sp.csr_matrix:
        """(M, K) sparse B3d (empty slots dropped): the memberships as a matrix (O(M); for
        tools and tests, the scores do not use it)."""
        if not self._blocks:
            return sp.csr_matrix((0, self.num_masks), dtype=np.float32)
        ids = np.concatenate([i for i, _ in self._blocks])
        weights = np.concatenate([w for _, w in self._blocks])
        return membership_matrix(ids, weights, self.num_masks)

    @property
    def salient_mass(self) -> NDArray[np.float32]:
        """(M,) float32 Σ of each voxel's memberships B3d (its 2D evidence)."""
        out = np.zeros(self.num_voxels, np.float32)
        for (ids, weights), lo in zip(self._blocks, self._starts[:-1], strict=True):
            valid = (ids >= 0) & (weights > 0)
            out[lo : lo + ids.shape[0]] = np.where(valid, weights, np.float32(0)).sum(axis=1)
        return out

    @classmethod
    def from_arrays(
        cls,
        member_ids: NDArray[np.int32] | Sequence[NDArray[np.int32]],
        member_weights: NDArray[np.float32] | Sequence[NDArray[np.float32]],
        embeddings: Mapping[str, NDArray[np.float32]],
        features_3d: Mapping[str, NDArray[np.floating]],
        config: EnsembleConfig | None = None,
        *,
        geometric: GeometricIndex | None = None,
    ) -> EnsembleScorer:
        """Scorer over a map's arrays; builds the geometric index when 3D features exist
        (unless ``geometric``, an index already up to date with these arrays, is given)."""
        cfg = config or EnsembleConfig()
        num_masks = int(next(iter(embeddings.values())).shape[0]) if embeddings else 0
        geo = geometric
        if geo is None and features_3d and set(features_3d) & set(embeddings):
            geo = GeometricIndex.build(features_3d, embeddings, cfg)
        return cls(member_ids, member_weights, num_masks, geometric=geo, config=cfg)

    @property
    def num_voxels(self) -> int:
        return int(self._starts[-1])

    @property
    def has_geometric(self) -> bool:
        return self.geometric is not None

    def _check(self, mask_probs: NDArray[np.float32], branch: Branch) -> None:
        if branch not in BRANCHES:
            raise InputError("unknown branch", f"{branch!r} not in {BRANCHES}")
        if mask_probs.ndim != 2 or mask_probs.shape[0] != self.num_masks:
            raise InputError(
                "mask class probabilities must be (K, C)",
                f"K={self.num_masks}, got {mask_probs.shape}",
            )
        if branch == "geometric" and self.geometric is None:
            raise InputError("geometric branch unavailable", "the map has no 3D features")

    def chunk_rows(self, num_classes: int) -> int:
        """Voxels per chunk so a few (rows, C) float32 temporaries fit ``chunk_mib``."""
        return max(256, (self.config.chunk_mib << 20) // (16 * max(1, num_classes)))

    def iter_scores(
        self,
        mask_probs: NDArray[np.float32],
        branch: Branch = "ensemble",
        *,
        into: NDArray[np.float32] | None = None,
    ) -> Iterator[tuple[slice, NDArray[np.float32]]]:
        """Yield (voxel slice, (rows, C) float32 scores) chunk by chunk; ``into`` (M, C), when
        given, receives the chunks in place (the yielded arrays are its rows)."""
        self._check(mask_probs, branch)
        probs = _flush_tiny(np.ascontiguousarray(mask_probs, dtype=np.float32))
        lam = self.config.salient_weight if self.geometric is not None else 1.0
        proto = None if self.geometric is None else self.geometric.prototype_probs(probs)
        tau = np.float32(self.config.evidence_prior)
        step = self.chunk_rows(probs.shape[1])
        column = np.ascontiguousarray(probs[:, 0]) if probs.shape[1] == 1 else None
        for lo in range(0, self.num_voxels, step):
            rows = slice(lo, min(self.num_voxels, lo + step))
            if into is None:
                out = np.zeros((rows.stop - lo, probs.shape[1]), dtype=np.float32)
            else:
                out = into[rows]
                out[:] = 0
            if branch != "geometric" and lam > 0.0:
                salient = functools.partial(
                    _score_part, column=column, probs=probs, tau=tau,
                    factor=np.float32(1.0 if branch == "salient" else lam), chunk=out,
                )  # fmt: skip
                # The kernel releases the interpreter lock: blocks are scored on every core.
                parts = list(self._block_rows(rows))
                if len(parts) > 1 and _POOL_THREADS > 1:
                    list(_pool().map(salient, parts))
                else:
                    for part in parts:
                        salient(part)
            if branch != "salient" and self.geometric is not None and proto is not None:
                assert self._geo_scaled is not None
                g = _rows_of(self._geo_scaled, rows) @ proto
                out += np.float32(1.0 if branch == "geometric" else 1.0 - lam) * g
            yield rows, out

    def _block_rows(
        self, rows: slice
    ) -> Iterator[tuple[NDArray[np.int32], NDArray[np.float32], slice]]:
        """The membership rows of voxels ``rows``, block by block: (ids, weights, where they
        go in a chunk that starts at ``rows.start``)."""
        first = int(np.searchsorted(self._starts, rows.start, side="right")) - 1
        for b in range(max(first, 0), len(self._blocks)):
            lo = int(self._starts[b])
            if lo >= rows.stop:
                break
            ids, weights = self._blocks[b]
            a, z = max(rows.start, lo), min(rows.stop, lo + ids.shape[0])
            if z > a:
                yield ids[a - lo : z - lo], weights[a - lo : z - lo], slice(
                    a - rows.start, z - rows.start
                )

    def scores(
        self, mask_probs: NDArray[np.float32], branch: Branch = "ensemble"
    ) -> NDArray[np.float32]:
        """(M, C) float32 scores; for small C (queries). Use :meth:`iter_scores` for big C."""
        out = np.empty((self.num_voxels, mask_probs.shape[1]), dtype=np.float32)
        for _ in self.iter_scores(mask_probs, branch, into=out):
            pass
        return out

    def label(
        self, mask_probs: NDArray[np.float32], branch: Branch = "ensemble"
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """(M,) int32 best class and (M,) float32 its score, never holding (M, C) at once."""
        labels = np.empty(self.num_voxels, dtype=np.int32)
        conf = np.empty(self.num_voxels, dtype=np.float32)
        for rows, chunk in self.iter_scores(mask_probs, branch):
            if chunk.shape[1] == 0:
                labels[rows] = -1
                conf[rows] = 0.0
                continue
            best = chunk.argmax(axis=1)
            labels[rows] = best
            conf[rows] = np.take_along_axis(chunk, best[:, None], axis=1)[:, 0]
        return labels, conf

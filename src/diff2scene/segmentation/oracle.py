"""Oracle-noise 2D segmenter: ground-truth masks degraded in known, configurable ways.

Without real diffusion/CLIP weights we cannot measure the 2D model, but we can measure
everything after it (the synthetic benchmark). This segmenter reads a synthetic frame's
ground-truth instance image and answers through the same :class:`Segmenter2D` interface as
the diffusion model, so mapping, distillation and queries cannot tell them apart. Each kind of
2D error is a knob, so a benchmark can ask how the 3D map degrades with it:

* boundary error — each mask eroded or dilated by a random radius, then given soft edges;
* missed masks, merged neighbouring instances, spurious blobs;
* label confusion between similar classes (desk ↔ table, ...);
* embedding noise.

Embeddings come from the text encoder used for queries: the ``clip`` space holds the text
embedding of the instance's colour and (possibly confused) class name, "<colour> <class>" (just
"<class>" when no colour is known); the ``diffusion`` space holds a fixed, seeded random
projection of it to 256-d (or the text width when that is smaller). The projection matrix has
orthonormal columns — when the text width is ≤ 256 it is a pure rotation and preserves all
cosines; when it is larger it keeps a random 256-d subspace, so cosines differ from the CLIP
space a little, as two learned spaces would. :meth:`OracleSegmenter.classify` projects the
vocabulary the same way, scores both spaces and fuses them as ODISE does.

Everything random is drawn from a generator seeded by ``(seed, frame.index)``: the same frame
always gives the same masks, whatever order frames are processed in.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from diff2scene.errors import InputError
from diff2scene.segmentation.base import Segmenter2D, TextEncoder, Vocabulary
from diff2scene.segmentation.fusion import fuse_logits
from diff2scene.segmentation.text import default_templates, ensemble_embeddings
from diff2scene.types import SPACE_CLIP, SPACE_DIFFUSION, SPACE_DIMS, Frame, MaskSet

#: Pairs of classes a 2D model plausibly confuses; made symmetric when the config is built.
DEFAULT_SIMILAR_CLASSES: dict[str, list[str]] = {
    "desk": ["table"],
    "coffee table": ["table", "end table"],
    "sofa": ["chair", "couch"],
    "couch": ["armchair"],
    "office chair": ["chair"],
    "monitor": ["tv"],
    "cabinet": ["bookshelf", "kitchen cabinet"],
    "shelf": ["bookshelf"],
    "pillow": ["cushion"],
    "nightstand": ["dresser"],
    "trash can": ["trash bin"],
    "curtain": ["blinds"],
}

# Seed offset of the projection, so it never coincides with a per-frame noise stream.
_PROJECTION_SEED_SALT = 0x0D1FF2


@dataclass
class OracleConfig:
    """How the oracle degrades ground truth.

    The defaults are the *typical* preset, the noise every benchmark, the demo and the live
    tests use wherever the oracle stands in for a 2D model: boundaries off by up to 2 px and
    soft over 2 px, instances under 64 px missed, 10 % of instances missed, 10 % of touching
    pairs merged, a spurious blob in 20 % of frames, 10 % of labels swapped with a similar
    class, embedding noise 0.3. :meth:`exact` gives the ground truth undegraded, only when
    asked for (tests of the mechanics).
    """

    #: Largest boundary erosion (negative) / dilation (positive) radius in pixels; each mask
    #: draws an integer radius uniformly from [-boundary_px, boundary_px].
    boundary_px: int = 2
    #: Width in pixels of the linear probability ramp across each mask edge (0 = hard masks).
    edge_softness_px: float = 2.0
    #: Instances smaller than this many pixels are never emitted (a real model misses them).
    min_area_px: int = 64
    #: Probability that an instance (or merged group) produces no mask.
    miss_prob: float = 0.1
    #: Probability that two touching instances are emitted as one mask (labelled like the
    #: larger one), drawn independently for each touching pair.
    merge_prob: float = 0.1
    #: Per-frame chance of each of ``max_spurious`` spurious blob masks appearing.
    spurious_prob: float = 0.2
    #: Most spurious masks one frame can get.
    max_spurious: int = 1
    #: Radius range of spurious elliptical blobs, as fractions of the image's shorter side.
    spurious_radius_frac: tuple[float, float] = (0.03, 0.12)
    #: Probability that a mask's class is swapped for a similar one from ``similar_classes``.
    confusion_prob: float = 0.1
    #: Class → classes it may be confused with (symmetrised: each pair works both ways). A
    #: table given in a config file replaces the default one.
    similar_classes: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_SIMILAR_CLASSES.items()},
        metadata={"ros_parameter": False},  # a mapping: set it in a YAML config, not a param
    )
    #: Norm of the Gaussian noise added to each unit embedding before renormalising, per space
    #: (independent of the width: 0.3 gives a cosine of about 0.96 to the clean embedding).
    embedding_noise: float = 0.3
    #: Width of the ``diffusion`` space (capped at the text encoder's width).
    diffusion_dim: int = SPACE_DIMS[SPACE_DIFFUSION]
    #: Seed of the fixed text → diffusion-space projection.
    projection_seed: int = 0
    #: Seed of every per-frame random draw (combined with ``frame.index``).
    seed: int = 0
    #: Softmax temperature of cosine similarities in both spaces (logit = cos / temperature).
    temperature: float = 0.01
    #: Cosine similarity at which a mask is as likely "no object" as the best class.
    no_object_similarity: float = 0.5
    #: CLIP exponent of the geometric-mean fusion for classes seen in training (ODISE α).
    alpha_seen: float = 0.35
    #: CLIP exponent for novel classes (ODISE β).
    beta_novel: float = 0.65

    @classmethod
    def exact(cls, **overrides: Any) -> OracleConfig:
        """The ground truth undegraded (every noise at zero), with ``overrides`` applied."""
        zero: dict[str, Any] = {
            "boundary_px": 0, "edge_softness_px": 0.0, "min_area_px": 1, "miss_prob": 0.0,
            "merge_prob": 0.0, "spurious_prob": 0.0, "confusion_prob": 0.0,
            "embedding_noise": 0.0,
        }
        return cls(**{**zero, **overrides})

    def __post_init__(self) -> None:
        for name in ("miss_prob", "merge_prob", "spurious_prob", "confusion_prob",
                     "alpha_seen", "beta_novel"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.boundary_px < 0 or self.edge_softness_px < 0 or self.embedding_noise < 0:
            raise ValueError("boundary_px, edge_softness_px and embedding_noise must be >= 0")
        if self.min_area_px < 1 or self.max_spurious < 0 or self.diffusion_dim < 1:
            raise ValueError("min_area_px and diffusion_dim must be >= 1, max_spurious >= 0")
        lo, hi = self.spurious_radius_frac
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"spurious_radius_frac must satisfy 0 < lo <= hi <= 1, got {lo, hi}")
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        symmetric: dict[str, list[str]] = {}
        for a, others in self.similar_classes.items():
            for b in others:
                if a == b:
                    continue
                for x, y in ((a, b), (b, a)):
                    if y not in symmetric.setdefault(x, []):
                        symmetric[x].append(y)
        self.similar_classes = {k: sorted(v) for k, v in sorted(symmetric.items())}


@dataclass(frozen=True)
class MaskProvenance:
    """Where one emitted mask came from (ground truth for evaluating the benchmark itself)."""

    #: Ground-truth instance ids the mask covers (empty for a spurious mask).
    instance_ids: tuple[int, ...]
    #: Class of the (largest) source instance, or None for a spurious mask.
    true_class: str | None
    #: Class whose text embedding the mask carries (differs from ``true_class`` if confused).
    emitted_class: str
    #: Boundary radius applied, pixels (negative = eroded).
    boundary_px: int
    #: Colour word embedded with the class ("<colour> <class>"), or None when none is known.
    colour: str | None = None

    @property
    def emitted_text(self) -> str:
        """The text whose embedding the mask carries."""
        return f"{self.colour} {self.emitted_class}" if self.colour else self.emitted_class


@dataclass
class OracleStats:
    """Counters since construction; a benchmark reports them next to its metrics."""

    frames: int = 0
    instances: int = 0
    too_small: int = 0
    missed: int = 0
    merged: int = 0
    eroded_away: int = 0
    confused: int = 0
    spurious: int = 0
    #: Instance ids in a frame that the class table does not know (skipped).
    unknown_instances: int = 0


class OracleSegmenter(Segmenter2D):
    """Ground-truth instance masks + "<colour> <class>" text embeddings, degraded per
    :class:`OracleConfig`.

    ``instance_classes`` maps the synthetic scene's instance ids to class names (the
    ground truth's instance → class table); ``instance_colours`` maps them to colour words
    (instances without one are embedded by class name alone).
    """

    def __init__(
        self,
        instance_classes: Mapping[int, str],
        encoder: TextEncoder,
        config: OracleConfig | None = None,
        *,
        instance_colours: Mapping[int, str] | None = None,
    ) -> None:
        self.config = config or OracleConfig()
        self._encoder = encoder
        self._lock = threading.Lock()
        self._class_embeddings: dict[str, NDArray[np.float32]] = {}
        #: space → (address/shape key, source bank, its unit rows): see :meth:`_normalised`.
        self._unit_rows: dict[str, tuple[Any, NDArray[np.float32], NDArray[np.float32]]] = {}
        self._cache_lock = threading.Lock()
        self.stats = OracleStats()
        self._instance_classes: dict[int, str] = {}
        self._instance_colours: dict[int, str] = {}
        self.set_instance_classes(instance_classes, instance_colours)
        self._diff_dim = min(self.config.diffusion_dim, encoder.dim)
        # Orthonormal columns: QR of a seeded Gaussian (D_text, D_diff) matrix.
        proj_rng = np.random.default_rng([self.config.projection_seed, _PROJECTION_SEED_SALT])
        q, r = np.linalg.qr(proj_rng.standard_normal((encoder.dim, self._diff_dim)))
        # Fix QR's sign ambiguity so the matrix depends on the seed alone.
        self._projection = (q * np.sign(np.diag(r))[None, :]).astype(np.float32)

    def set_instance_classes(
        self,
        instance_classes: Mapping[int, str],
        instance_colours: Mapping[int, str] | None = None,
    ) -> None:
        """Replace the instance → class and colour tables (e.g. for the next synthetic scene)."""
        table = {int(k): str(v) for k, v in instance_classes.items()}
        colours = {int(k): str(v) for k, v in (instance_colours or {}).items() if str(v)}
        if any(k <= 0 for k in table):
            raise InputError("instance ids must be positive (0 means no instance)")
        unknown = sorted(set(colours) - set(table))
        if unknown:
            raise InputError("colours given for instances without a class", str(unknown[:5]))
        with self._lock:
            self._instance_classes = table
            self._instance_colours = colours

    @property
    def embedding_dims(self) -> dict[str, int]:
        return {SPACE_DIFFUSION: self._diff_dim, SPACE_CLIP: self._encoder.dim}

    @property
    def projection(self) -> NDArray[np.float32]:
        """(D_text, D_diff) float32 map from CLIP text space to the ``diffusion`` space."""
        return self._projection

    def segment(self, frame: Frame, vocabulary: Vocabulary | None = None) -> MaskSet:
        return self.segment_with_provenance(frame, vocabulary)[0]

    def segment_with_provenance(
        self, frame: Frame, vocabulary: Vocabulary | None = None
    ) -> tuple[MaskSet, list[MaskProvenance]]:
        """:meth:`segment` plus where each mask came from, in mask order."""
        ids = self._check_frame(frame)
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, frame.index % (1 << 63)])
        with self._lock:
            table = dict(self._instance_classes)
            colour_of = dict(self._instance_colours)
        stats = OracleStats(frames=1)

        values, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        # Bounding box of every id, so each mask is built from its box instead of the image.
        boxes = ndimage.find_objects(inverse.reshape(ids.shape) + 1)
        box_of = {v: boxes[j] for j, v in enumerate(values.tolist()) if v > 0}
        area_of = {v: c for v, c in zip(values.tolist(), counts.tolist(), strict=True) if v > 0}
        present = sorted(area_of)
        known = [i for i in present if i in table]
        stats.unknown_instances = len(present) - len(known)
        stats.instances = len(known)
        usable = [i for i in known if area_of[i] >= cfg.min_area_px]
        stats.too_small = len(known) - len(usable)

        groups = self._merge_groups(ids, usable, rng, stats)
        height, width = ids.shape
        masks: list[NDArray[np.float32]] = []
        provenance: list[MaskProvenance] = []
        for group in groups:
            if rng.random() < cfg.miss_prob:
                stats.missed += 1
                continue
            largest = max(group, key=lambda i: (area_of[i], -i))
            true_class = table[largest]
            emitted = self._maybe_confuse(true_class, rng, stats)
            radius = int(rng.integers(-cfg.boundary_px, cfg.boundary_px + 1))
            soft = degrade_mask(_group_mask(ids, group, box_of), radius, cfg.edge_softness_px)
            if soft is None:
                stats.eroded_away += 1
                continue
            masks.append(soft)
            provenance.append(
                MaskProvenance(tuple(group), true_class, emitted, radius, colour_of.get(largest))
            )

        classes = sorted(set(table.values()))
        palette = sorted(set(colour_of.values()))
        for _ in range(int(rng.binomial(cfg.max_spurious, cfg.spurious_prob))):
            blob = self._spurious_blob(height, width, rng)
            if blob is None or not classes:
                continue
            emitted = classes[int(rng.integers(len(classes)))]
            colour = palette[int(rng.integers(len(palette)))] if palette else None
            masks.append(blob)
            provenance.append(MaskProvenance((), None, emitted, 0, colour))
            stats.spurious += 1

        clean = self._embed_classes([p.emitted_text for p in provenance])
        clip = self._noisy(clean, rng)
        diffusion = self._noisy(clean @ self._projection, rng)
        mask_array = (
            np.stack(masks).astype(np.float32, copy=False)
            if masks
            else np.zeros((0, height, width), dtype=np.float32)
        )
        embeddings = {SPACE_DIFFUSION: diffusion, SPACE_CLIP: clip}
        result = MaskSet(masks=mask_array, embeddings=embeddings)
        if vocabulary is not None:
            result.class_probs = self.classify(embeddings, vocabulary)
        with self._lock:
            for name in vars(stats):
                setattr(self.stats, name, getattr(self.stats, name) + getattr(stats, name))
        return result, provenance

    def classify(
        self, embeddings: dict[str, NDArray[np.float32]], vocabulary: Vocabulary
    ) -> NDArray[np.float32]:
        """(N, C) fused class probabilities; rows sum to 1 − p(no object) ≤ 1."""
        dims = self.embedding_dims
        for space, dim in dims.items():
            emb = embeddings.get(space)
            if emb is None or emb.ndim != 2 or emb.shape[1] != dim:
                got = None if emb is None else emb.shape
                raise InputError(f"{space} embeddings must be (N, {dim})", f"got {got}")
        n = embeddings[SPACE_CLIP].shape[0]
        if embeddings[SPACE_DIFFUSION].shape[0] != n:
            raise InputError("embedding spaces disagree on the number of masks")
        if vocabulary.text_embeddings.shape[1] != self._encoder.dim:
            raise InputError(
                "vocabulary was embedded by a different text encoder",
                f"width {vocabulary.text_embeddings.shape[1]} != {self._encoder.dim}",
            )
        text = _normalise(vocabulary.text_embeddings.astype(np.float32))
        cfg = self.config
        return fuse_class_probabilities(
            diffusion_embeddings=self._normalised(SPACE_DIFFUSION, embeddings[SPACE_DIFFUSION]),
            diffusion_text=text @ self._projection,
            clip_embeddings=self._normalised(SPACE_CLIP, embeddings[SPACE_CLIP]),
            clip_text=text,
            seen=vocabulary.seen,
            logit_scale=1.0 / cfg.temperature,
            no_object_logit=cfg.no_object_similarity / cfg.temperature,
            alpha=cfg.alpha_seen,
            beta=cfg.beta_novel,
            embeddings_normalised=True,
        )

    def clear_cache(self) -> None:
        """Forget the normalised mask banks: the next classification pays the per-map cost a
        new map version pays (what a "cold" query is measured with)."""
        with self._cache_lock:
            self._unit_rows.clear()

    def _normalised(self, space: str, emb: NDArray[np.float32]) -> NDArray[np.float32]:
        """Unit rows of a mask bank, kept for the next call with the same array.

        A query classifies the whole bank (10k masks: the normalisation was half of a warm
        query), and consecutive queries pass the same frozen snapshot arrays. Banks are only
        ever appended to, so an array at the same address with the same shape holds the same
        rows.
        """
        key = (emb.__array_interface__["data"][0], emb.shape, emb.strides)
        with self._cache_lock:
            cached = self._unit_rows.get(space)
            if cached is not None and cached[0] == key:
                return cached[2]
        unit = _normalise(emb)
        with self._cache_lock:
            # the source is kept alive so that its address cannot be reused by another array
            self._unit_rows[space] = (key, emb, unit)
        return unit

    def _check_frame(self, frame: Frame) -> NDArray[np.int64]:
        if frame.instance_ids is None:
            raise InputError(
                "oracle segmenter needs ground truth", "frame.instance_ids is None"
            )
        ids = np.asarray(frame.instance_ids)
        if ids.shape != frame.rgb.shape[:2]:
            raise InputError(
                "instance image size mismatch", f"{ids.shape} vs rgb {frame.rgb.shape[:2]}"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise InputError("instance ids must be integers", f"got {ids.dtype}")
        return ids.astype(np.int64, copy=False)

    def _merge_groups(
        self,
        ids: NDArray[np.int64],
        usable: list[int],
        rng: np.random.Generator,
        stats: OracleStats,
    ) -> list[list[int]]:
        """Union-find over touching instance pairs, each merged with ``merge_prob``."""
        parent = {i: i for i in usable}
        if self.config.merge_prob > 0.0 and len(usable) > 1:
            pairs = _touching_pairs(ids)
            for a, b in pairs:
                if a not in parent or b not in parent:
                    continue
                if rng.random() >= self.config.merge_prob:
                    continue
                ra, rb = _find(parent, a), _find(parent, b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
                    stats.merged += 1
        groups: dict[int, list[int]] = {}
        for i in usable:
            groups.setdefault(_find(parent, i), []).append(i)
        return [sorted(g) for _, g in sorted(groups.items())]

    def _maybe_confuse(self, name: str, rng: np.random.Generator, stats: OracleStats) -> str:
        if self.config.confusion_prob <= 0.0 or rng.random() >= self.config.confusion_prob:
            return name
        options = self.config.similar_classes.get(name, [])
        if not options:
            return name
        stats.confused += 1
        return options[int(rng.integers(len(options)))]

    def _spurious_blob(
        self, height: int, width: int, rng: np.random.Generator
    ) -> NDArray[np.float32] | None:
        lo, hi = self.config.spurious_radius_frac
        short = min(height, width)
        ry, rx = (rng.uniform(lo, hi, size=2) * short).tolist()
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        yy, xx = np.ogrid[:height, :width]
        blob = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0
        if not blob.any():
            return None
        return degrade_mask(blob, 0, self.config.edge_softness_px)

    def _embed_classes(self, names: list[str]) -> NDArray[np.float32]:
        """(len(names), D_text) text embeddings, built once per text ("<colour> <class>")."""
        with self._lock:
            missing = sorted({n for n in names if n not in self._class_embeddings})
        if missing:
            fresh = ensemble_embeddings(
                self._encoder, missing, default_templates(self._encoder)
            )
            with self._lock:
                self._class_embeddings.update(zip(missing, fresh, strict=True))
        if not names:
            return np.zeros((0, self._encoder.dim), dtype=np.float32)
        with self._lock:
            return np.stack([self._class_embeddings[n] for n in names])

    def _noisy(self, emb: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
        """Unit rows plus isotropic noise of norm ≈ ``embedding_noise``, renormalised."""
        emb = _normalise(emb)
        sigma = self.config.embedding_noise
        if sigma > 0.0 and emb.size:
            noise = rng.standard_normal(emb.shape) * (sigma / np.sqrt(emb.shape[1]))
            emb = _normalise((emb + noise).astype(np.float32))
        return emb


def degrade_mask(
    mask: NDArray[np.bool_], radius_px: int, edge_softness_px: float = 0.0
) -> NDArray[np.float32] | None:
    """Erode (``radius_px`` < 0) or dilate a (H, W) bool mask and soften its edge.

    Distances are Euclidean between pixel centres, so ±1 px is a 3×3 dilation/erosion. The
    image border is not treated as an edge. Soft edges are a linear ramp ``edge_softness_px``
    wide centred on the (shifted) edge, so thresholding at 0.5 gives the hard mask back.
    Returns (H, W) float32 probabilities, or None when erosion leaves nothing.
    """
    if radius_px == 0 and edge_softness_px == 0.0:
        return mask.astype(np.float32)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    margin = abs(radius_px) + int(np.ceil(edge_softness_px)) + 2
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])
    crop = mask[r0:r1, c0:c1]
    if crop.all():
        # The mask fills the image: its only border is the image border, which is no edge.
        return mask.astype(np.float32)
    inside = ndimage.distance_transform_edt(crop)
    outside = ndimage.distance_transform_edt(~crop)
    # Signed distance to the edge, measured between pixel centres: +0.5 for the outermost
    # inside pixels, −0.5 for the first outside ones; shifting it grows/shrinks the mask.
    signed = np.where(crop, inside - 0.5, 0.5 - outside) + radius_px
    if edge_softness_px > 0.0:
        prob = np.clip(0.5 + signed / edge_softness_px, 0.0, 1.0)
    else:
        prob = (signed > 0.0).astype(np.float64)
    if not (prob >= 0.5).any():
        return None
    out = np.zeros(mask.shape, dtype=np.float32)
    out[r0:r1, c0:c1] = prob
    return out


def fuse_class_probabilities(
    *,
    diffusion_embeddings: NDArray[np.float32],
    diffusion_text: NDArray[np.float32],
    clip_embeddings: NDArray[np.float32],
    clip_text: NDArray[np.float32],
    seen: NDArray[np.bool_],
    logit_scale: float,
    no_object_logit: float,
    alpha: float,
    beta: float,
    embeddings_normalised: bool = False,
) -> NDArray[np.float32]:
    """ODISE's fusion of two class distributions, (N, C); rows sum to 1 − p(no object).

    ``p = softmax_C((1 − a)·log p_diff + a·log p_clip) · (1 − p_null)`` with ``a`` = α for seen
    and β for novel classes; ``p_diff``/``p_clip`` are softmaxes of ``logit_scale`` × cosine
    over the C classes, and ``p_null`` is the weight of ``no_object_logit`` in a softmax over
    the C diffusion-space logits plus it. Embeddings (N, D·) and texts (C, D·) need not be
    normalised; ``embeddings_normalised`` says the embeddings already have unit rows (a mask
    bank normalised once for many calls).
    """
    n = diffusion_embeddings.shape[0]

    def cosine_logits(a: NDArray[np.float32], b: NDArray[np.float32]) -> torch.Tensor:
        unit_a = a if embeddings_normalised else _normalise(a)
        return torch.from_numpy(logit_scale * (unit_a @ _normalise(b).T)).double()

    probs = fuse_logits(
        diffusion_logits=cosine_logits(diffusion_embeddings, diffusion_text),
        null_logits=torch.full((n, 1), float(no_object_logit), dtype=torch.float64),
        clip_logits=cosine_logits(clip_embeddings, clip_text),
        seen=torch.from_numpy(np.asarray(seen, dtype=bool)),
        alpha=alpha,
        beta=beta,
    )
    out: NDArray[np.float32] = probs.numpy().astype(np.float32)
    return out

def _normalise(x: NDArray[np.float32]) -> NDArray[np.float32]:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: NDArray[np.float32] = (x / np.maximum(norm, 1e-12)).astype(np.float32)
    return out


def _touching_pairs(ids: NDArray[np.int64]) -> list[tuple[int, int]]:
    """Sorted unique (a, b), a < b, of instance ids sharing a 4-connected pixel edge."""
    found: list[NDArray[np.int64]] = []
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            found.append(np.stack([np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])], 1))
    if not found:
        return []
    pairs = np.unique(np.concatenate(found), axis=0)
    return [(int(a), int(b)) for a, b in pairs]


def _group_mask(
    ids: NDArray[np.int64], group: list[int], box_of: dict[int, tuple[slice, slice]]
) -> NDArray[np.bool_]:
    """(H, W) bool union of the instances in ``group``, computed inside their joint box."""
    r0 = min(box_of[i][0].start for i in group)
    r1 = max(box_of[i][0].stop for i in group)
    c0 = min(box_of[i][1].start for i in group)
    c1 = max(box_of[i][1].stop for i in group)
    mask = np.zeros(ids.shape, dtype=np.bool_)
    mask[r0:r1, c0:c1] = np.isin(ids[r0:r1, c0:c1], group)
    return mask


def _find(parent: dict[int, int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i

"""A synthetic text space with a known similarity structure, for the synthetic benchmark.

**This is not CLIP.** Without real CLIP weights the only text tower available here is a random
one, and a random tower maps every class name to nearly the same vector (mean pairwise cosine
0.89 with the tiny tower), so nothing semantic can be measured through it: "white sneaker" ends
up closest to "bed". :class:`SyntheticTextEncoder` replaces it wherever the 2D branch is the
oracle-noise segmenter (tests, ``make demo``, ``make bench-quality``, the node's oracle mode).
Real runs keep :class:`~diff2scene.segmentation.text.ClipTextEncoder`.

The space is built so that its answers are predictable and checkable against ground truth:

* every word or name gets a fixed unit vector drawn from a generator seeded by a hash of the
  text and the configured seed — the same in every process and on every machine;
* class names of related classes (the groups of :attr:`SyntheticTextConfig.related_classes`,
  by default the oracle's confusion pairs such as chair/armchair, table/desk) share a group
  component, so their cosine is :attr:`~SyntheticTextConfig.related_cosine` (0.5); unrelated
  names are near-orthogonal (|cos| ≈ 1/√768 ≈ 0.04);
* a phrase is the normalised sum of its name vector and of its attribute words (colours,
  materials, sizes of the synthetic scenes), each weighted
  :attr:`~SyntheticTextConfig.attribute_weight` (0.5): "red chair" has cosine 0.89 with
  "chair" and 0.8 with "blue chair", so an attribute query prefers the right-coloured instance
  while the class name still dominates;
* prompt templates ("a photo of a {}." ...) are stripped first, so a prompt ensemble changes
  nothing;
* any other word keeps a vector of its own, so an object that is not in the scene ("grand
  piano") matches nothing.

The 256-d ``diffusion`` space of the oracle is this space through the oracle's fixed
orthonormal projection, so it inherits the same structure.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError
from diff2scene.segmentation.text import DEFAULT_TEMPLATES

#: Colour words: the synthetic scenes' palette (``diff2scene.synth.classes.PALETTE``) plus
#: common spellings, so "gray" and "grey" are one attribute.
DEFAULT_COLOUR_WORDS: tuple[str, ...] = (
    "white", "black", "grey", "gray", "red", "green", "blue", "yellow", "orange", "brown",
    "beige", "pink", "purple",
)
#: Material words a user may put in front of an object.
DEFAULT_MATERIAL_WORDS: tuple[str, ...] = (
    "wooden", "wood", "metal", "metallic", "plastic", "fabric", "leather", "glass", "ceramic",
    "paper", "cardboard",
)
#: Size words (the prompt templates also use "small" and "large").
DEFAULT_SIZE_WORDS: tuple[str, ...] = ("small", "large", "big", "tiny", "tall", "short", "long")

#: Groups of related class names; within a group every pair has cosine ``related_cosine``.
#: These are the connected components of the oracle's confusion pairs
#: (``diff2scene.segmentation.oracle.DEFAULT_SIMILAR_CLASSES``).
DEFAULT_RELATED_CLASSES: tuple[tuple[str, ...], ...] = (
    ("table", "desk", "coffee table", "end table"),
    ("chair", "armchair", "office chair", "sofa", "couch"),
    ("monitor", "tv"),
    ("cabinet", "kitchen cabinet", "bookshelf", "shelf"),
    ("pillow", "cushion"),
    ("nightstand", "dresser"),
    ("trash can", "trash bin"),
    ("curtain", "blinds"),
)

_DEFAULT_SYNONYMS = {"gray": "grey", "wood": "wooden", "metallic": "metal", "big": "large"}
_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
_ARTICLES = frozenset({"a", "an", "the", "some", "any"})
# Domain tags keep a name's vector, a group's shared vector and an attribute's vector apart
# even when the same string plays several roles.
_NAME, _GROUP, _ATTRIBUTE = "name", "group", "attribute"


@dataclass
class SyntheticTextConfig:
    """Shape of the synthetic text space (see the module docstring)."""

    #: Width of the space; 768 matches CLIP ViT-L/14, so masks and maps keep their layout.
    dim: int = 768
    #: Seed of every word vector; two encoders with the same config give identical vectors.
    seed: int = 0
    #: Groups of related class names (each name in at most one group).
    related_classes: tuple[tuple[str, ...], ...] = field(
        default=DEFAULT_RELATED_CLASSES,
        metadata={"ros_parameter": False},  # nested lists: set in a YAML config, not a param
    )
    #: Cosine between two names of one group (in [0, 1)).
    related_cosine: float = 0.5
    #: Words read as attributes of the object rather than part of its name.
    attribute_words: tuple[str, ...] = (
        DEFAULT_COLOUR_WORDS + DEFAULT_MATERIAL_WORDS + DEFAULT_SIZE_WORDS
    )
    #: Attribute words that mean the same attribute (spelling variants), word → canonical.
    attribute_synonyms: dict[str, str] = field(
        default_factory=lambda: dict(_DEFAULT_SYNONYMS),
        metadata={"ros_parameter": False},  # a mapping: set it in a YAML config, not a param
    )
    #: Weight of each attribute word against the name (the name has weight 1).
    attribute_weight: float = 0.5
    #: Prompt templates (one ``{}`` each) stripped from a text before it is embedded.
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    #: Longest accepted text in characters; longer input is rejected as an absurd query.
    max_text_chars: int = 1000
    #: Name and word vectors kept in the cache; 0 disables it.
    cache_size: int = 4096

    def __post_init__(self) -> None:
        if self.dim < 8:
            raise ValueError(f"dim must be >= 8, got {self.dim}")
        if not 0.0 <= self.related_cosine < 1.0:
            raise ValueError(f"related_cosine must be in [0, 1), got {self.related_cosine}")
        if self.attribute_weight < 0.0:
            raise ValueError(f"attribute_weight must be >= 0, got {self.attribute_weight}")
        if self.cache_size < 0 or self.max_text_chars < 1:
            raise ValueError("cache_size must be >= 0 and max_text_chars >= 1")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}'")
        self.related_classes = tuple(
            tuple(_normalise_text(n) for n in group) for group in self.related_classes
        )
        seen: dict[str, int] = {}
        for g, group in enumerate(self.related_classes):
            for name in group:
                if name in seen and seen[name] != g:
                    raise ValueError(f"class {name!r} is in two related groups")
                seen[name] = g


class SyntheticTextEncoder:
    """SYNTHETIC text space (not CLIP): texts → (C, dim) float32 unit rows (``TextEncoder``).

    Deterministic, dependency-free and cheap (no network, no weights): each text is parsed into
    a name and attribute words after stripping prompt templates and articles; the name's vector
    (its own seeded vector, plus a group component for related classes) and the attribute
    vectors (weight ``attribute_weight``) are summed and normalised. Thread-safe.
    """

    def __init__(self, config: SyntheticTextConfig | None = None) -> None:
        self.config = config or SyntheticTextConfig()
        cfg = self.config
        self._group_of: dict[str, int] = {
            name: g for g, group in enumerate(cfg.related_classes) for name in group
        }
        self._attributes = frozenset(_normalise_text(w) for w in cfg.attribute_words)
        self._synonyms = {
            _normalise_text(k): _normalise_text(v) for k, v in cfg.attribute_synonyms.items()
        }
        # Most specific template first, so "a photo of a small {}." wins over "a photo of a {}.".
        ordered = sorted(cfg.templates, key=lambda t: -len(t.replace("{}", "")))
        self._templates = [_template_regex(t) for t in ordered]
        self._cache: OrderedDict[tuple[str, str], NDArray[np.float64]] = OrderedDict()
        self._lock = threading.Lock()
        # Name-vector weights giving cos(a, b) = related_cosine for two names of one group.
        self._shared_weight = float(np.sqrt(cfg.related_cosine))
        self._own_weight = float(np.sqrt(1.0 - cfg.related_cosine))

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def related_groups(self) -> Mapping[str, int]:
        """Class name → index of its related group (names in no group are absent)."""
        return dict(self._group_of)

    def parse(self, text: str) -> tuple[str, tuple[str, ...]]:
        """(name, attribute words) of ``text`` after stripping templates, articles, punctuation.

        The name is what is left once attribute words are removed ("" for a text of only
        attributes); a text that is exactly a related class name is kept whole, so a class
        whose name contains an attribute word is not split.
        """
        norm = _normalise_text(text)
        for regex in self._templates:
            match = regex.fullmatch(norm)
            if match:
                norm = _normalise_text(match.group(1))
                break
        words = _WORD.findall(norm)
        while words and words[0] in _ARTICLES:
            words = words[1:]
        whole = " ".join(words)
        if whole in self._group_of:
            return whole, ()
        attrs = tuple(self._synonyms.get(w, w) for w in words if w in self._attributes)
        name = " ".join(w for w in words if w not in self._attributes)
        return name, attrs

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """(C, dim) float32, one L2-normalised row per text.

        Raises :class:`InputError` for non-string or over-long texts.
        """
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of strings", f"got the string {texts!r}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError("texts must be strings", f"got {type(text).__name__}")
            if len(text) > self.config.max_text_chars:
                raise InputError(
                    "text too long",
                    f"{len(text)} characters > max_text_chars={self.config.max_text_chars}",
                )
            out[row] = self._embed(text)
        return out

    def _embed(self, text: str) -> NDArray[np.float32]:
        name, attrs = self.parse(text)
        vec = np.zeros(self.dim, dtype=np.float64)
        if name:
            vec += self._name_vector(name)
        for attr in attrs:
            vec += self.config.attribute_weight * self._vector(_ATTRIBUTE, attr)
        norm = float(np.linalg.norm(vec))
        if norm < 1e-12:
            # Nothing left (empty text, or attribute weight 0): a vector of the text itself,
            # so it still matches nothing else.
            vec, norm = self._vector(_NAME, _normalise_text(text)), 1.0
        result: NDArray[np.float32] = (vec / norm).astype(np.float32)
        return result

    def _name_vector(self, name: str) -> NDArray[np.float64]:
        own = self._vector(_NAME, name)
        group = self._group_of.get(name)
        if group is None:
            return own
        shared = self._vector(_GROUP, str(group))
        # Own and shared vectors are (nearly) orthogonal unit vectors, so this is unit length.
        out: NDArray[np.float64] = self._own_weight * own + self._shared_weight * shared
        return out

    def _vector(self, kind: str, key: str) -> NDArray[np.float64]:
        """The fixed unit vector of ``key`` in role ``kind``, cached."""
        with self._lock:
            cached = self._cache.get((kind, key))
            if cached is not None:
                self._cache.move_to_end((kind, key))
                return cached
        digest = hashlib.blake2b(f"{kind}\x00{key}".encode(), digest_size=16).digest()
        rng = np.random.default_rng([self.config.seed, *np.frombuffer(digest, np.uint32)])
        vec = rng.standard_normal(self.dim)
        vec /= np.linalg.norm(vec)
        if self.config.cache_size:
            with self._lock:
                self._cache[(kind, key)] = vec
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
        return vec


def _normalise_text(text: str) -> str:
    return " ".join(text.lower().split())


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex matching a normalised prompt made from ``template``; group 1 is the filler."""
    before, after = _normalise_text(template.replace("{}", "\x00")).split("\x00")
    return re.compile(re.escape(before) + r"(.+?)" + re.escape(after))

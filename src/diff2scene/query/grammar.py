"""The query grammar: a noun phrase, optionally related to another noun phrase.

::

    query    := [article] phrase [relation [article] phrase]
              | "the" phrase superlative [article] phrase
    relation := "near" | "close to" | "next to" | "beside" | "adjacent to"
              | "on" | "on top of" | "under" | "below" | "beneath" | "underneath"
              | "above" | "over" | "left of" | "to the left of" | "on the left of"
              | "right of" | "to the right of" | "on the right of"
    superlative := "closest to" | "nearest to" | "nearest"
    phrase   := one or more words (attributes stay in it: "white sneakers")

Matching is on whole lower-cased words, longest relation first, so "on top of" wins over "on"
and "close to" does not match inside "closest to". One relation per query: a phrase that still
contains a relation word is refused rather than silently misread. Spatial words the engine
cannot evaluate ("behind", "in front of", "between", "inside", "far from") are refused with the
list of supported relations, so a user does not get an answer to a different question.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from diff2scene.errors import InputError

#: Canonical relation → phrasings (whole words).
RELATIONS: dict[str, tuple[str, ...]] = {
    "near": ("near", "near to", "close to", "nearby"),
    "next_to": ("next to", "beside", "adjacent to"),
    "on": ("on", "on top of", "onto", "upon"),
    "under": ("under", "below", "beneath", "underneath"),
    "above": ("above", "over"),
    "left_of": ("left of", "to the left of", "on the left of"),
    "right_of": ("right of", "to the right of", "on the right of"),
    "closest_to": ("closest to", "nearest to", "nearest", "closest"),
}
#: Spatial phrasings that are recognised but not supported (a clear refusal beats a wrong answer).
UNSUPPORTED_RELATIONS: tuple[str, ...] = (
    "behind",
    "in front of",
    "between",
    "inside",
    "inside of",
    "far from",
    "across from",
    "opposite",
    "outside",
)
_ARTICLES = frozenset({"the", "a", "an", "some", "any"})
_ALLOWED = re.compile(r"^[a-z0-9 '\-,.?!]*$")
_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


@dataclass(frozen=True)
class ParsedQuery:
    """A query split into what is searched for and, optionally, where."""

    #: Noun phrase of the thing searched for, attributes included ("white sneakers").
    target: str
    #: Canonical relation name (a key of :data:`RELATIONS`), or None for a plain phrase.
    relation: str | None = None
    #: Noun phrase the relation refers to, or None.
    anchor: str | None = None


def _phrase_table() -> list[tuple[tuple[str, ...], str]]:
    table = [(tuple(p.split()), rel) for rel, phrases in RELATIONS.items() for p in phrases]
    table += [(tuple(p.split()), "") for p in UNSUPPORTED_RELATIONS]
    # Longest first so "on top of" beats "on" at the same position.
    return sorted(table, key=lambda item: -len(item[0]))


_PHRASES = _phrase_table()


def _strip_articles(words: list[str]) -> list[str]:
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return words


def parse_query(text: object, *, max_chars: int = 200) -> ParsedQuery:
    """Parse a free-text query; raises :class:`InputError` for anything it cannot answer."""
    if not isinstance(text, str):
        raise InputError("query must be a string", f"got {type(text).__name__}")
    if len(text) > max_chars:
        raise InputError("query too long", f"{len(text)} characters > {max_chars}")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise InputError("query contains control characters")
    norm = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    if not norm:
        raise InputError("empty query")
    if not _ALLOWED.match(norm):
        bad = sorted({ch for ch in norm if not _ALLOWED.match(ch)})
        raise InputError("query contains unsupported characters", "".join(bad))
    words = _WORD.findall(norm)
    if not words or not any(any(ch.isalpha() for ch in w) for w in words):
        raise InputError("query has no words", repr(text))
    hits: list[tuple[int, int, str]] = []
    i = 0
    while i < len(words):
        for words_of, rel in _PHRASES:
            if tuple(words[i : i + len(words_of)]) == words_of:
                hits.append((i, i + len(words_of), rel))
                i += len(words_of)
                break
        else:
            i += 1
    for _, _, rel in hits:
        if rel == "":
            supported = ", ".join(p for phrases in RELATIONS.values() for p in phrases)
            raise InputError("unsupported spatial relation", f"supported: {supported}")
    if not hits:
        plain = " ".join(_strip_articles(words))
        if not plain:
            raise InputError("query has no noun phrase", repr(text))
        return ParsedQuery(target=plain)
    if len(hits) > 1:
        raise InputError("only one spatial relation per query", repr(text))
    start, stop, rel = hits[0]
    target = _strip_articles(words[:start])
    anchor = _strip_articles(words[stop:])
    if not target or not anchor:
        raise InputError(
            f"relation {' '.join(words[start:stop])!r} needs a phrase before and after it",
            repr(text),
        )
    return ParsedQuery(target=" ".join(target), relation=rel, anchor=" ".join(anchor))

"""Named class vocabularies (ScanNet20, ScanNet200 with its head/common/tail split).

Shipped as text files in ``diff2scene/data`` so users can read and copy them; a user's own
vocabulary file in the same format loads through the same function. Format, one class per
line, ``#`` starts a comment line, columns separated by tabs::

    [id<TAB>]name[<TAB>split]

``id`` is the dataset's label id (needed to evaluate on ScanNet-format ground truth) and
``split`` a frequency group used to report mIoU per group.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from diff2scene.errors import ConfigError, DataFormatError, InputError
from diff2scene.segmentation.base import TextEncoder, Vocabulary
from diff2scene.segmentation.text import default_templates, ensemble_embeddings

#: Vocabularies shipped with the package: name → file in ``diff2scene/data``.
BUILTIN_VOCABULARIES: dict[str, str] = {
    "scannet20": "scannet20.txt",
    "scannet200": "scannet200.txt",
}


@dataclass(frozen=True)
class NamedVocabulary:
    """Class names of a vocabulary file, with optional dataset ids and frequency splits."""

    name: str
    names: tuple[str, ...]
    #: Dataset label id per class, or None when the file gives no ids.
    ids: tuple[int, ...] | None = None
    #: Class name → split (e.g. "head"/"common"/"tail"); empty when the file gives none.
    split_of: dict[str, str] = field(default_factory=dict)

    def splits(self) -> dict[str, list[str]]:
        """Split name → class names in vocabulary order (first-seen split order)."""
        out: dict[str, list[str]] = {}
        for name in self.names:
            if name in self.split_of:
                out.setdefault(self.split_of[name], []).append(name)
        return out


def list_vocabularies() -> list[str]:
    """Names accepted by :func:`get_vocabulary` besides file paths."""
    return sorted(BUILTIN_VOCABULARIES)


def get_vocabulary(name_or_path: str | Path) -> NamedVocabulary:
    """A built-in vocabulary by name (``"scannet200"``) or a vocabulary file by path."""
    key = str(name_or_path)
    if key in BUILTIN_VOCABULARIES:
        resource = resources.files("diff2scene").joinpath("data", BUILTIN_VOCABULARIES[key])
        return parse_vocabulary(resource.read_text(encoding="utf-8"), name=key)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"unknown vocabulary {key!r}: not one of {list_vocabularies()} and not a file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read vocabulary file: {exc}") from exc
    return parse_vocabulary(text, name=path.stem)


def get_vocabulary_names(name_or_path: str | Path) -> list[str]:
    """Class names of a vocabulary in file order."""
    return list(get_vocabulary(name_or_path).names)


def get_vocabulary_splits(name_or_path: str | Path) -> dict[str, list[str]]:
    """Frequency splits of a vocabulary (ScanNet200: head 66 / common 68 / tail 66)."""
    return get_vocabulary(name_or_path).splits()


def parse_vocabulary(text: str, *, name: str) -> NamedVocabulary:
    """Parse the vocabulary file format described in the module docstring."""
    names: list[str] = []
    ids: list[int] = []
    split_of: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split("\t")]
        if cols[0].isdigit():
            ids.append(int(cols[0]))
            cols = cols[1:]
        if not cols or not cols[0] or len(cols) > 2:
            raise DataFormatError(f"{name}:{lineno}: expected '[id<TAB>]name[<TAB>split]'")
        if cols[0] in names:
            raise DataFormatError(f"{name}:{lineno}: duplicate class {cols[0]!r}")
        names.append(cols[0])
        if len(cols) == 2:
            split_of[cols[0]] = cols[1]
    if not names:
        raise DataFormatError(f"{name}: vocabulary has no classes")
    if ids and len(ids) != len(names):
        raise DataFormatError(f"{name}: ids given for {len(ids)} of {len(names)} classes")
    if split_of and len(split_of) != len(names):
        raise DataFormatError(f"{name}: splits given for {len(split_of)} of {len(names)} classes")
    return NamedVocabulary(
        name=name, names=tuple(names), ids=tuple(ids) if ids else None, split_of=split_of
    )


def build_vocabulary(
    names: Sequence[str],
    encoder: TextEncoder,
    *,
    seen: Collection[str] = (),
    templates: Sequence[str] | None = None,
) -> Vocabulary:
    """Embed class names into a :class:`Vocabulary` ready to score masks against.

    ``seen`` lists the classes in the 2D head's training labels (fused with α instead of β);
    names in it that are not in ``names`` are ignored. ``templates`` default to the encoder's
    configured ensemble (:func:`default_templates`); pass ``("{}",)`` to embed
    the bare names. Raises :class:`InputError` for empty, blank or duplicate names.
    """
    cleaned = [n.strip() if isinstance(n, str) else n for n in names]
    if not cleaned:
        raise InputError("empty vocabulary")
    for n in cleaned:
        if not isinstance(n, str) or not n:
            raise InputError("vocabulary names must be non-empty strings", repr(n))
    if len(set(cleaned)) != len(cleaned):
        dupes = sorted({n for n in cleaned if cleaned.count(n) > 1})
        raise InputError("duplicate vocabulary names", ", ".join(dupes))
    chosen = default_templates(encoder) if templates is None else tuple(templates)
    embeddings = ensemble_embeddings(encoder, cleaned, chosen)
    seen_set = set(seen)
    return Vocabulary(
        names=cleaned,
        text_embeddings=embeddings,
        seen=np.array([n in seen_set for n in cleaned], dtype=np.bool_),
    )

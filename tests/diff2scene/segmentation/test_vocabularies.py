"""Shipped vocabularies and building a Vocabulary with a text encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diff2scene.errors import ConfigError, DataFormatError, InputError
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig
from diff2scene.segmentation.vocabularies import (
    build_vocabulary,
    get_vocabulary,
    get_vocabulary_names,
    get_vocabulary_splits,
    list_vocabularies,
)


def test_scannet200_names_ids_and_split() -> None:
    names = get_vocabulary_names("scannet200")
    assert len(names) == 200 == len(set(names))
    assert names[:4] == ["wall", "chair", "floor", "table"] and names[-1] == "mattress"
    vocab = get_vocabulary("scannet200")
    assert vocab.ids is not None and len(vocab.ids) == 200
    assert vocab.ids[0] == 1 and vocab.ids[-1] == 1191
    assert list(vocab.ids) == sorted(vocab.ids)
    splits = get_vocabulary_splits("scannet200")
    assert {k: len(v) for k, v in splits.items()} == {"head": 66, "common": 68, "tail": 66}
    assert "tv stand" in splits["head"] and "cushion" in splits["common"]
    assert "luggage" in splits["tail"]
    assert sorted(n for group in splits.values() for n in group) == sorted(names)


def test_scannet20() -> None:
    vocab = get_vocabulary("scannet20")
    assert len(vocab.names) == 20 and vocab.names[0] == "wall"
    assert vocab.ids is not None and vocab.ids[-1] == 39 and not vocab.split_of
    assert list_vocabularies() == ["scannet20", "scannet200"]


def test_user_vocabulary_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("# my robot's classes\nmug\nfire extinguisher\n\nbackpack\n")
    vocab = get_vocabulary(path)
    assert vocab.name == "mine" and vocab.names == ("mug", "fire extinguisher", "backpack")
    assert vocab.ids is None and vocab.splits() == {}
    bad = tmp_path / "bad.txt"
    bad.write_text("mug\nmug\n")
    with pytest.raises(DataFormatError, match="duplicate"):
        get_vocabulary(bad)
    partial = tmp_path / "partial.txt"
    partial.write_text("1\tmug\nbowl\n")
    with pytest.raises(DataFormatError, match="ids"):
        get_vocabulary(partial)
    with pytest.raises(ConfigError, match="scannet200"):
        get_vocabulary("scannet9000")


def test_build_vocabulary_with_encoder() -> None:
    encoder = ClipTextEncoder(
        build_clip(ClipConfig.tiny_profile()), TextEncoderConfig(clip=ClipConfig.tiny_profile())
    )
    vocab = build_vocabulary(
        ["chair", " table ", "lamp"], encoder, seen={"chair", "sofa"}, templates=("a {}.",)
    )
    assert vocab.names == ["chair", "table", "lamp"]
    assert vocab.text_embeddings.shape == (3, encoder.dim)
    expected = encoder.encode(["a chair.", "a table.", "a lamp."])
    np.testing.assert_allclose(vocab.text_embeddings, expected, atol=1e-5)
    assert vocab.seen.tolist() == [True, False, False]
    default = build_vocabulary(["chair"], encoder)
    expected = encoder.encode_classes(["chair"])
    np.testing.assert_allclose(default.text_embeddings, expected, atol=1e-6)
    assert not default.seen.any()
    with pytest.raises(InputError, match="duplicate"):
        build_vocabulary(["chair", "chair"], encoder)
    with pytest.raises(InputError):
        build_vocabulary(["chair", "  "], encoder)
    with pytest.raises(InputError):
        build_vocabulary([], encoder)

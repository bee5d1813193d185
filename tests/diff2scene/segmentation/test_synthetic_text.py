"""Synthetic text space: its similarity structure, determinism, templates and unknown words."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from diff2scene.errors import InputError
from diff2scene.segmentation.synthetic_text import SyntheticTextConfig, SyntheticTextEncoder
from diff2scene.segmentation.text import DEFAULT_TEMPLATES, ensemble_embeddings

SYNTH_CLASSES = ["wall", "floor", "chair", "table", "door", "cabinet", "bed", "lamp", "sneaker",
                 "mug", "plant", "monitor", "sofa", "desk", "backpack"]  # fmt: skip


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_rows_are_unit_float32_of_the_configured_width() -> None:
    enc = SyntheticTextEncoder(SyntheticTextConfig(dim=64))
    out = enc.encode(["chair", "red chair", "", "grand piano"])
    assert out.shape == (4, 64) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert SyntheticTextEncoder().dim == 768


def test_related_classes_near_half_unrelated_near_orthogonal() -> None:
    enc = SyntheticTextEncoder()
    chair, armchair, table, desk, sofa = enc.encode(["chair", "armchair", "table", "desk", "sofa"])
    for a, b in ((chair, armchair), (table, desk), (chair, sofa)):
        assert cos(a, b) == pytest.approx(0.5, abs=0.12)
    emb = enc.encode(SYNTH_CLASSES)
    sims = emb @ emb.T
    groups = enc.related_groups
    for i, a in enumerate(SYNTH_CLASSES):
        for j, b in enumerate(SYNTH_CLASSES):
            if i == j:
                continue
            if a in groups and groups[a] == groups.get(b):
                assert sims[i, j] == pytest.approx(0.5, abs=0.12), (a, b)
            else:
                assert abs(sims[i, j]) < 0.2, (a, b, sims[i, j])


def test_phrase_is_closest_to_its_own_class_and_colour() -> None:
    enc = SyntheticTextEncoder()
    classes = enc.encode(SYNTH_CLASSES)
    for name in ("chair", "table", "sneaker", "mug"):
        for colour in ("red", "white", "brown"):
            phrase = enc.encode([f"{colour} {name}"])[0]
            assert SYNTH_CLASSES[int(np.argmax(classes @ phrase))] == name
    # An instance is embedded as "<colour> <class>": the attribute query prefers the right one.
    red_chair, blue_chair = enc.encode(["red chair", "blue chair"])
    query = enc.encode(["the red chair"])[0]
    assert cos(query, red_chair) > cos(query, blue_chair) + 0.15
    # ... and the class name still matches both instances more than another class does.
    chair, table = enc.encode(["chair", "table"])
    assert min(cos(chair, red_chair), cos(chair, blue_chair)) > cos(table, red_chair) + 0.5


def test_attribute_words_weighted_below_the_name() -> None:
    enc = SyntheticTextEncoder()
    chair, red, red_chair = enc.encode(["chair", "red", "red chair"])
    # name weight 1, attribute weight 0.5: cos(red chair, chair) = 1/sqrt(1.25) ≈ 0.89.
    assert cos(red_chair, chair) == pytest.approx(1 / np.sqrt(1.25), abs=0.05)
    assert cos(red_chair, red) == pytest.approx(0.5 / np.sqrt(1.25), abs=0.1)
    gray, grey = enc.encode(["gray chair", "grey chair"])
    assert cos(gray, grey) == pytest.approx(1.0, abs=1e-6)


def test_prompt_templates_are_ignored() -> None:
    enc = SyntheticTextEncoder()
    bare = enc.encode(["white sneaker"])[0]
    prompts = enc.encode([t.replace("{}", "white sneaker") for t in DEFAULT_TEMPLATES])
    np.testing.assert_allclose(prompts @ bare, 1.0, atol=1e-6)
    ensemble = ensemble_embeddings(enc, ["white sneaker"], DEFAULT_TEMPLATES)[0]
    assert cos(ensemble, bare) == pytest.approx(1.0, abs=1e-6)
    # "small"/"large" belong to the template here, not to the object.
    assert enc.parse("a photo of a small red chair.") == ("chair", ("red",))
    assert enc.parse("There is a Trash Can in the scene.") == ("trash can", ())
    # Outside a template, a size word is an attribute.
    assert enc.parse("small red chair") == ("chair", ("small", "red"))


def test_unknown_words_match_nothing() -> None:
    enc = SyntheticTextEncoder()
    piano = enc.encode(["grand piano"])[0]
    phrases = [f"{c} {n}" for c in ("red", "white") for n in SYNTH_CLASSES]
    known = enc.encode(SYNTH_CLASSES + phrases)
    assert np.max(np.abs(known @ piano)) < 0.2
    # Unknown words differ from each other, too.
    a, b = enc.encode(["zebra", "xylophone"])
    assert abs(cos(a, b)) < 0.2


def test_seed_changes_the_space() -> None:
    a = SyntheticTextEncoder(SyntheticTextConfig(seed=0)).encode(["chair"])[0]
    b = SyntheticTextEncoder(SyntheticTextConfig(seed=1)).encode(["chair"])[0]
    assert abs(cos(a, b)) < 0.2


def test_deterministic_across_processes() -> None:
    code = (
        "import sys, numpy as np\n"
        "from diff2scene.segmentation.synthetic_text import SyntheticTextEncoder\n"
        "v = SyntheticTextEncoder().encode(['red chair', 'grand piano', 'desk'])\n"
        "sys.stdout.write(v.tobytes().hex())\n"
    )
    # A different hash seed in the child: Python's str hash must not leak into the vectors.
    env = {"PYTHONHASHSEED": "12345"}
    import os

    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
        env={**os.environ, **env},
    )  # fmt: skip
    here = SyntheticTextEncoder().encode(["red chair", "grand piano", "desk"])
    there = np.frombuffer(bytes.fromhex(child.stdout), dtype=np.float32).reshape(here.shape)
    np.testing.assert_array_equal(here, there)


def test_bad_input_is_rejected() -> None:
    enc = SyntheticTextEncoder(SyntheticTextConfig(max_text_chars=20))
    with pytest.raises(InputError):
        enc.encode("chair")
    with pytest.raises(InputError):
        enc.encode([3])  # type: ignore[list-item]
    with pytest.raises(InputError):
        enc.encode(["x" * 21])
    assert enc.encode([]).shape == (0, 768)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="related_cosine"):
        SyntheticTextConfig(related_cosine=1.0)
    with pytest.raises(ValueError, match="two related groups"):
        SyntheticTextConfig(related_classes=(("a", "b"), ("b", "c")))
    with pytest.raises(ValueError, match="template"):
        SyntheticTextConfig(templates=("no placeholder",))
    cfg = SyntheticTextConfig(related_cosine=0.3)
    a, b = SyntheticTextEncoder(cfg).encode(["table", "desk"])
    assert cos(a, b) == pytest.approx(0.3, abs=0.12)

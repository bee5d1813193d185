"""Text encoder: shapes, normalisation, LRU caching, template ensembles, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from diff2scene.config import from_dict
from diff2scene.errors import ConfigError, InputError
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig


@pytest.fixture(scope="module")
def bundle():
    return build_clip(ClipConfig.tiny_profile())


def make(bundle, **kwargs) -> ClipTextEncoder:
    return ClipTextEncoder(bundle, TextEncoderConfig(clip=ClipConfig.tiny_profile(), **kwargs))


def test_encode_shapes_and_normalisation(bundle) -> None:
    enc = make(bundle)
    emb = enc.encode(["chair", "a wooden table", "sofa"])
    assert emb.shape == (3, enc.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])
    assert enc.encode([]).shape == (0, enc.dim)


def test_batching_does_not_change_results(bundle) -> None:
    texts = [f"object number {i}" for i in range(7)]
    one = make(bundle, batch_size=1).encode(texts)
    many = make(bundle, batch_size=64).encode(texts)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_cache_hits_and_misses(bundle) -> None:
    enc = make(bundle)
    first = enc.encode(["lamp"])
    second = enc.encode(["lamp"])
    np.testing.assert_array_equal(first, second)
    info = enc.cache_info()
    assert (info.misses, info.hits, info.size) == (1, 1, 1)
    enc.encode(["lamp", "desk", "desk"])
    info = enc.cache_info()
    assert (info.misses, info.hits, info.size) == (2, 3, 2)


def test_cache_is_lru_and_bounded(bundle) -> None:
    enc = make(bundle, cache_size=2)
    enc.encode(["a"])
    enc.encode(["b"])
    enc.encode(["a"])  # "b" is now least recently used
    enc.encode(["c"])
    assert enc.cache_info().size == 2
    misses = enc.cache_info().misses
    enc.encode(["a"])
    assert enc.cache_info().misses == misses
    enc.encode(["b"])
    assert enc.cache_info().misses == misses + 1
    off = make(bundle, cache_size=0)
    off.encode(["a"])
    off.encode(["a"])
    assert off.cache_info().misses == 2 and off.cache_info().size == 0


def test_template_averaging(bundle) -> None:
    enc = make(bundle)
    templates = ["a photo of a {}.", "a {} in a room."]
    got = enc.encode_classes(["chair", "tv stand"], templates)
    assert got.shape == (2, enc.dim)
    for row, name in enumerate(["chair", "tv stand"]):
        parts = enc.encode([t.format(name) for t in templates])
        mean = parts.mean(axis=0)
        np.testing.assert_allclose(got[row], mean / np.linalg.norm(mean), atol=1e-5)
    default = enc.encode_classes(["chair"])
    assert enc.cache_info().size >= len(enc.config.templates)
    np.testing.assert_allclose(np.linalg.norm(default, axis=1), 1.0, atol=1e-5)
    with pytest.raises(InputError):
        enc.encode_classes(["chair"], ["no placeholder"])


def test_bad_input_and_config(bundle) -> None:
    enc = make(bundle, max_text_chars=20)
    with pytest.raises(InputError):
        enc.encode("chair")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        enc.encode([3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="too long"):
        enc.encode(["x" * 21])
    with pytest.raises(ConfigError):
        from_dict(TextEncoderConfig, {"templates": ["{} and {}"]})
    with pytest.raises(ConfigError):
        from_dict(TextEncoderConfig, {"cache_size": -1})


def test_concurrent_callers_get_consistent_results(bundle) -> None:
    enc = make(bundle, cache_size=8)
    texts = [f"thing {i}" for i in range(12)]
    reference = make(bundle, cache_size=0).encode(texts)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            order = texts[offset:] + texts[:offset]
            got = enc.encode(order)
            results.append(np.roll(got, offset, axis=0))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results:
        np.testing.assert_allclose(got, reference, atol=1e-5)
    assert enc.cache_info().size <= 8


def test_from_config_builds_tiny(bundle) -> None:
    enc = ClipTextEncoder.from_config(TextEncoderConfig(clip=ClipConfig.tiny_profile()))
    np.testing.assert_allclose(enc.encode(["door"]), make(bundle).encode(["door"]), atol=1e-6)


def test_truncated_text_pass_equals_the_full_one() -> None:
    import torch

    from diff2scene.segmentation.clip import ClipConfig, build_clip
    from diff2scene.segmentation.text import _encode_text_truncated

    bundle = build_clip(ClipConfig.tiny_profile(seed=3))
    tokens = bundle.tokenizer(["a chair", "the white sneaker closest to the desk chair", ""])
    with torch.inference_mode():
        full = bundle.model.encode_text(tokens)
        short = _encode_text_truncated(bundle.model, tokens)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)

"""Headless map pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diff2scene.errors import InputError
from diff2scene.mapping import RenderConfig, colors_for_labels, label_palette, render_map


def test_palette_is_distinct_and_stable():
    pal = label_palette(40)
    assert pal.shape == (40, 3) and pal.dtype == np.uint8
    assert np.unique(pal, axis=0).shape[0] == 40
    np.testing.assert_array_equal(pal[:10], label_palette(10))
    cols = colors_for_labels(np.array([-1, 0, 3]))
    np.testing.assert_array_equal(cols[0], (160, 160, 160))
    np.testing.assert_array_equal(cols[2], pal[3])


def test_render_labelled_and_coloured_maps(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.random((3000, 3)).astype(np.float32)
    cfg = RenderConfig(figure_size_in=(4.0, 2.0), dots_per_inch=50, max_points=1000)
    out = render_map(pts, tmp_path / "sub" / "labels.png", labels=(pts[:, 0] * 5).astype(int),
                     title="labels", config=cfg)
    with Image.open(out) as img:
        assert img.size == (200, 100)
        arr = np.asarray(img.convert("RGB"))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 5  # drew more than background and axes
    out2 = render_map(pts, tmp_path / "colors.png",
                      colors=(pts * 255).astype(np.uint8), config=cfg)
    assert out2.stat().st_size > 0
    with pytest.raises(InputError):
        render_map(pts, tmp_path / "x.png", config=cfg)
    with pytest.raises(InputError):
        render_map(pts, tmp_path / "x.png", labels=np.zeros(5, int), config=cfg)


def test_legend_names_the_labels_present(tmp_path):
    pts = np.random.default_rng(1).random((500, 3)).astype(np.float32)
    labels = np.where(pts[:, 0] < 0.5, 2, -1)
    cfg = RenderConfig(figure_size_in=(6.0, 3.0), dots_per_inch=50)
    plain = np.asarray(Image.open(render_map(pts, tmp_path / "a.png", labels=labels, config=cfg)))
    named = np.asarray(Image.open(render_map(
        pts, tmp_path / "b.png", labels=labels, label_names=["wall", "floor", "chair"], config=cfg
    )))
    assert plain.shape == named.shape and not np.array_equal(plain, named)

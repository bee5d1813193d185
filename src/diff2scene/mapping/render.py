"""Pictures of a map for reports and the README, drawn without a display.

Matplotlib's Agg canvas is used directly (no pyplot, no GUI backend), so this works on a
headless robot or CI machine; Open3D's offscreen renderer needs EGL, which is not always there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import NDArray

from diff2scene.errors import InputError

#: Colour of voxels without a label (label < 0).
UNLABELLED_RGB = (160, 160, 160)


@dataclass
class RenderConfig:
    """Size and sampling of map pictures."""

    #: Width and height of the whole picture (both views), in inches at ``dpi``.
    figure_size_in: tuple[float, float] = (12.0, 6.0)
    dots_per_inch: int = 100
    #: At most this many points are drawn (a random subset; keeps drawing time bounded).
    max_points: int = 200_000
    #: Marker area in points².
    marker_size: float = 1.0
    #: Elevation and azimuth of the perspective view, in degrees.
    view_elevation_deg: float = 35.0
    view_azimuth_deg: float = -60.0
    #: Points above this height are left out of the top-down view (to see under a ceiling),
    #: in metres; None draws everything.
    top_down_max_z_m: float | None = None


def label_palette(num_labels: int) -> NDArray[np.uint8]:
    """(num_labels, 3) uint8 distinct colours (golden-ratio hues), the same for every call."""
    i = np.arange(num_labels, dtype=np.float64)
    hue = (i * 0.618033988749895) % 1.0
    sat = 0.65 + 0.3 * ((i * 0.37) % 1.0)
    val = 0.95 - 0.25 * ((i * 0.53) % 1.0)
    h6 = hue * 6.0
    c = val * sat
    x = c * (1 - np.abs(h6 % 2 - 1))
    zeros = np.zeros_like(c)
    sector = np.floor(h6).astype(int) % 6
    table = [
        (c, x, zeros), (x, c, zeros), (zeros, c, x), (zeros, x, c), (x, zeros, c), (c, zeros, x)
    ]
    rgb = np.zeros((num_labels, 3))
    for s, (r, g, b) in enumerate(table):
        m = sector == s
        rgb[m] = np.stack([r[m], g[m], b[m]], axis=1)
    rgb += (val - c)[:, None]
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def colors_for_labels(labels: NDArray[np.integer]) -> NDArray[np.uint8]:
    """(M, 3) uint8 palette colours for (M,) integer labels; label < 0 is grey."""
    labels = np.asarray(labels)
    out = np.empty((labels.shape[0], 3), dtype=np.uint8)
    out[:] = UNLABELLED_RGB
    ok = labels >= 0
    if np.any(ok):
        out[ok] = label_palette(int(labels[ok].max()) + 1)[labels[ok]]
    return out


def render_map(
    points_m: NDArray[np.float32],
    path: str | Path,
    *,
    colors: NDArray[np.uint8] | None = None,
    labels: NDArray[np.integer] | None = None,
    label_names: Sequence[str] | None = None,
    title: str = "",
    config: RenderConfig | None = None,
) -> Path:
    """Draw a top-down and a perspective view of ``points_m`` (M, 3) to a PNG at ``path``.

    Points are coloured by ``colors`` (M, 3) uint8, or by ``labels`` (M,) through
    :func:`label_palette`; exactly one of the two must be given. With ``label_names``
    (name of label i), a legend names the labels present, so a reader can tell the classes.
    """
    cfg = config or RenderConfig()
    pts = np.asarray(points_m, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError("points_shape", f"points must be (M, 3), got {pts.shape}")
    if (colors is None) == (labels is None):
        raise InputError("render_args", "give exactly one of colors or labels")
    rgb = colors_for_labels(labels) if labels is not None else np.asarray(colors, dtype=np.uint8)
    if rgb.shape != (pts.shape[0], 3):
        raise InputError("render_args", f"need {pts.shape[0]} colours/labels, got {rgb.shape}")
    if pts.shape[0] > cfg.max_points:
        keep = np.random.default_rng(0).choice(pts.shape[0], cfg.max_points, replace=False)
        pts, rgb = pts[keep], rgb[keep]
    fig = Figure(figsize=cfg.figure_size_in, dpi=cfg.dots_per_inch)
    FigureCanvasAgg(fig)
    top = fig.add_subplot(1, 2, 1)
    order = np.argsort(pts[:, 2], kind="stable")  # higher points drawn last, as seen from above
    if cfg.top_down_max_z_m is not None:
        order = order[pts[order, 2] <= cfg.top_down_max_z_m]
    top.scatter(pts[order, 0], pts[order, 1], c=rgb[order] / 255.0, s=cfg.marker_size, lw=0)
    top.set_aspect("equal", adjustable="datalim")
    top.set_xlabel("x [m]")
    top.set_ylabel("y [m]")
    top.set_title("top-down")
    persp = fig.add_subplot(1, 2, 2, projection="3d")
    persp.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=rgb / 255.0, s=cfg.marker_size, lw=0)
    persp.view_init(elev=cfg.view_elevation_deg, azim=cfg.view_azimuth_deg)
    if pts.shape[0]:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        persp.set_box_aspect(tuple(np.maximum(hi - lo, 1e-3).tolist()))
    persp.set_title("perspective")
    if labels is not None and label_names is not None:
        present = np.unique(np.asarray(labels))
        present = present[(present >= 0) & (present < len(label_names))]
        palette = label_palette(int(present.max()) + 1) if present.size else None
        handles = [
            Line2D([], [], ls="", marker="o", color=palette[i] / 255.0, label=label_names[i])
            for i in present.tolist()
            if palette is not None
        ]
        if handles:
            fig.legend(handles=handles, loc="center right", fontsize="small", frameon=False)
            fig.subplots_adjust(right=0.85)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path

"""The pieces every import shares: colour registration, pose validity, stamps and settings."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diff2scene.datasets.sequence import (
    DEFAULT_START_STAMP_NS,
    ImportConfig,
    checked_pose,
    register_to_depth,
)
from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.types import CameraIntrinsics

DEPTH = CameraIntrinsics(width=16, height=12, fx=14.0, fy=13.0, cx=7.2, cy=5.6)


def _pattern(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_registration_recovers_the_depth_view_from_a_larger_offset_colour_image() -> None:
    view = _pattern(DEPTH.height, DEPTH.width)
    # the colour camera: 3x the resolution, its image with a border of 7 px left, 2 px top
    big = np.repeat(np.repeat(view, 3, axis=0), 3, axis=1)
    colour = np.pad(big, ((2, 5), (7, 1), (0, 0)), constant_values=0)
    scaled = DEPTH.scaled(3)
    k = CameraIntrinsics(width=colour.shape[1], height=colour.shape[0], fx=scaled.fx,
                         fy=scaled.fy, cx=scaled.cx + 7, cy=scaled.cy + 2)  # fmt: skip
    got = np.asarray(register_to_depth(Image.fromarray(colour), k, DEPTH))
    np.testing.assert_array_equal(got, view)
    # a plain resize of the whole image (the border included) is visibly another view
    naive = np.asarray(Image.fromarray(colour).resize((DEPTH.width, DEPTH.height)))
    assert np.abs(naive.astype(int) - view).mean() > 20


def test_registration_repeats_the_edge_where_the_depth_view_is_wider() -> None:
    # a colour camera with half the field of view: the outer depth pixels see past its edge
    colour = _pattern(DEPTH.height, DEPTH.width)
    k = CameraIntrinsics(width=DEPTH.width, height=DEPTH.height, fx=2 * DEPTH.fx,
                         fy=2 * DEPTH.fy, cx=DEPTH.cx, cy=DEPTH.cy)  # fmt: skip
    got = np.asarray(register_to_depth(Image.fromarray(colour), k, DEPTH,
                                       resample=Image.Resampling.NEAREST))  # fmt: skip
    assert got.shape == (DEPTH.height, DEPTH.width, 3)
    np.testing.assert_array_equal(got[0, 0], colour[0, 0])
    np.testing.assert_array_equal(got[-1, -1], colour[-1, -1])


def test_non_finite_poses_are_invalid_and_non_rigid_ones_malformed() -> None:
    T = np.eye(4)
    T[:3, 3] = (1.0, 2.0, 3.0)
    assert checked_pose(T, "p") is T
    assert checked_pose(np.full((4, 4), -np.inf), "p") is None
    with_nan = T.copy()
    with_nan[1, 1] = np.nan
    assert checked_pose(with_nan, "p") is None
    scaled = T.copy()
    scaled[:3, :3] *= 2.0
    with pytest.raises(DataFormatError, match=r"pose\.txt: not a rigid"):
        checked_pose(scaled, "pose.txt")
    mirrored = T.copy()
    mirrored[0, 0] = -1.0
    with pytest.raises(DataFormatError, match="not a rigid"):
        checked_pose(mirrored, "pose.txt")


def test_stamps_follow_the_frame_number_at_the_nominal_rate() -> None:
    config = ImportConfig(rate_hz=30.0)
    assert config.stamp_ns(0) == DEFAULT_START_STAMP_NS
    assert config.stamp_ns(30) - config.stamp_ns(0) == 1_000_000_000
    assert config.stamp_ns(1) - config.stamp_ns(0) == 33_333_333
    for bad in ({"every": 0}, {"max_frames": -1}, {"rate_hz": 0.0}, {"rate_hz": float("nan")}):
        with pytest.raises(ConfigError):
            ImportConfig(**bad)  # type: ignore[arg-type]

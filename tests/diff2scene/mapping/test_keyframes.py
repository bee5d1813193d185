"""Keyframe selection by motion, time and sharpness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from diff2scene.config import from_dict
from diff2scene.errors import ConfigError
from diff2scene.mapping import KeyframeConfig, KeyframeSelector, sharpness
from diff2scene.types import CameraIntrinsics, Frame


def frame_at(t_s: float, xyz=(0.0, 0.0, 0.0), yaw_deg: float = 0.0, rgb=None) -> Frame:
    T = np.eye(4)
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[:3, 3] = xyz
    if rgb is None:
        rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    return Frame(
        stamp_ns=round(t_s * 1e9),
        rgb=rgb,
        depth_m=np.ones((24, 32), np.float32),
        intrinsics=CameraIntrinsics(32, 24, 20.0, 20.0, 15.5, 11.5),
        T_world_camera=T,
    )


def test_motion_and_time_thresholds():
    sel = KeyframeSelector(
        KeyframeConfig(min_translation_m=0.5, min_rotation_deg=20.0, max_interval_s=3.0)
    )
    assert sel.is_keyframe(frame_at(0.0))
    assert not sel.is_keyframe(frame_at(0.1, xyz=(0.3, 0, 0)))
    assert sel.is_keyframe(frame_at(0.2, xyz=(0.6, 0, 0)))
    assert not sel.is_keyframe(frame_at(0.3, xyz=(0.6, 0, 0), yaw_deg=15))
    assert sel.is_keyframe(frame_at(0.4, xyz=(0.6, 0, 0), yaw_deg=25))
    assert not sel.is_keyframe(frame_at(3.0, xyz=(0.6, 0, 0), yaw_deg=25))
    assert sel.is_keyframe(frame_at(3.5, xyz=(0.6, 0, 0), yaw_deg=25))  # 3.1 s since the last
    assert sel.stats.keyframes == 4
    assert sel.stats.rejected["not_moved"] == 3


def test_min_interval_and_blur():
    sel = KeyframeSelector(
        KeyframeConfig(min_translation_m=0.1, min_interval_s=1.0, min_sharpness=100.0)
    )
    flat = np.full((24, 32, 3), 128, np.uint8)
    assert sharpness(flat) == 0.0
    assert sharpness(frame_at(0).rgb) > 1000.0
    assert not sel.is_keyframe(frame_at(0.0, rgb=flat))
    assert sel.stats.rejected["blurry"] == 1
    assert sel.is_keyframe(frame_at(0.1))
    assert not sel.is_keyframe(frame_at(0.5, xyz=(1.0, 0, 0)))
    assert sel.stats.rejected["too_soon"] == 1
    assert sel.is_keyframe(frame_at(1.2, xyz=(1.0, 0, 0)))
    nan_pose = dataclasses.replace(frame_at(5.0), T_world_camera=np.full((4, 4), np.nan))
    assert not sel.is_keyframe(nan_pose)


def test_config_is_validated():
    with pytest.raises(ConfigError):
        from_dict(KeyframeConfig, {"min_translation_m": 0})
    with pytest.raises(ConfigError):
        from_dict(KeyframeConfig, {"min_sharpness": -1})

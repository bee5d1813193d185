"""The camera trajectory keeps within the mapper's pose-jump limits at any frame count.

The mapper refuses a frame whose motion since the previous one exceeds ``max_speed_m_s`` (or
``max_angular_speed_deg_s``) times the time between their stamps, plus a small tolerance.
These tests hold every step of every synthetic trajectory to the speed limits alone, without
the tolerance, using the mapper's own rotation measure.
"""

import math

import numpy as np
import pytest

from diff2scene.mapping.mapper import MapperConfig, rotation_angle_deg
from diff2scene.synth.render import (
    CameraTrajectory,
    RenderConfig,
    camera_path,
    camera_trajectory,
    step_motion,
)
from diff2scene.synth.scene import SceneConfig, generate_scene

SEEDS = (0, 3, 7)


def _assert_within_mapper_limits(trajectory: CameraTrajectory) -> None:
    limits = MapperConfig()
    poses = trajectory.poses
    for i in range(1, len(poses)):
        dt_s = (trajectory.stamp_ns(i) - trajectory.stamp_ns(i - 1)) / 1e9
        step_m = float(np.linalg.norm(poses[i, :3, 3] - poses[i - 1, :3, 3]))
        step_deg = rotation_angle_deg(poses[i - 1, :3, :3].T @ poses[i, :3, :3])
        assert step_m <= limits.max_speed_m_s * dt_s, (i, step_m, dt_s)
        assert step_deg <= limits.max_angular_speed_deg_s * dt_s, (i, step_deg, dt_s)


@pytest.mark.parametrize("n_frames", [2, 10, 30, 150, 600])
@pytest.mark.parametrize("seed", SEEDS)
def test_every_step_is_within_the_mapper_limits(seed: int, n_frames: int) -> None:
    config = RenderConfig(n_frames=n_frames)
    trajectory = camera_trajectory(generate_scene(seed), config)
    assert len(trajectory.poses) == n_frames
    _assert_within_mapper_limits(trajectory)
    # And within the camera's own, stricter limits.
    if n_frames > 1:
        step_m, step_deg = step_motion(trajectory.poses)
        period_s = trajectory.frame_period_ns / 1e9
        assert step_m.max() <= config.max_camera_speed_m_s * period_s * (1 + 1e-9)
        assert step_deg.max() <= config.max_camera_angular_speed_deg_s * period_s * (1 + 1e-9)


@pytest.mark.parametrize(
    ("scene_config", "render_config"),
    [
        # A big room with a wide loop: a long path per turn.
        (
            SceneConfig(room_width_range_m=(14.0, 14.0), room_depth_range_m=(12.0, 12.0),
                        camera_path_fraction=0.45, max_objects=0),
            RenderConfig(n_frames=40),
        ),
        # Part of a turn, several turns, and strong swings of the view.
        (SceneConfig(max_objects=0), RenderConfig(n_frames=16, path_turns=0.25)),
        (SceneConfig(max_objects=0), RenderConfig(n_frames=50, path_turns=3.0)),
        (SceneConfig(max_objects=0),
         RenderConfig(n_frames=30, yaw_wobble_deg=80.0, pitch_wobble_deg=30.0)),
    ],
)
def test_other_paths_keep_the_limits_too(
    scene_config: SceneConfig, render_config: RenderConfig
) -> None:
    trajectory = camera_trajectory(generate_scene(1, scene_config), render_config)
    _assert_within_mapper_limits(trajectory)


def test_the_whole_loop_is_flown_whatever_the_frame_count() -> None:
    scene = generate_scene(3)
    centre = scene.centre_m[:2]
    radii = np.array(scene.camera_path_radii_m)
    for n_frames in (10, 30, 300):
        poses = camera_trajectory(scene, RenderConfig(n_frames=n_frames)).poses
        rel = (poses[:, :2, 3] - centre) / radii  # on the unit circle: the loop's parameter
        angles = np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))
        # n frames evenly around one turn: the last is one step short of closing the loop.
        assert angles[-1] - angles[0] == pytest.approx(2 * math.pi * (n_frames - 1) / n_frames)


def test_a_slow_enough_path_keeps_the_frame_rate() -> None:
    config = RenderConfig(n_frames=300)
    trajectory = camera_trajectory(generate_scene(3), config)
    assert trajectory.rate_hz == pytest.approx(30.0)
    expected = [config.start_stamp_ns + round(i * 1e9 / 30) for i in range(300)]
    assert [trajectory.stamp_ns(i) for i in range(300)] == expected
    assert np.array_equal(trajectory.poses, camera_path(generate_scene(3), config))


def test_a_fast_path_spreads_its_stamps_at_a_constant_lower_rate() -> None:
    config = RenderConfig(n_frames=30)
    trajectory = camera_trajectory(generate_scene(3), config)
    assert 1.0 < trajectory.rate_hz < config.rate_hz
    stamps = np.array([trajectory.stamp_ns(i) for i in range(30)])
    assert np.ptp(np.diff(stamps)) <= 1  # constant, up to rounding to the nanosecond
    # The fastest step is at exactly one of the camera's limits.
    step_m, step_deg = step_motion(trajectory.poses)
    period_s = trajectory.frame_period_ns / 1e9
    at_limit = (
        step_m.max() / period_s / config.max_camera_speed_m_s,
        step_deg.max() / period_s / config.max_camera_angular_speed_deg_s,
    )
    assert max(at_limit) == pytest.approx(1.0)


def test_a_single_frame_is_stamped_at_the_start() -> None:
    config = RenderConfig(n_frames=1)
    trajectory = camera_trajectory(generate_scene(3), config)
    assert trajectory.stamp_ns(0) == config.start_stamp_ns
    assert trajectory.rate_hz == pytest.approx(config.rate_hz)


def test_step_motion_measures_translation_and_rotation() -> None:
    poses = np.repeat(np.eye(4)[None], 3, axis=0)
    poses[1, :3, 3] = [0.3, 0.4, 0.0]
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    poses[2, :3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    poses[2, :3, 3] = poses[1, :3, 3]
    step_m, step_deg = step_motion(poses)
    assert step_m == pytest.approx([0.5, 0.0])
    assert step_deg == pytest.approx([0.0, 30.0])


@pytest.mark.parametrize(
    "field", ["max_camera_speed_m_s", "max_camera_angular_speed_deg_s"]
)
def test_camera_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RenderConfig(**{field: 0.0})  # type: ignore[arg-type]

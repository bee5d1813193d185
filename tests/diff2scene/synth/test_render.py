import math

import numpy as np
import pytest

from diff2scene.synth.render import (
    RenderConfig,
    Renderer,
    camera_path,
    camera_trajectory,
    look_at,
    render_frames,
)
from diff2scene.synth.scene import SceneConfig, generate_scene


def _small(*, depth_noise: bool = True, max_range_m: float = 6.0) -> RenderConfig:
    return RenderConfig(
        width=80, height=60, n_frames=4, depth_noise=depth_noise, max_range_m=max_range_m
    )


@pytest.fixture(scope="module")
def empty_room():  # type: ignore[no-untyped-def]
    return generate_scene(5, SceneConfig(max_objects=0))


def _pose(R_cols: list[list[float]], eye: list[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.array(R_cols, dtype=float).T
    T[:3, 3] = eye
    return T


def test_intrinsics_follow_the_field_of_view() -> None:
    intr = RenderConfig(width=640, height=480, hfov_deg=60.0).intrinsics()
    assert intr.fx == pytest.approx(320 / math.tan(math.radians(30)))
    assert intr.fy == intr.fx
    assert (intr.cx, intr.cy) == (319.5, 239.5)


def test_look_at_builds_an_optical_frame() -> None:
    T = look_at(np.array([0.0, 0.0, 1.0]), np.array([2.0, 0.0, 1.0]))
    R = T[:3, :3]
    assert np.allclose(R.T @ R, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    assert np.allclose(R[:, 2], [1, 0, 0])  # z forward
    assert np.allclose(R[:, 0], [0, -1, 0])  # x right of a camera looking along +x
    assert np.allclose(R[:, 1], [0, 0, -1])  # y down


def test_depth_is_z_distance_to_the_floor_when_looking_down(empty_room) -> None:  # type: ignore[no-untyped-def]
    renderer = Renderer(empty_room, _small())
    centre = empty_room.centre_m
    # x right = +x, z forward = -z (down), y down = z × x = -y.
    T = _pose([[1, 0, 0], [0, -1, 0], [0, 0, -1]], [centre[0], centre[1], 1.25])
    view = renderer.render(T)
    floor_id = next(i.instance_id for i in empty_room.instances if i.class_name == "floor")
    assert np.all(view.instance_ids == floor_id)
    assert np.allclose(view.depth_m, 1.25, atol=1e-5)
    assert np.allclose(view.cos_incidence[30, 40], 1.0, atol=0.01)


def test_far_wall_depth_and_instance(empty_room) -> None:  # type: ignore[no-untyped-def]
    renderer = Renderer(empty_room, _small())
    width = empty_room.room_size_m[0]
    eye = np.array([width - 2.0, empty_room.room_size_m[1] / 2, 1.4])
    view = renderer.render(look_at(eye, eye + np.array([1.0, 0.0, 0.0])))
    wall_x = next(
        i.instance_id
        for i in empty_room.instances
        if i.class_name == "wall" and np.allclose(i.vertices[:, 0], width)
    )
    centre = view.instance_ids[25:35, 35:45]
    assert np.all(centre == wall_x)
    assert np.allclose(view.depth_m[25:35, 35:45], 2.0, atol=1e-5)


def test_sensor_depth_noise_stays_within_the_model(empty_room) -> None:  # type: ignore[no-untyped-def]
    config = RenderConfig(width=160, height=120, n_frames=1, max_range_m=3.0)
    renderer = Renderer(empty_room, config)
    # Close to the y=0 wall and looking along it: the wall is seen at grazing angles.
    eye = np.array([0.5, 0.3, 1.4])
    view = renderer.render(look_at(eye, eye + np.array([1.0, 0.0, -0.2])))
    depth = renderer.sensor_depth(view, np.random.default_rng(0))
    valid = depth > 0
    assert 0.3 < valid.mean() < 1.0
    exact = view.depth_m[valid]
    bound = 5 * config.depth_sigma_m(exact) + 0.0005
    assert np.all(np.abs(depth[valid] - exact) <= bound)
    assert np.allclose(depth * 1000, np.round(depth * 1000), atol=1e-3)  # mm quantised
    assert np.all(depth[view.depth_m > config.max_range_m] == 0)
    grazing = view.cos_incidence < math.cos(math.radians(config.grazing_max_deg))
    assert grazing.any() and np.all(depth[grazing] == 0)
    # Noise actually happens (not just quantisation).
    assert np.abs(depth[valid] - exact).max() > 0.0015


def test_noise_free_depth_is_the_quantised_ray_cast(empty_room) -> None:  # type: ignore[no-untyped-def]
    config = _small(depth_noise=False, max_range_m=20.0)
    renderer = Renderer(empty_room, config)
    view = renderer.render(camera_path(empty_room, config)[0])
    depth = renderer.sensor_depth(view, np.random.default_rng(0))
    assert np.array_equal(depth, (np.round(view.depth_m * 1000) / 1000).astype(np.float32))


def test_frames_are_deterministic_and_stamped_by_the_trajectory() -> None:
    scene = generate_scene(3)
    config = _small()
    a, b = list(render_frames(scene, config)), list(render_frames(scene, config))
    assert len(a) == config.n_frames
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.rgb, y.rgb)
        assert np.array_equal(x.depth_m, y.depth_m)
        assert np.array_equal(x.instance_ids, y.instance_ids)  # type: ignore[arg-type]
        assert np.array_equal(x.T_world_camera, y.T_world_camera)
    stamps = [f.stamp_ns for f in a]
    trajectory = camera_trajectory(scene, config)
    assert stamps == [trajectory.stamp_ns(i) for i in range(config.n_frames)]
    assert stamps[0] == config.start_stamp_ns
    for frame, pose in zip(a, trajectory.poses, strict=True):
        assert np.array_equal(frame.T_world_camera, pose)
    f = a[0]
    assert f.rgb.shape == (60, 80, 3) and f.rgb.dtype == np.uint8
    assert f.depth_m.dtype == np.float32 and f.instance_ids is not None
    assert f.instance_ids.dtype == np.int32
    ids = {inst.instance_id for inst in scene.instances}
    assert set(np.unique(f.instance_ids)) <= ids
    assert len(np.unique(f.instance_ids)) >= 3


def test_camera_path_is_smooth_and_inside_the_room() -> None:
    scene = generate_scene(2)
    poses = camera_path(scene, RenderConfig(n_frames=300))
    eyes = poses[:, :3, 3]
    assert np.all(eyes > 0) and np.all(eyes < scene.room_size_m)
    assert np.linalg.norm(np.diff(eyes, axis=0), axis=1).max() < 0.1  # < 3 m/s at 30 Hz
    rel = np.einsum("nji,njk->nik", poses[:-1, :3, :3], poses[1:, :3, :3])
    angles = np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert np.degrees(angles).max() < 5.0
    assert np.allclose(poses[:, 3], [0, 0, 0, 1])


def test_bad_render_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="8x8"):
        RenderConfig(width=4)
    with pytest.raises(ValueError, match="max_range_m"):
        RenderConfig(max_range_m=100.0)

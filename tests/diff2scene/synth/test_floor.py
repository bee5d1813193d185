"""Building floors: rooms joined by doorways along corridors, and the camera's tour of them.

The tour is checked against the geometry itself: every step between two frames is a ray cast
against every triangle of the floor, so a camera that walked through a wall, a jamb or a
piece of furniture fails, whatever the layout code believes.
"""

import math

import numpy as np
import open3d as o3d
import pytest

from diff2scene.errors import ConfigError
from diff2scene.mapping.mapper import MapperConfig, rotation_angle_deg
from diff2scene.synth.classes import class_by_id
from diff2scene.synth.floor import Floor, FloorConfig, generate_floor
from diff2scene.synth.floor_route import FloorRoute, FloorRouteConfig, floor_route
from diff2scene.synth.groundtruth import GroundTruth
from diff2scene.synth.render import RenderConfig, step_motion
from diff2scene.synth.scene import SceneConfig, SceneInstance

#: Small rooms keep the tests fast; 2 x 3 rooms give two corridors, one of them single-loaded.
ROOMS = SceneConfig(room_width_range_m=(3.0, 4.0), room_depth_range_m=(3.0, 3.5))
LAYOUT = FloorConfig(rooms_x=2, rooms_y=3)
STRUCTURE = ("wall", "floor", "ceiling")


@pytest.fixture(scope="module", params=[0, 5])
def floor(request: pytest.FixtureRequest) -> Floor:
    return generate_floor(request.param, LAYOUT, ROOMS)


@pytest.fixture(scope="module")
def route(floor: Floor) -> FloorRoute:
    return floor_route(floor, RenderConfig(), FloorRouteConfig())


def _raycaster(instances: list[SceneInstance]) -> o3d.t.geometry.RaycastingScene:
    scene = o3d.t.geometry.RaycastingScene()
    for inst in instances:
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor.from_numpy(inst.vertices.astype(np.float32))
        mesh.triangle.indices = o3d.core.Tensor.from_numpy(inst.triangles)
        scene.add_triangles(mesh)
    return scene


def _first_hit_m(
    scene: o3d.t.geometry.RaycastingScene, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """(N,) distance from each (N, 3) start toward its end to the first surface (inf: none)."""
    direction = end - start
    rays = np.concatenate([start, direction / np.linalg.norm(direction, axis=1)[:, None]], axis=1)
    tensor = o3d.core.Tensor.from_numpy(np.ascontiguousarray(rays, dtype=np.float32))
    hit: np.ndarray = scene.cast_rays(tensor)["t_hit"].numpy()
    return hit


def test_same_seed_same_floor_other_seed_other_floor() -> None:
    a, b = generate_floor(3, LAYOUT, ROOMS), generate_floor(3, LAYOUT, ROOMS)
    assert [r.rect_m for r in a.rooms] == [r.rect_m for r in b.rooms]
    assert len(a.instances) == len(b.instances)
    for x, y in zip(a.instances, b.instances, strict=True):
        assert (x.class_name, x.colour_name) == (y.class_name, y.colour_name)
        assert np.array_equal(x.vertices, y.vertices)
    c = generate_floor(4, LAYOUT, ROOMS)
    assert [r.rect_m for r in a.rooms] != [r.rect_m for r in c.rooms]


def test_layout_rooms_open_onto_corridors_that_join_the_spine(floor: Floor) -> None:
    t = LAYOUT.wall_thickness_m
    assert len(floor.rooms) == 6 and len(floor.corridors_m) == 2
    rects = [r.rect_m for r in floor.rooms] + list(floor.corridors_m) + [floor.spine_m]
    for i, a in enumerate(rects):
        assert 0 < a[0] < a[1] < floor.extent_m[0] and 0 < a[2] < a[3] < floor.extent_m[1]
        for b in rects[i + 1:]:  # no two spaces overlap
            assert a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2], (a, b)
    for corridor in floor.corridors_m:
        # Open onto the spine along the corridor's whole width.
        assert corridor[0] == pytest.approx(floor.spine_m[1])
        assert floor.spine_m[2] < corridor[2] < corridor[3] < floor.spine_m[3]
    for room in floor.rooms:
        x0, x1, y0, y1 = room.rect_m
        corridor = floor.corridors_m[room.corridor]
        door_x, door_y = room.door_xy_m
        # The doorway is in the room's wall, a wall's thickness from the corridor's side.
        assert door_y in (y0, y1)
        beyond = door_y - room.inward[1] * t
        assert beyond == pytest.approx(corridor[2] if room.inward[1] < 0 else corridor[3])
        margin = LAYOUT.door_margin_m + LAYOUT.door_width_m / 2
        assert x0 + margin <= door_x <= x1 - margin
        assert corridor[0] < door_x < corridor[1]
        assert room.rect_m[1] - room.rect_m[0] >= ROOMS.room_width_range_m[0]


def test_instances_are_numbered_and_furniture_stays_in_its_room(floor: Floor) -> None:
    assert [i.instance_id for i in floor.instances] == list(range(1, len(floor.instances) + 1))
    names = [i.class_name for i in floor.instances]
    # Spine and two corridors (each floor, ceiling, walls), then per room floor, ceiling, 4 walls.
    assert names.count("floor") == names.count("ceiling") == 3 + 6
    assert names.count("wall") == 4 + 2 * 3 + 6 * 4
    rooms = [r.rect_m for r in floor.rooms]
    furniture = [i for i in floor.instances if i.class_name not in STRUCTURE]
    assert len(furniture) >= 6 * 3
    for inst in furniture:
        lo, hi = inst.bbox_m()
        assert inst.colour_name in class_by_id(inst.class_id).colours
        assert any(
            x0 - 1e-6 <= lo[0] and hi[0] <= x1 + 1e-6 and y0 - 1e-6 <= lo[1]
            and hi[1] <= y1 + 1e-6
            for x0, x1, y0, y1 in rooms
        ), inst
        assert hi[2] <= floor.height_m


def test_walls_close_the_rooms_and_doorways_open_them(floor: Floor) -> None:
    walls = _raycaster([i for i in floor.instances if i.class_name == "wall"])
    z = 1.2
    for room in floor.rooms:
        door = np.array([*room.door_xy_m, z])
        corridor = np.array([*room.corridor_xy_m, z])
        # Through the doorway: nothing between the room and the corridor's centre line.
        start = door + 0.3 * np.array([*room.inward, 0.0])
        hit = _first_hit_m(walls, start[None], corridor[None])
        assert hit[0] > np.linalg.norm(corridor - start), room
        # Anywhere else, a wall: a doorway's width beside it, and toward every other room.
        inward = np.array([*room.inward, 0.0])
        side = 1.0 if room.path_centre_xy_m[0] >= room.door_xy_m[0] else -1.0
        beside = door + np.array([side * LAYOUT.door_width_m, 0.0, 0.0])
        hit = _first_hit_m(walls, (beside + 0.3 * inward)[None], (beside - inward)[None])
        assert hit[0] == pytest.approx(0.3, abs=1e-4), room
        for other in floor.rooms:
            if other.index == room.index:
                continue
            # Rooms facing each other across a corridor may see each other through both
            # doorways, but never above them.
            height = z if other.row == room.row else (LAYOUT.door_height_m + floor.height_m) / 2
            start = np.array([*room.path_centre_xy_m, height])
            target = np.array([*other.path_centre_xy_m, height])
            hit = _first_hit_m(walls, start[None], target[None])
            assert hit[0] < np.linalg.norm(target - start), (room.index, other.index)


def test_route_visits_every_room_and_ends_in_the_first(floor: Floor, route: FloorRoute) -> None:
    n_rooms = len(floor.rooms)
    assert sorted(route.visit_order[:-1]) == list(range(n_rooms))
    first = route.visit_order[0]
    assert route.visit_order[-1] == first
    assert set(np.unique(route.frame_room)) == {-1, *range(n_rooms)}
    assert route.frame_room[0] == -1  # starts in the corridor
    assert route.frame_room[-1] == first
    # Two stays in the first room, far apart; one in every other room.
    visits = route.room_visits(first)
    assert len(visits) == 2 and visits[1][0] - visits[0][1] > route.n_frames // 2
    for room in floor.rooms:
        if room.index != first:
            assert len(route.room_visits(room.index)) == 1
    # Each stay sweeps the room: its eyes go all the way round the room's centre.
    for room in floor.rooms:
        start, end = route.room_visits(room.index)[-1]
        rel = route.trajectory.poses[start:end + 1, :2, 3] - np.array(room.path_centre_xy_m)
        angles = np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))
        assert np.ptp(angles) > 1.9 * math.pi, room.index
    described = route.describe()
    assert described["first_room_frames"] == [list(visits[0]), list(visits[1])]


def test_route_never_passes_through_a_surface(floor: Floor, route: FloorRoute) -> None:
    eyes = route.trajectory.poses[:, :3, 3]
    assert np.all(eyes[:, :2] > 0) and np.all(eyes[:, :2] < floor.extent_m[:2])
    assert np.all((eyes[:, 2] > 1.0) & (eyes[:, 2] < LAYOUT.door_height_m - 0.1))
    step = np.linalg.norm(np.diff(eyes, axis=0), axis=1)
    moving = step > 1e-9
    everything = _raycaster(list(floor.instances))
    hit = _first_hit_m(everything, eyes[:-1][moving], eyes[1:][moving])
    assert np.all(hit > step[moving]), np.flatnonzero(hit <= step[moving])
    for inst in floor.instances:
        if inst.class_name in STRUCTURE:
            continue
        lo, hi = inst.bbox_m()
        assert not np.any(np.all((eyes > lo) & (eyes < hi), axis=1)), inst


@pytest.mark.parametrize("n_frames", [None, 40, 400])
def test_every_step_keeps_the_camera_and_mapper_limits(floor: Floor, n_frames: int | None) -> None:
    render = RenderConfig()
    route = floor_route(floor, render, FloorRouteConfig(n_frames=n_frames))
    trajectory = route.trajectory
    if n_frames is not None:
        assert route.n_frames == n_frames
    # The camera's own limits, at its constant frame rate.
    step_m, step_deg = step_motion(trajectory.poses)
    period_s = trajectory.frame_period_ns / 1e9
    assert period_s >= 1 / render.rate_hz * (1 - 1e-9)
    assert step_m.max() <= render.max_camera_speed_m_s * period_s * (1 + 1e-9)
    assert step_deg.max() <= render.max_camera_angular_speed_deg_s * period_s * (1 + 1e-9)
    # The mapper's, measured its way between the rounded stamps.
    limits = MapperConfig()
    poses = trajectory.poses
    for i in range(1, len(poses)):
        dt_s = (trajectory.stamp_ns(i) - trajectory.stamp_ns(i - 1)) / 1e9
        assert np.linalg.norm(poses[i, :3, 3] - poses[i - 1, :3, 3]) <= limits.max_speed_m_s * dt_s
        turn = rotation_angle_deg(poses[i - 1, :3, :3].T @ poses[i, :3, :3])
        assert turn <= limits.max_angular_speed_deg_s * dt_s


def test_default_frame_count_follows_the_spacing(floor: Floor) -> None:
    coarse = floor_route(floor, RenderConfig(), FloorRouteConfig(frame_spacing_m=0.2,
                                                                 frame_spacing_deg=8.0))
    fine = floor_route(floor, RenderConfig(), FloorRouteConfig())
    assert fine.n_frames == pytest.approx(2 * coarse.n_frames, rel=0.01)
    # Walking frames are at most frame_spacing_m apart.
    step_m, _ = step_motion(fine.trajectory.poses)
    assert step_m.max() <= 0.1 + 1e-9
    assert fine.path_length_m == pytest.approx(coarse.path_length_m)


def test_ground_truth_of_a_floor(floor: Floor) -> None:
    gt = GroundTruth.from_scene(floor, points_per_m2=20.0)
    assert gt.metadata["seed"] == floor.seed
    assert len(gt.metadata["floor"]["rooms"]) == len(floor.rooms)
    assert len(gt.instances) == len(floor.instances)
    # Every instance is sampled: walls of every room, jambs, furniture.
    assert set(np.unique(gt.point_instance)) == {i.instance_id for i in floor.instances}
    assert np.all(gt.points.min(axis=0) >= -1e-4)
    assert np.all(gt.points.max(axis=0) <= floor.extent_m + 1e-4)


def test_a_thousand_square_metre_floor_is_quick_to_build() -> None:
    floor = generate_floor(0, FloorConfig(rooms_x=6, rooms_y=5))
    assert floor.area_m2 >= 1000
    assert len(floor.rooms) == 30 and len(floor.corridors_m) == 3


def test_configs_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigError, match="doorway"):
        generate_floor(0, FloorConfig(door_width_m=1.2),
                       SceneConfig(room_width_range_m=(1.5, 2.0)))
    with pytest.raises(ConfigError, match="lintel"):
        generate_floor(0, FloorConfig(door_height_m=2.6),
                       SceneConfig(room_height_range_m=(2.5, 3.0)))
    with pytest.raises(ConfigError, match="under"):
        floor_route(generate_floor(0, LAYOUT, ROOMS), RenderConfig(camera_height_m=2.0),
                    FloorRouteConfig())
    with pytest.raises(ValueError, match="rooms_x"):
        FloorConfig(rooms_x=0)
    with pytest.raises(ValueError, match="n_frames"):
        FloorRouteConfig(n_frames=1)

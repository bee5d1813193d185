"""The camera's tour of a building floor: every room, then back into the first one.

The camera starts where the first corridor meets the spine and walks each corridor's centre
line east. At each doorway it turns to it, walks straight in, heads for the room's sweep
ellipse, flies once around it looking at the room (the single-room path's view: toward the
centre with slow swings of yaw, pitch and height), and leaves the way it came. At a
corridor's end it walks back to the spine and on to the next corridor. Finally it returns to
the first room and sweeps it again, so that a map of the whole floor can be checked against
a second look at the room seen first (the revisit).

The route is a polyline of key poses whose legs are straight walks, turns on the spot and the
sweeps; the generator of :mod:`diff2scene.synth.floor` keeps the doorways, the entries and
the ellipses clear of furniture, and corridors are empty, so the camera never passes through
a wall or an object. Frames are spread evenly in "effort" (a leg costs its length over
``frame_spacing_m`` or its turn over ``frame_spacing_deg``, whichever is more), so walking
and turning on the spot both get frames, and the stamps then come from
:func:`~diff2scene.synth.render.timed_trajectory`: at ``rate_hz`` or slower, never faster
than the camera's speed limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import ConfigError
from diff2scene.synth.render import CameraTrajectory, RenderConfig, look_along, timed_trajectory

if TYPE_CHECKING:
    from diff2scene.synth.floor import Floor, FloorRoom


@dataclass
class FloorRouteConfig:
    """How densely the camera's tour of a floor is sampled (its height, pitch and swings
    are the ``RenderConfig``'s)."""

    #: Distance between frames while walking, metres (when ``n_frames`` is not given).
    frame_spacing_m: float = 0.1
    #: Turn between frames while turning on the spot, degrees (when ``n_frames`` is not given).
    frame_spacing_deg: float = 4.0
    #: Frames along the whole tour, spread evenly over it; None: as many as the spacings give.
    n_frames: int | None = None
    #: Turns around each room's sweep ellipse.
    sweep_turns: float = 1.0
    #: Key poses per turn of a sweep (the frames interpolate between them).
    sweep_points_per_turn: int = 180

    def __post_init__(self) -> None:
        if self.frame_spacing_m <= 0 or self.frame_spacing_deg <= 0:
            raise ValueError("frame_spacing_m and frame_spacing_deg must be > 0")
        if self.n_frames is not None and self.n_frames < 2:
            raise ValueError(f"n_frames must be >= 2 (or None), got {self.n_frames}")
        if self.sweep_turns <= 0 or self.sweep_points_per_turn < 8:
            raise ValueError("sweep_turns > 0 and sweep_points_per_turn >= 8 required")


@dataclass(frozen=True)
class FloorRoute:
    """A floor's camera trajectory and where along it the camera is."""

    trajectory: CameraTrajectory
    #: (N,) int32 room index (into ``Floor.rooms``) the camera is in at each frame; -1 in a
    #: corridor or a doorway.
    frame_room: NDArray[np.int32]
    #: Rooms in the order they are swept; the last is the first again (the revisit).
    visit_order: tuple[int, ...]
    #: Length of the walk, metres.
    path_length_m: float

    @property
    def n_frames(self) -> int:
        return len(self.trajectory.poses)

    def room_visits(self, room: int) -> list[tuple[int, int]]:
        """[first, last] frame index of each stay in ``room``, in order."""
        inside = np.flatnonzero(self.frame_room == room)
        if len(inside) == 0:
            return []
        breaks = np.flatnonzero(np.diff(inside) > 1)
        starts = np.concatenate([[inside[0]], inside[breaks + 1]])
        ends = np.concatenate([inside[breaks], [inside[-1]]])
        return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]

    def describe(self) -> dict[str, Any]:
        """Provenance for the ground truth's metadata: the visiting order and the frames of
        the first and the last stay in the first room (the revisit)."""
        first = self.visit_order[0]
        visits = self.room_visits(first)
        return {
            "visit_order": list(self.visit_order),
            "path_length_m": self.path_length_m,
            "first_room": first,
            "first_room_frames": [list(visits[0]), list(visits[-1])] if visits else [],
        }


class _KeyPoses:
    """The route as key poses (x, y, z, yaw, pitch); yaw is kept unwrapped so that linear
    interpolation between two key poses turns the short way."""

    def __init__(self, xy: NDArray[np.float64], yaw_rad: float, render: RenderConfig) -> None:
        self.render = render
        self.rows: list[tuple[float, float, float, float, float]] = []
        self.rows.append((float(xy[0]), float(xy[1]), render.camera_height_m, yaw_rad,
                          math.radians(render.pitch_deg)))

    @property
    def xy(self) -> NDArray[np.float64]:
        return np.array(self.rows[-1][:2])

    def pose(self, xy: NDArray[np.float64], z: float, yaw: float, pitch: float) -> None:
        """Add a key pose; ``yaw`` is unwrapped against the previous one."""
        last = self.rows[-1][3]
        yaw = last + (yaw - last + math.pi) % (2 * math.pi) - math.pi
        self.rows.append((float(xy[0]), float(xy[1]), z, yaw, pitch))

    def turn_to(self, yaw: float) -> None:
        """Turn on the spot to ``yaw`` at the walking height and pitch."""
        self.pose(self.xy, self.render.camera_height_m, yaw, math.radians(self.render.pitch_deg))

    def walk_to(self, xy: NDArray[np.float64]) -> None:
        """Face ``xy``, then walk straight to it."""
        delta = xy - self.xy
        if float(np.hypot(*delta)) < 1e-9:
            return
        heading = math.atan2(float(delta[1]), float(delta[0]))
        self.turn_to(heading)
        self.pose(xy, self.render.camera_height_m, heading, math.radians(self.render.pitch_deg))

    def sweep(self, room: FloorRoom, turns: float, points_per_turn: int) -> None:
        """Around the room's ellipse from its start angle, looking toward the centre with the
        single-room path's swings, which all start (and, after whole turns, end) at zero."""
        cfg = self.render
        n = max(2, math.ceil(turns * points_per_turn) + 1)
        phase = np.linspace(0.0, 2 * math.pi * turns, n)
        eyes = room.sweep_xy(room.path_start_rad + phase)
        centre = np.array(room.path_centre_xy_m)
        for ph, eye in zip(phase, eyes, strict=True):
            to_centre = math.atan2(centre[1] - eye[1], centre[0] - eye[0])
            self.pose(
                eye,
                cfg.camera_height_m + cfg.height_wobble_m * math.sin(3 * ph),
                to_centre + math.radians(cfg.yaw_wobble_deg) * math.sin(2 * ph),
                math.radians(cfg.pitch_deg + cfg.pitch_wobble_deg * math.sin(5 * ph)),
            )

    def visit(self, room: FloorRoom, config: FloorRouteConfig, *, leave: bool = True) -> None:
        """From the corridor in front of ``room``: in, around, and (if ``leave``) back out the
        way it came to the corridor."""
        corridor, entry = np.array(room.corridor_xy_m), np.array(room.entry_xy_m)
        self.walk_to(corridor)
        self.walk_to(entry)
        self.walk_to(room.sweep_xy(np.array([room.path_start_rad]))[0])
        self.sweep(room, config.sweep_turns, config.sweep_points_per_turn)
        if leave:
            self.walk_to(entry)
            self.walk_to(corridor)

    def arrays(self) -> NDArray[np.float64]:
        """(K, 5) key poses with no two in a row the same."""
        keys = np.array(self.rows)
        keep = np.concatenate([[True], np.any(np.abs(np.diff(keys, axis=0)) > 1e-12, axis=1)])
        out: NDArray[np.float64] = keys[keep]
        return out


def _effort(keys: NDArray[np.float64], config: FloorRouteConfig) -> NDArray[np.float64]:
    """(K,) cumulative effort, in frames at the configured spacings, along (K, 5) key poses."""
    step = np.diff(keys, axis=0)
    dist_m = np.linalg.norm(step[:, :3], axis=1)
    # |d yaw| + |d pitch| bounds the angle between the two views from above.
    turn_deg = np.degrees(np.abs(step[:, 3]) + np.abs(step[:, 4]))
    leg = np.maximum(dist_m / config.frame_spacing_m, turn_deg / config.frame_spacing_deg)
    return np.concatenate([[0.0], np.cumsum(leg)])


def floor_route(floor: Floor, render: RenderConfig, config: FloorRouteConfig) -> FloorRoute:
    """The camera's tour of ``floor`` (see the module docstring), stamped within the speed
    limits of ``render``. ``ConfigError`` if the camera would not pass under the doorways."""
    top = render.camera_height_m + render.height_wobble_m
    if top > floor.config.door_height_m - 0.1:
        raise ConfigError(
            f"a camera up to {top:.2f} m high does not pass under "
            f"{floor.config.door_height_m} m doorways"
        )
    by_corridor: list[list[FloorRoom]] = [[] for _ in floor.corridors_m]
    for room in floor.rooms:
        by_corridor[room.corridor].append(room)
    for rooms in by_corridor:
        rooms.sort(key=lambda r: (r.door_xy_m[0], r.index))
    junctions = [np.array([floor.spine_x_m, floor.corridor_y_m(k)])
                 for k in range(len(floor.corridors_m))]
    route = _KeyPoses(junctions[0], 0.0, render)
    order: list[int] = []
    for k, rooms in enumerate(by_corridor):
        route.walk_to(junctions[k])
        for room in rooms:
            route.visit(room, config)
            order.append(room.index)
        route.walk_to(junctions[k])
    first = floor.rooms[order[0]]
    route.walk_to(junctions[first.corridor])
    route.visit(first, config, leave=False)
    order.append(first.index)

    keys = route.arrays()
    effort = _effort(keys, config)
    n = config.n_frames or math.ceil(effort[-1]) + 1
    at = np.linspace(0.0, effort[-1], n)
    sampled = np.stack([np.interp(at, effort, keys[:, c]) for c in range(5)], axis=1)
    poses = np.stack([look_along(row[:3], row[3], row[4]) for row in sampled])
    length = float(np.linalg.norm(np.diff(keys[:, :3], axis=0), axis=1).sum())
    return FloorRoute(
        trajectory=timed_trajectory(poses, render),
        frame_room=floor.room_at(sampled[:, :2]),
        visit_order=tuple(order),
        path_length_m=length,
    )

"""Procedural building floors: furnished rooms along corridors, joined by doorways.

A floor is a grid of ``rooms_x`` x ``rooms_y`` rooms. Rows of rooms face each other in pairs
across a corridor that runs along x (row 0 below corridor 0, row 1 above it, row 2 below
corridor 1, ...); a spine corridor along y on the west side joins the corridors' west ends.
Every room has one doorway, onto its corridor. Walls have a thickness: each space (room,
corridor, spine) has its own wall panels facing into it, the doorways have jambs, a soffit and
a threshold, and the wall between two spaces is never seen from inside, as in a real building.

Column widths and row depths are drawn from the room size ranges of the
:class:`~diff2scene.synth.scene.SceneConfig`, and every room is furnished by the same code as a
single room (:func:`~diff2scene.synth.scene.furnish_room`), with its camera path (the doorway,
the entry and the ellipse of its sweep) kept clear of tall furniture, so the route of
:mod:`diff2scene.synth.floor_route` never passes through a wall or an object.

Randomness: the layout comes from ``default_rng(seed)``, each room's colours and furniture from
``default_rng([seed, 1, room])`` and the corridors' colours from ``default_rng([seed, 2])``, so
a seed names a floor exactly and one room's contents do not depend on the others'.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import ConfigError
from diff2scene.synth.classes import class_by_name
from diff2scene.synth.floor_route import FloorRouteConfig
from diff2scene.synth.scene import (
    Doorway,
    SceneConfig,
    SceneInstance,
    add_instance,
    camera_path_radii,
    ellipse_path_xy,
    furnish_room,
    structure_colours,
    wall_frame,
)

#: An axis-aligned rectangle (xmin, xmax, ymin, ymax), metres.
Rect = tuple[float, float, float, float]

#: Wall of a room (as numbered by :func:`~diff2scene.synth.scene.wall_frame`) with its door:
#: rows below their corridor open to the north (wall 2), rows above it to the south (wall 0).
_NORTH, _SOUTH = 2, 0


@dataclass
class FloorConfig:
    """How a building floor is laid out and toured (room sizes and contents: ``SceneConfig``)."""

    #: Rooms along x (columns).
    rooms_x: int = 2
    #: Rooms along y (rows); rows pair up across corridors.
    rooms_y: int = 2
    #: Clear width of the corridors and of the spine that joins them, metres.
    corridor_width_m: float = 2.0
    #: Clear width of a doorway, metres.
    door_width_m: float = 1.0
    #: Clear height of a doorway, metres.
    door_height_m: float = 2.1
    #: Thickness of every wall, metres.
    wall_thickness_m: float = 0.12
    #: Least wall left between a doorway and the room's corner, metres.
    door_margin_m: float = 0.3
    #: How far into a room the camera walks straight through its doorway before it heads for
    #: its sweep, metres (less in a room too shallow for it).
    entry_depth_m: float = 0.6
    #: The camera's tour of the floor.
    route: FloorRouteConfig = field(default_factory=FloorRouteConfig)

    def __post_init__(self) -> None:
        if self.rooms_x < 1 or self.rooms_y < 1:
            raise ValueError(f"rooms_x and rooms_y must be >= 1, got {self.rooms_x}x{self.rooms_y}")
        if self.corridor_width_m < 1.0:
            raise ValueError(f"corridor_width_m must be >= 1.0, got {self.corridor_width_m}")
        if self.door_width_m < 0.6 or self.door_height_m < 1.9:
            raise ValueError(
                "a doorway the camera walks through needs door_width_m >= 0.6 and "
                f"door_height_m >= 1.9, got {self.door_width_m} x {self.door_height_m}"
            )
        if not 0.02 <= self.wall_thickness_m <= 0.5:
            raise ValueError(
                f"wall_thickness_m must be in [0.02, 0.5], got {self.wall_thickness_m}"
            )
        if self.door_margin_m < 0 or self.entry_depth_m <= 0:
            raise ValueError("door_margin_m >= 0 and entry_depth_m > 0 required")


@dataclass(frozen=True)
class FloorRoom:
    """One room of a floor and the camera's way into it."""

    #: Position in :attr:`Floor.rooms`: ``row * rooms_x + column``.
    index: int
    column: int
    row: int
    #: Index of the corridor its doorway opens onto.
    corridor: int
    #: Clear floor area (inside the walls).
    rect_m: Rect
    #: Centre of the doorway on the room's side of the wall, at floor level (x, y).
    door_xy_m: tuple[float, float]
    #: Unit vector from the doorway into the room (x, y).
    inward: tuple[float, float]
    #: Point on the corridor's centre line in front of the doorway (x, y).
    corridor_xy_m: tuple[float, float]
    #: Where the camera, having walked straight in, turns toward its sweep (x, y).
    entry_xy_m: tuple[float, float]
    #: Centre and semi-axes of the sweep's ellipse (x, y), metres.
    path_centre_xy_m: tuple[float, float]
    path_radii_m: tuple[float, float]
    #: Angle on the ellipse where the sweep starts and ends, the point nearest the entry.
    path_start_rad: float

    def contains(self, xy: NDArray[np.float64]) -> NDArray[np.bool_]:
        """(N,) whether (N, 2) points lie inside the room's clear area."""
        x0, x1, y0, y1 = self.rect_m
        return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)

    def sweep_xy(self, theta: NDArray[np.float64]) -> NDArray[np.float64]:
        """(N, 2) points of the sweep's ellipse at angles ``theta``."""
        (cx, cy), (a, b) = self.path_centre_xy_m, self.path_radii_m
        return np.stack([cx + a * np.cos(theta), cy + b * np.sin(theta)], axis=1)


@dataclass(frozen=True)
class Floor:
    """A generated building floor: its spaces, their instances, and the rooms' ways in."""

    seed: int
    config: FloorConfig
    #: (3,) size of the box [0, extent] that holds the floor (outer walls included).
    extent_m: NDArray[np.float64]
    #: Floor-to-ceiling height everywhere, metres.
    height_m: float
    rooms: tuple[FloorRoom, ...]
    #: Clear rectangles of the corridors along x, south to north.
    corridors_m: tuple[Rect, ...]
    #: Clear rectangle of the spine corridor along y that joins the corridors' west ends.
    spine_m: Rect
    instances: tuple[SceneInstance, ...] = field(repr=False)

    @property
    def spine_x_m(self) -> float:
        """x of the spine's centre line."""
        return (self.spine_m[0] + self.spine_m[1]) / 2

    def corridor_y_m(self, corridor: int) -> float:
        """y of a corridor's centre line."""
        rect = self.corridors_m[corridor]
        return (rect[2] + rect[3]) / 2

    @property
    def area_m2(self) -> float:
        """Gross floor area (outer walls included), square metres."""
        return float(self.extent_m[0] * self.extent_m[1])

    def room_at(self, xy: NDArray[np.float64]) -> NDArray[np.int32]:
        """(N,) index of the room each of (N, 2) points is in; -1 outside every room."""
        out = np.full(len(xy), -1, dtype=np.int32)
        for room in self.rooms:
            out[room.contains(xy)] = room.index
        return out

    def describe(self) -> dict[str, Any]:
        """Provenance for the ground truth's metadata (JSON-serialisable)."""
        return {
            "seed": self.seed,
            "floor": {
                "rooms_x": self.config.rooms_x,
                "rooms_y": self.config.rooms_y,
                "extent_m": [float(v) for v in self.extent_m],
                "area_m2": self.area_m2,
                "corridors_m": [list(r) for r in self.corridors_m],
                "spine_m": list(self.spine_m),
                "rooms": [
                    {"index": r.index, "column": r.column, "row": r.row,
                     "corridor": r.corridor, "rect_m": list(r.rect_m),
                     "door_xy_m": list(r.door_xy_m)}
                    for r in self.rooms
                ],
            },
        }


# --------------------------------------------------------------------------- meshes


class _Mesh:
    """Quads gathered into one instance's vertex and triangle arrays."""

    def __init__(self) -> None:
        self._corners: list[NDArray[np.float64]] = []

    def quad(self, corners: NDArray[np.float64]) -> None:
        """Four (4, 3) corners in order around the quad."""
        self._corners.append(np.asarray(corners, dtype=np.float64))

    def horizontal(self, rect: Rect, z: float) -> None:
        """A horizontal rectangle at height ``z``, normal up (a floor: seen from above)."""
        x0, x1, y0, y1 = rect
        self.quad(np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]))

    def arrays(self) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
        vertices = np.concatenate(self._corners)
        base = 4 * np.arange(len(self._corners), dtype=np.int32)[:, None, None]
        triangles = (base + np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)).reshape(-1, 3)
        return vertices, triangles


def _wall_side(
    mesh: _Mesh, rect: Rect, wall: int, height_m: float,
    openings: list[tuple[float, float, float]],
) -> None:
    """The panels of one side of a space, leaving (s0, s1, top) openings along it.

    ``s`` runs along the wall as :func:`~diff2scene.synth.scene.wall_frame` numbers it; an
    opening lower than the ceiling keeps a lintel above it.
    """
    x0, x1, y0, y1 = rect
    start, along, _ = wall_frame(wall, x1 - x0, y1 - y0)
    start = start + np.array([x0, y0])
    length = (x1 - x0) if wall % 2 == 0 else (y1 - y0)

    def panel(s0: float, s1: float, z0: float, z1: float) -> None:
        a, b = start + along * s0, start + along * s1
        mesh.quad(np.array([[a[0], a[1], z0], [b[0], b[1], z0], [b[0], b[1], z1],
                            [a[0], a[1], z1]]))

    cursor = 0.0
    for s0, s1, top in sorted(openings):
        if s0 > cursor:
            panel(cursor, s0, 0.0, height_m)
        if top < height_m:
            panel(s0, s1, top, height_m)
        cursor = max(cursor, s1)
    if cursor < length:
        panel(cursor, length, 0.0, height_m)


def _door_reveal(
    wall_mesh: _Mesh, floor_mesh: _Mesh, *, door_x: float, y_room: float, y_corridor: float,
    width_m: float, height_m: float,
) -> None:
    """Jambs and soffit (onto the room's wall) and threshold (onto its floor) of a doorway
    through the wall between the lines y = ``y_room`` and y = ``y_corridor``."""
    xa, xb = door_x - width_m / 2, door_x + width_m / 2
    for x in (xa, xb):
        wall_mesh.quad(np.array([[x, y_room, 0.0], [x, y_corridor, 0.0],
                                 [x, y_corridor, height_m], [x, y_room, height_m]]))
    lo, hi = min(y_room, y_corridor), max(y_room, y_corridor)
    wall_mesh.horizontal((xa, xb, lo, hi), height_m)
    floor_mesh.horizontal((xa, xb, lo, hi), 0.0)


def _add_ceiling(
    instances: list[SceneInstance], rng: np.random.Generator, rect: Rect, height_m: float
) -> None:
    spec = class_by_name("ceiling")
    mesh = _Mesh()
    x0, x1, y0, y1 = rect
    # Wound the other way round from a floor: its normal points down, into the space.
    mesh.quad(np.array([[x0, y0, height_m], [x0, y1, height_m], [x1, y1, height_m],
                        [x1, y0, height_m]]))
    add_instance(instances, spec, str(rng.choice(np.array(spec.colours))), *mesh.arrays())


def _add_corridor(
    instances: list[SceneInstance], rng: np.random.Generator, colours: tuple[str, str], *,
    rect: Rect, height_m: float, openings: dict[int, list[tuple[float, float, float]]],
    open_side: int | None = None,
) -> None:
    """Floor, ceiling and wall sides (one instance each) of a corridor; ``open_side`` has no
    wall at all (where a corridor runs into the spine)."""
    wall_colour, floor_colour = colours
    floor = _Mesh()
    floor.horizontal(rect, 0.0)
    add_instance(instances, class_by_name("floor"), floor_colour, *floor.arrays())
    _add_ceiling(instances, rng, rect, height_m)
    for side in range(4):
        if side == open_side:
            continue
        mesh = _Mesh()
        _wall_side(mesh, rect, side, height_m, openings.get(side, []))
        add_instance(instances, class_by_name("wall"), wall_colour, *mesh.arrays())


# --------------------------------------------------------------------------- layout


def _check_fits(config: FloorConfig, room: SceneConfig) -> None:
    """Refuse room sizes that cannot hold the doorway (ConfigError)."""
    need = config.door_width_m + 2 * config.door_margin_m
    if room.room_width_range_m[0] < need:
        raise ConfigError(
            f"rooms {room.room_width_range_m[0]} m wide cannot hold a {config.door_width_m} m "
            f"doorway with {config.door_margin_m} m of wall each side: make them >= {need} m"
        )
    if room.room_height_range_m[0] < config.door_height_m + 0.1:
        raise ConfigError(
            f"door_height_m {config.door_height_m} leaves no lintel under a "
            f"{room.room_height_range_m[0]} m ceiling"
        )


def _entry(
    door_xy: NDArray[np.float64], inward: NDArray[np.float64], *, centre: NDArray[np.float64],
    radii: tuple[float, float], depth_m: float, entry_depth_m: float,
) -> tuple[NDArray[np.float64], float]:
    """(entry point, sweep start angle) of a room ``depth_m`` deep whose doorway opens along
    y: straight in through the doorway, never past the ellipse's near side, then to the
    ellipse's point nearest the entry."""
    entry = door_xy + inward * max(0.0, min(entry_depth_m, depth_m / 2 - radii[1]))
    n = 720
    ring = ellipse_path_xy(centre, radii, n)
    nearest = int(np.argmin(np.linalg.norm(ring - entry, axis=1)))
    return entry, 2 * math.pi * nearest / n


def _segment_points(points: list[NDArray[np.float64]], step_m: float) -> NDArray[np.float64]:
    """(P, 2) points every ``step_m`` along the polyline through ``points``."""
    out = []
    for a, b in itertools.pairwise(points):
        n = max(2, math.ceil(float(np.linalg.norm(b - a)) / step_m) + 1)
        out.append(a + np.linspace(0.0, 1.0, n)[:, None] * (b - a))
    return np.concatenate(out)


def generate_floor(
    seed: int, config: FloorConfig | None = None, room: SceneConfig | None = None
) -> Floor:
    """Build the floor for ``seed``; the same seed and configs always give the same floor.

    ``room`` sizes and furnishes the rooms as it would a single room (its height range gives
    the one floor-to-ceiling height of the whole floor). ``ConfigError`` if the rooms cannot
    hold the doorway.
    """
    config = config or FloorConfig()
    room = room or SceneConfig()
    _check_fits(config, room)
    rng = np.random.default_rng(seed)
    t, cw, dw = config.wall_thickness_m, config.corridor_width_m, config.door_width_m
    height = float(rng.uniform(*room.room_height_range_m))
    widths = rng.uniform(*room.room_width_range_m, size=config.rooms_x)
    depths = rng.uniform(*room.room_depth_range_m, size=config.rooms_y)

    spine_x = (t, t + cw)
    columns: list[tuple[float, float]] = []
    x = spine_x[1] + t
    for width in widths:
        columns.append((x, x + float(width)))
        x += float(width) + t
    x_end = columns[-1][1]
    rows: list[tuple[float, float]] = []
    corridors: list[Rect] = []
    y = t
    for row, depth in enumerate(depths):
        rows.append((y, y + float(depth)))
        y += float(depth) + t
        if row % 2 == 0:  # a corridor above every even row, shared with the odd row above it
            corridors.append((spine_x[1], x_end, y, y + cw))
            y += cw + t
    spine: Rect = (spine_x[0], spine_x[1], t, y - t)
    extent = np.array([x_end + t, y, height])

    rooms: list[FloorRoom] = []
    room_paths: list[NDArray[np.float64]] = []
    for row, (y0, y1) in enumerate(rows):
        corridor = row // 2
        below = row % 2 == 0
        cy = (corridors[corridor][2] + corridors[corridor][3]) / 2
        for column, (x0, x1) in enumerate(columns):
            door_x = float(rng.uniform(x0 + config.door_margin_m + dw / 2,
                                       x1 - config.door_margin_m - dw / 2))
            door = np.array([door_x, y1 if below else y0])
            inward = np.array([0.0, -1.0 if below else 1.0])
            size = np.array([x1 - x0, y1 - y0, height])
            centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
            radii = camera_path_radii(room, size)
            entry, start = _entry(door, inward, centre=centre, radii=radii,
                                  depth_m=float(size[1]), entry_depth_m=config.entry_depth_m)
            ring = np.array([centre[0] + radii[0] * math.cos(start),
                             centre[1] + radii[1] * math.sin(start)])
            room_paths.append(np.concatenate([
                ellipse_path_xy(centre, radii), _segment_points([door, entry, ring], 0.05)
            ]))
            rooms.append(FloorRoom(
                index=len(rooms), column=column, row=row, corridor=corridor,
                rect_m=(x0, x1, y0, y1),
                door_xy_m=(door_x, float(door[1])),
                inward=(0.0, float(inward[1])),
                corridor_xy_m=(door_x, cy),
                entry_xy_m=(float(entry[0]), float(entry[1])),
                path_centre_xy_m=(float(centre[0]), float(centre[1])),
                path_radii_m=radii,
                path_start_rad=start,
            ))

    instances: list[SceneInstance] = []
    corridor_rng = np.random.default_rng([seed, 2])
    colours = structure_colours(corridor_rng)
    spine_openings = [(c[2] - spine[2], c[3] - spine[2], height) for c in corridors]
    _add_corridor(instances, corridor_rng, colours, rect=spine, height_m=height,
                  openings={1: spine_openings})
    for k, rect in enumerate(corridors):
        openings: dict[int, list[tuple[float, float, float]]] = {_SOUTH: [], _NORTH: []}
        for r in rooms:
            if r.corridor != k:
                continue
            if r.inward[1] < 0:  # the room is south of the corridor: the corridor's south side
                s = r.door_xy_m[0] - rect[0]
                openings[_SOUTH].append((s - dw / 2, s + dw / 2, config.door_height_m))
            else:
                s = rect[1] - r.door_xy_m[0]
                openings[_NORTH].append((s - dw / 2, s + dw / 2, config.door_height_m))
        _add_corridor(instances, corridor_rng, colours, rect=rect, height_m=height,
                      openings=openings, open_side=3)

    for r, path_xy in zip(rooms, room_paths, strict=True):
        _add_room(instances, r, seed=seed, config=config, room_config=room, height_m=height,
                  path_xy=path_xy)

    return Floor(
        seed=seed,
        config=config,
        extent_m=extent,
        height_m=height,
        rooms=tuple(rooms),
        corridors_m=tuple(corridors),
        spine_m=spine,
        instances=tuple(instances),
    )


def _add_room(
    instances: list[SceneInstance], room: FloorRoom, *, seed: int, config: FloorConfig,
    room_config: SceneConfig, height_m: float, path_xy: NDArray[np.float64],
) -> None:
    """Floor, ceiling, four walls (the doorway's with its reveal) and furniture of one room."""
    rng = np.random.default_rng([seed, 1, room.index])
    wall_colour, floor_colour = structure_colours(rng)
    x0, x1, y0, y1 = room.rect_m
    dw, t = config.door_width_m, config.wall_thickness_m
    door_wall = _SOUTH if room.inward[1] > 0 else _NORTH
    door_s = room.door_xy_m[0] - x0 if door_wall == _SOUTH else x1 - room.door_xy_m[0]
    floor, door_side = _Mesh(), _Mesh()
    floor.horizontal(room.rect_m, 0.0)
    _wall_side(door_side, room.rect_m, door_wall, height_m,
               [(door_s - dw / 2, door_s + dw / 2, config.door_height_m)])
    y_room = room.door_xy_m[1]
    _door_reveal(door_side, floor, door_x=room.door_xy_m[0], y_room=y_room,
                 y_corridor=y_room - room.inward[1] * t, width_m=dw,
                 height_m=config.door_height_m)
    add_instance(instances, class_by_name("floor"), floor_colour, *floor.arrays())
    _add_ceiling(instances, rng, room.rect_m, height_m)
    for side in range(4):
        if side == door_wall:
            mesh = door_side
        else:
            mesh = _Mesh()
            _wall_side(mesh, room.rect_m, side, height_m, [])
        add_instance(instances, class_by_name("wall"), wall_colour, *mesh.arrays())
    furnish_room(
        rng, room_config, instances,
        origin_xy=np.array([x0, y0]),
        size=np.array([x1 - x0, y1 - y0, height_m]),
        path_xy=path_xy,
        doorways=(Doorway(door_wall, door_s, dw),),
    )

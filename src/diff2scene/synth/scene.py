"""Procedural indoor rooms: structure plus furniture of many classes, placed without overlap.

A scene is a closed box room (floor, ceiling and four walls as separate instances) filled with
instances drawn from :data:`~diff2scene.synth.classes.CLASSES` by frequency tier. Everything
random comes from one ``numpy.random.Generator`` seeded by the scene seed, so a seed names a
scene exactly. The room's centre is left free of tall objects around the camera path that
:mod:`diff2scene.synth.render` flies, so the camera never passes through furniture.
The same furnishing fills each room of a building floor (:func:`furnish_room`, used by
:mod:`diff2scene.synth.floor`), inside the room's rectangle and clear of its doorways.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import open3d as o3d
from numpy.typing import NDArray

from diff2scene.synth.classes import (
    CLASSES,
    PALETTE,
    ClassSpec,
    build_mesh,
    class_by_name,
)

_LOG = logging.getLogger(__name__)


@dataclass
class SceneConfig:
    """How rooms are sized and filled."""

    #: Room extent along x, metres (min, max).
    room_width_range_m: tuple[float, float] = (4.5, 7.0)
    #: Room extent along y, metres (min, max).
    room_depth_range_m: tuple[float, float] = (4.0, 6.0)
    #: Floor-to-ceiling height, metres (min, max).
    room_height_range_m: tuple[float, float] = (2.5, 3.0)
    #: Instances per head class (min, max); head classes are in every scene.
    head_count_range: tuple[int, int] = (1, 4)
    #: Probability that a given common class appears in a scene.
    common_probability: float = 0.5
    #: Probability that a given tail class appears in a scene.
    tail_probability: float = 0.15
    #: Most instances of one common class.
    max_common_count: int = 2
    #: Most furniture/object instances (room structure excluded).
    max_objects: int = 40
    #: Camera-path ellipse semi-axes as a fraction of the room's width/depth.
    camera_path_fraction: float = 0.25
    #: Objects taller than this must keep ``camera_clearance_m`` from the camera path, metres.
    tall_object_height_m: float = 1.0
    #: Horizontal distance tall objects keep from the camera path, metres.
    camera_clearance_m: float = 0.4
    #: Gap kept between neighbouring objects' footprints, metres.
    object_gap_m: float = 0.05
    #: Random positions tried per instance before it is left out.
    placement_attempts: int = 60

    def __post_init__(self) -> None:
        for name in ("room_width_range_m", "room_depth_range_m", "room_height_range_m"):
            lo, hi = getattr(self, name)
            if not 1.0 <= lo <= hi:
                raise ValueError(f"{name} must satisfy 1 <= min <= max, got ({lo}, {hi})")
        if not 1 <= self.head_count_range[0] <= self.head_count_range[1]:
            raise ValueError("head_count_range must satisfy 1 <= min <= max")
        for name in ("common_probability", "tail_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 < self.camera_path_fraction < 0.5:
            raise ValueError("camera_path_fraction must be in (0, 0.5)")
        if self.max_objects < 0 or self.max_common_count < 1 or self.placement_attempts < 1:
            raise ValueError("max_objects >= 0, max_common_count >= 1, placement_attempts >= 1")


@dataclass(frozen=True)
class SceneInstance:
    """One object (or wall/floor/ceiling) of a scene, as a world-frame triangle mesh."""

    #: Scene-unique id >= 1 (the value in instance images; 0 = none).
    instance_id: int
    class_id: int
    class_name: str
    colour_name: str
    #: sRGB colour, 0-255.
    colour_rgb: tuple[int, int, int]
    #: (V, 3) float64 vertex positions in the world (map) frame, metres.
    vertices: NDArray[np.float64] = field(repr=False)
    #: (T, 3) int32 vertex indices per triangle.
    triangles: NDArray[np.int32] = field(repr=False)

    def bbox_m(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """World axis-aligned box as ((3,) min, (3,) max)."""
        return self.vertices.min(axis=0), self.vertices.max(axis=0)


class SceneGeometry(Protocol):
    """What rendering and ground truth need of a scene: a room (:class:`Scene`) or a building
    floor (:class:`~diff2scene.synth.floor.Floor`)."""

    @property
    def seed(self) -> int:
        """The seed that names the scene (and salts the per-frame sensor noise)."""

    @property
    def instances(self) -> tuple[SceneInstance, ...]:
        """Every instance, ids 1..N in order."""

    @property
    def extent_m(self) -> NDArray[np.float64]:
        """(3,) size of the box [0, extent] that holds the scene, metres."""

    def describe(self) -> dict[str, Any]:
        """Provenance for the ground truth's metadata (JSON-serialisable)."""


@dataclass(frozen=True)
class Scene:
    """A generated room: its size, instances and the camera-path ellipse kept free for it."""

    seed: int
    #: (3,) room extent (x, y, z); the room spans [0, size] on each axis.
    room_size_m: NDArray[np.float64]
    instances: tuple[SceneInstance, ...]
    #: Semi-axes (along x, along y) of the camera-path ellipse around the room centre.
    camera_path_radii_m: tuple[float, float]

    @property
    def centre_m(self) -> NDArray[np.float64]:
        """(3,) centre of the room's floor."""
        return np.array([self.room_size_m[0] / 2, self.room_size_m[1] / 2, 0.0])

    @property
    def extent_m(self) -> NDArray[np.float64]:
        """(3,) size of the box [0, extent] that holds the scene: the room's size."""
        return self.room_size_m

    def describe(self) -> dict[str, Any]:
        """Provenance for the ground truth's metadata (JSON-serialisable)."""
        return {"seed": self.seed, "room_size_m": [float(v) for v in self.room_size_m]}

    def instance(self, instance_id: int) -> SceneInstance:
        for inst in self.instances:
            if inst.instance_id == instance_id:
                return inst
        raise KeyError(f"no instance {instance_id} in scene {self.seed}")


# --------------------------------------------------------------------------- geometry helpers


def _rot_z(yaw: float) -> NDArray[np.float64]:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _footprint(
    centre_xy: NDArray[np.float64], half_xy: NDArray[np.float64], yaw: float
) -> NDArray[np.float64]:
    """Axis-aligned (xmin, xmax, ymin, ymax) of a yawed rectangle."""
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    hx = c * half_xy[0] + s * half_xy[1]
    hy = s * half_xy[0] + c * half_xy[1]
    return np.array([centre_xy[0] - hx, centre_xy[0] + hx, centre_xy[1] - hy, centre_xy[1] + hy])


def _rects_overlap(a: NDArray[np.float64], b: NDArray[np.float64], gap: float) -> bool:
    return bool(
        a[0] < b[1] + gap and b[0] < a[1] + gap and a[2] < b[3] + gap and b[2] < a[3] + gap
    )


def _rect_distance(rect: NDArray[np.float64], points_xy: NDArray[np.float64]) -> float:
    """Smallest distance from (N, 2) points to an axis-aligned rectangle (0 inside)."""
    dx = np.maximum(np.maximum(rect[0] - points_xy[:, 0], points_xy[:, 0] - rect[1]), 0.0)
    dy = np.maximum(np.maximum(rect[2] - points_xy[:, 1], points_xy[:, 1] - rect[3]), 0.0)
    return float(np.min(np.hypot(dx, dy)))


def _quad(corners: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    """Two triangles for four corners given counter-clockwise as seen from the lit side."""
    return corners.astype(np.float64), np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)


def wall_frame(
    wall: int, width_m: float, depth_m: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """(start, along-wall unit vector, inward yaw) of wall 0..3 of a ``width_m`` x ``depth_m``
    room whose corner is the origin: walls y=0, x=W, y=D, x=0, each running counter-clockwise
    (seen from above) so that the room lies to the left of ``along``."""
    frames = (
        (np.array([0.0, 0.0]), np.array([1.0, 0.0]), 0.0),
        (np.array([width_m, 0.0]), np.array([0.0, 1.0]), math.pi / 2),
        (np.array([width_m, depth_m]), np.array([-1.0, 0.0]), math.pi),
        (np.array([0.0, depth_m]), np.array([0.0, -1.0]), -math.pi / 2),
    )
    return frames[wall]


def add_instance(
    instances: list[SceneInstance],
    spec: ClassSpec,
    colour_name: str,
    vertices: NDArray[np.float64],
    triangles: NDArray[np.int32],
) -> int:
    """Append an instance with the next free id (ids are positions + 1) and return the id."""
    inst = SceneInstance(
        instance_id=len(instances) + 1,
        class_id=spec.class_id,
        class_name=spec.name,
        colour_name=colour_name,
        colour_rgb=PALETTE[colour_name],
        vertices=np.ascontiguousarray(vertices, dtype=np.float64),
        triangles=np.ascontiguousarray(triangles, dtype=np.int32),
    )
    instances.append(inst)
    return inst.instance_id


def structure_colours(rng: np.random.Generator) -> tuple[str, str]:
    """(wall colour, floor colour) of one room; never the same, which would hide its corners."""
    wall_colour = str(rng.choice(np.array(class_by_name("wall").colours)))
    floor_colours = np.array([c for c in class_by_name("floor").colours if c != wall_colour])
    return wall_colour, str(rng.choice(floor_colours))


@dataclass(frozen=True)
class Doorway:
    """An opening in one wall of a room that furniture must leave free."""

    #: Wall 0..3 as in :func:`wall_frame`.
    wall: int
    #: Centre of the opening along the wall from the wall's start, metres.
    centre_m: float
    #: Width of the opening, metres.
    width_m: float
    #: Depth of the floor kept clear in front of the opening, inside the room, metres.
    clear_depth_m: float = 0.9


@dataclass
class _Support:
    """A horizontal surface small objects can stand on, in the supporting object's frame."""

    instance_id: int
    centre_xy: NDArray[np.float64]
    yaw: float
    #: (xmin, xmax, ymin, ymax) usable area in the support's local frame.
    local_rect: NDArray[np.float64]
    top_z: float
    occupied: list[NDArray[np.float64]] = field(default_factory=list)


class _Builder:
    """Places instances one by one, tracking free floor, wall space and support surfaces."""

    def __init__(
        self,
        rng: np.random.Generator,
        config: SceneConfig,
        *,
        origin_xy: NDArray[np.float64],
        size: NDArray[np.float64],
        path_xy: NDArray[np.float64],
        instances: list[SceneInstance],
    ) -> None:
        self.cfg = config
        self.rng = rng
        #: (2,) corner of the room with the smallest x and y; the room spans origin + [0, size].
        self.origin = np.asarray(origin_xy, dtype=np.float64)
        #: (3,) room extent (x, y, z), metres.
        self.size = size
        #: (P, 2) points the camera passes; tall objects keep ``camera_clearance_m`` from them.
        self.path_xy = path_xy
        #: Every instance of the scene so far, shared by the builders of one floor's rooms
        #: (instance ids are positions + 1).
        self.instances = instances
        self.floor_rects: list[NDArray[np.float64]] = []
        #: Per wall: (s0, s1, z0, z1) rectangles in wall coordinates.
        self.wall_rects: list[list[tuple[float, float, float, float]]] = [[], [], [], []]
        self.supports: list[_Support] = []

    # ---- bookkeeping
    def _add(
        self,
        spec: ClassSpec,
        vertices: NDArray[np.float64],
        triangles: NDArray[np.int32],
        colour: str | None = None,
    ) -> int:
        colour_name = colour or str(self.rng.choice(np.array(spec.colours)))
        return add_instance(self.instances, spec, colour_name, vertices, triangles)

    def _add_mesh(
        self,
        spec: ClassSpec,
        size: NDArray[np.float64],
        centre_xy: NDArray[np.float64],
        base_z: float,
        yaw: float,
    ) -> int:
        mesh: o3d.geometry.TriangleMesh = build_mesh(spec.shape, size)
        local = np.asarray(mesh.vertices, dtype=np.float64)
        world = local @ _rot_z(yaw).T + np.array([centre_xy[0], centre_xy[1], base_z])
        return self._add(spec, world, np.asarray(mesh.triangles, dtype=np.int32))

    def _size(self, spec: ClassSpec) -> NDArray[np.float64]:
        return self.rng.uniform(np.array(spec.size_min_m), np.array(spec.size_max_m))

    def _floor_free(self, rect: NDArray[np.float64], height: float) -> bool:
        x0, y0 = self.origin
        if (
            rect[0] < x0
            or rect[2] < y0
            or rect[1] > x0 + self.size[0]
            or rect[3] > y0 + self.size[1]
        ):
            return False
        if any(_rects_overlap(rect, other, self.cfg.object_gap_m) for other in self.floor_rects):
            return False
        if height > self.cfg.tall_object_height_m:
            return _rect_distance(rect, self.path_xy) >= self.cfg.camera_clearance_m
        return True

    def _wall_frame(self, wall: int) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
        """(origin, along-wall unit vector, inward yaw) of wall 0..3 (y=0, x=W, y=D, x=0),
        in room coordinates: add :attr:`origin` for the world."""
        return wall_frame(wall, float(self.size[0]), float(self.size[1]))

    def _wall_length(self, wall: int) -> float:
        return float(self.size[0] if wall % 2 == 0 else self.size[1])

    # ---- structure
    def add_structure(self) -> None:
        """Floor, ceiling and four closed walls of a room at the origin."""
        w, d, h = (float(v) for v in self.size)
        floor, ceiling, wall = (class_by_name(n) for n in ("floor", "ceiling", "wall"))
        wall_colour, floor_colour = structure_colours(self.rng)
        floor_quad = _quad(np.array([[0, 0, 0], [w, 0, 0], [w, d, 0], [0, d, 0.0]]))
        self._add(floor, *floor_quad, colour=floor_colour)
        self._add(ceiling, *_quad(np.array([[0, 0, h], [0, d, h], [w, d, h], [w, 0, h]])))
        for i in range(4):
            origin, along, _ = self._wall_frame(i)
            a = np.append(origin, 0.0)
            b = np.append(origin + along * self._wall_length(i), 0.0)
            up = np.array([0.0, 0.0, h])
            corners = np.array([a, a + up, b + up, b])
            self._add(wall, *_quad(corners), colour=wall_colour)

    def reserve_doorway(self, door: Doorway) -> None:
        """Keep ``door``'s stretch of wall (full height) and the floor in front of it free."""
        half = door.width_m / 2
        self.wall_rects[door.wall].append(
            (door.centre_m - half, door.centre_m + half, 0.0, float(self.size[2]))
        )
        start, along, yaw = self._wall_frame(door.wall)
        inward = np.array([-along[1], along[0]])
        xy = self.origin + start + along * door.centre_m + inward * (door.clear_depth_m / 2)
        self.floor_rects.append(
            _footprint(xy, np.array([half + self.cfg.object_gap_m, door.clear_depth_m / 2]), yaw)
        )

    # ---- objects
    def place(self, spec: ClassSpec) -> bool:
        for _ in range(self.cfg.placement_attempts):
            if self._try_place(spec):
                return True
        _LOG.debug("could not place a %s", spec.name)
        return False

    def _try_place(self, spec: ClassSpec) -> bool:
        size = self._size(spec)
        rng = self.rng
        if spec.placement == "floor":
            yaw = float(rng.uniform(-math.pi, math.pi))
            half = size[:2] / 2
            xy = self.origin + rng.uniform(half.max(), self.size[:2] - half.max())
            rect = _footprint(xy, half, yaw)
            if not self._floor_free(rect, float(size[2])):
                return False
            iid = self._add_mesh(spec, size, xy, 0.0, yaw)
            self.floor_rects.append(rect)
            self._maybe_support(spec, iid, xy, yaw, size)
            return True
        if spec.placement in ("wall_floor", "wall"):
            wall = int(rng.integers(4))
            length = self._wall_length(wall)
            if size[0] + 0.1 > length:
                return False
            s = float(rng.uniform(size[0] / 2 + 0.05, length - size[0] / 2 - 0.05))
            if spec.placement == "wall_floor" or spec.name == "door":
                z0 = 0.0
            else:  # windows, pictures, boards hang around eye height
                z0 = float(rng.uniform(0.8, max(0.8, self.size[2] - size[2] - 0.3)))
            if z0 + size[2] > self.size[2] - 0.05:
                return False
            wall_rect = (s - size[0] / 2, s + size[0] / 2, z0, z0 + size[2])
            for other in self.wall_rects[wall]:
                if (
                    wall_rect[0] < other[1] + 0.05
                    and other[0] < wall_rect[1] + 0.05
                    and wall_rect[2] < other[3]
                    and other[2] < wall_rect[3]
                ):
                    return False
            origin, along, yaw = self._wall_frame(wall)
            origin = self.origin + origin
            inward = np.array([-along[1], along[0]])
            # Local +y (the object's back) faces the wall: yaw turns local +y onto -inward.
            xy = origin + along * s + inward * (size[1] / 2 + 0.002)
            rect = _footprint(xy, size[:2] / 2, yaw)
            floor_needed = spec.placement == "wall_floor" or spec.name == "door"
            if floor_needed:
                # A door keeps the floor in front of it clear so it stays visible and usable.
                clear = (
                    _footprint(xy + inward * 0.46, np.array([size[0] / 2, 0.45]), yaw)
                    if spec.name == "door"
                    else rect
                )
                clear_height = 0.0 if spec.name == "door" else float(size[2])
                if not self._floor_free(clear, clear_height):
                    return False
                self.floor_rects.append(clear)
            self.wall_rects[wall].append(wall_rect)
            iid = self._add_mesh(spec, size, xy, z0, yaw + math.pi)
            self._maybe_support(spec, iid, xy, yaw + math.pi, size)
            return True
        if spec.placement == "on_surface":
            candidates = [
                s
                for s in self.supports
                if (spec.name == "pillow") == (self._class_of(s.instance_id) in ("bed", "sofa"))
            ]
            if not candidates:
                return False
            sup = candidates[int(rng.integers(len(candidates)))]
            half = size[:2] / 2
            lo = sup.local_rect[[0, 2]] + half.max()
            hi = sup.local_rect[[1, 3]] - half.max()
            if np.any(lo > hi):
                return False
            local_xy = rng.uniform(lo, hi)
            local_rect = _footprint(local_xy, half, 0.0)
            if any(_rects_overlap(local_rect, o, 0.02) for o in sup.occupied):
                return False
            sup.occupied.append(local_rect)
            xy = sup.centre_xy + _rot_z(sup.yaw)[:2, :2] @ local_xy
            yaw = sup.yaw + float(rng.uniform(-0.3, 0.3))
            self._add_mesh(spec, size, xy, sup.top_z, yaw)
            return True
        raise ValueError(f"{spec.name}: placement {spec.placement!r} is not placeable")

    def _class_of(self, instance_id: int) -> str:
        return self.instances[instance_id - 1].class_name

    def _maybe_support(
        self,
        spec: ClassSpec,
        instance_id: int,
        xy: NDArray[np.float64],
        yaw: float,
        size: NDArray[np.float64],
    ) -> None:
        sx, sy, sz = (float(v) for v in size)
        if spec.is_support:
            rect, top = np.array([-sx / 2, sx / 2, -sy / 2, sy / 2]), sz
        elif spec.shape == "bed":
            rect, top = np.array([-sx / 2, sx / 2, -sy / 2, sy / 2 - 0.1]), 0.5 * sz
        elif spec.shape == "sofa":
            rect, top = np.array([-sx / 2 + 0.18, sx / 2 - 0.18, -sy / 2, sy / 2 - 0.2]), 0.45 * sz
        else:
            return
        self.supports.append(_Support(instance_id, xy, yaw, rect, top))


def _choose_classes(rng: np.random.Generator, config: SceneConfig) -> list[ClassSpec]:
    """The multiset of object classes for one scene, by tier (head always, tail rarely)."""
    chosen: list[ClassSpec] = []
    for spec in CLASSES:
        if spec.placement == "structure":
            continue
        if spec.tier == "head":
            lo, hi = config.head_count_range
            count = int(rng.integers(lo, hi + 1))
        elif spec.tier == "common":
            present = rng.random() < config.common_probability
            count = int(rng.integers(1, config.max_common_count + 1)) if present else 0
        else:
            count = int(rng.random() < config.tail_probability)
        chosen += [spec] * count
    return chosen


_PLACEMENT_ORDER = {"wall_floor": 0, "wall": 1, "floor": 2, "on_surface": 3}


def ellipse_path_xy(
    centre_xy: NDArray[np.float64], radii_m: tuple[float, float], n_points: int = 96
) -> NDArray[np.float64]:
    """(n_points, 2) points evenly spaced in angle on an axis-aligned ellipse."""
    theta = np.linspace(0.0, 2 * math.pi, n_points, endpoint=False)
    return np.stack(
        [centre_xy[0] + radii_m[0] * np.cos(theta), centre_xy[1] + radii_m[1] * np.sin(theta)],
        axis=1,
    )


def camera_path_radii(config: SceneConfig, size: NDArray[np.float64]) -> tuple[float, float]:
    """Semi-axes of the camera ellipse of a room of (3,) ``size``, metres."""
    return (config.camera_path_fraction * float(size[0]),
            config.camera_path_fraction * float(size[1]))


def _furnish(builder: _Builder) -> None:
    """Fill the builder's room with objects of classes drawn by tier.

    Big furniture is placed first so that small objects fill the remaining space; an
    instance that finds no free spot in ``placement_attempts`` tries is left out. Head classes
    get extra tries so that every room has at least one of each.
    """
    config = builder.cfg
    chosen = _choose_classes(builder.rng, config)
    order = builder.rng.permutation(len(chosen))
    shuffled = [chosen[i] for i in order]
    # One instance of every head class goes first so that no scene lacks one.
    firsts = [next(s for s in shuffled if s.name == name) for name in dict.fromkeys(
        s.name for s in shuffled if s.tier == "head"
    )]
    rest = list(shuffled)
    for spec in firsts:
        rest.remove(spec)
    by_kind = sorted(firsts, key=lambda s: _PLACEMENT_ORDER[s.placement]) + sorted(
        rest, key=lambda s: _PLACEMENT_ORDER[s.placement]
    )
    placed_head: set[str] = set()
    n_objects = 0
    for spec in by_kind:
        if n_objects >= config.max_objects:
            break
        tries = 4 if spec.tier == "head" and spec.name not in placed_head else 1
        if any(builder.place(spec) for _ in range(tries)):
            n_objects += 1
            if spec.tier == "head":
                placed_head.add(spec.name)


def furnish_room(
    rng: np.random.Generator,
    config: SceneConfig,
    instances: list[SceneInstance],
    *,
    origin_xy: NDArray[np.float64],
    size: NDArray[np.float64],
    path_xy: NDArray[np.float64],
    doorways: tuple[Doorway, ...] = (),
) -> None:
    """Furnish the room ``origin_xy + [0, size]`` of a larger scene, appending to ``instances``.

    The same placement rules as a single room's: objects stay inside the rectangle, tall ones
    keep ``camera_clearance_m`` from ``path_xy`` ((P, 2) world points the camera passes), and
    nothing stands in or hangs over a doorway or blocks the floor in front of it. The room's
    structure (floor, walls, ceiling) is the caller's.
    """
    builder = _Builder(
        rng, config, origin_xy=origin_xy, size=size, path_xy=path_xy, instances=instances
    )
    for door in doorways:
        builder.reserve_doorway(door)
    _furnish(builder)


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Build the room for ``seed``; the same seed and config always give the same scene."""
    config = config or SceneConfig()
    rng = np.random.default_rng(seed)
    size = np.array(
        [
            rng.uniform(*config.room_width_range_m),
            rng.uniform(*config.room_depth_range_m),
            rng.uniform(*config.room_height_range_m),
        ]
    )
    radii = camera_path_radii(config, size)
    instances: list[SceneInstance] = []
    builder = _Builder(
        rng,
        config,
        origin_xy=np.zeros(2),
        size=size,
        path_xy=ellipse_path_xy(size[:2] / 2, radii),
        instances=instances,
    )
    builder.add_structure()
    _furnish(builder)
    return Scene(
        seed=seed,
        room_size_m=size,
        instances=tuple(instances),
        camera_path_radii_m=radii,
    )

"""The synthetic benchmark's class table, colour palette and procedural shapes.

The names follow ScanNet200 so a vocabulary built for real data also reads synthetic scenes.
Each class has a frequency tier that drives how often the scene generator uses it, which gives
a long-tailed class distribution, so that mIoU split into head, common and tail classes
shows how a model does on rare classes as well as on frequent ones.
Shapes are deliberately crude compositions of boxes, cylinders, cones and spheres: what the
benchmark exercises is geometry + labels + colours, not photorealism.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import open3d as o3d
from numpy.typing import NDArray

Tier = Literal["head", "common", "tail"]
#: Where an instance of a class goes: room structure, floor, against a wall (floor-standing,
#: back to the wall), on a wall (door/window/picture), or on top of a supporting surface.
Placement = Literal["structure", "floor", "wall_floor", "wall", "on_surface"]
#: Procedural shape recipes known to :func:`build_mesh`.
Shape = Literal[
    "plane",
    "box",
    "cylinder",
    "table",
    "chair",
    "bed",
    "sofa",
    "lamp",
    "plant",
    "monitor",
    "toilet",
    "shelf",
    "cone",
]

TIERS: tuple[Tier, ...] = ("head", "common", "tail")

#: Named colours (sRGB, 0-255). Instance colours are always exactly one of these, so a query
#: like "red chair" has an unambiguous ground truth.
PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (235, 235, 230),
    "black": (35, 35, 38),
    "grey": (128, 128, 128),
    "red": (200, 40, 40),
    "green": (50, 150, 60),
    "blue": (45, 80, 190),
    "yellow": (230, 200, 50),
    "orange": (235, 130, 40),
    "brown": (120, 80, 45),
    "beige": (215, 195, 160),
    "pink": (230, 140, 170),
    "purple": (120, 60, 150),
}


@dataclass(frozen=True)
class ClassSpec:
    """One semantic class of the synthetic world and how to make an instance of it."""

    #: Stable id, >= 1 (0 means unlabelled / no instance everywhere in the project).
    class_id: int
    #: ScanNet200-style name, also the text the oracle segmenter encodes.
    name: str
    #: Frequency tier: head classes appear in every scene, tail classes rarely.
    tier: Tier
    placement: Placement
    shape: Shape
    #: Smallest (x, y, z) extent in metres (x = width, y = depth, z = height).
    size_min_m: tuple[float, float, float]
    #: Largest (x, y, z) extent in metres.
    size_max_m: tuple[float, float, float]
    #: Colour names (keys of :data:`PALETTE`) an instance may take.
    colours: tuple[str, ...]
    #: Whether small objects may be put on top of it.
    is_support: bool = False

    def __post_init__(self) -> None:
        if self.class_id < 1:
            raise ValueError(f"{self.name}: class ids start at 1")
        unknown = [c for c in self.colours if c not in PALETTE]
        if unknown or not self.colours:
            raise ValueError(f"{self.name}: unknown colours {unknown}")
        if any(lo > hi or lo < 0 for lo, hi in zip(self.size_min_m, self.size_max_m, strict=True)):
            raise ValueError(f"{self.name}: size range {self.size_min_m}..{self.size_max_m}")


_WOOD = ("brown", "beige", "white", "black")
_ANY = tuple(PALETTE)

#: The class table; ids are positions + 1 and must never be renumbered (saved scenes use them).
CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec(
        1, "wall", "head", "structure", "plane",
        (0, 0, 0), (0, 0, 0),
        ("white", "beige", "grey"),
    ),
    ClassSpec(
        2, "floor", "head", "structure", "plane",
        (0, 0, 0), (0, 0, 0),
        ("brown", "grey", "beige"),
    ),
    ClassSpec(
        3, "ceiling", "head", "structure", "plane",
        (0, 0, 0), (0, 0, 0),
        ("white",),
    ),
    ClassSpec(
        4, "chair", "head", "floor", "chair",
        (0.42, 0.42, 0.8), (0.55, 0.55, 1.0),
        _ANY,
    ),
    ClassSpec(
        5, "table", "head", "floor", "table",
        (0.8, 0.6, 0.7), (1.6, 1.0, 0.78),
        _WOOD, True,
    ),
    ClassSpec(
        6, "door", "head", "wall", "box",
        (0.8, 0.04, 2.0), (0.95, 0.05, 2.1),
        ("white", "brown", "grey"),
    ),
    ClassSpec(
        7, "cabinet", "common", "wall_floor", "box",
        (0.6, 0.4, 0.7), (1.2, 0.6, 1.1),
        _WOOD, True,
    ),
    ClassSpec(
        8, "desk", "common", "wall_floor", "table",
        (1.0, 0.55, 0.72), (1.6, 0.8, 0.78),
        _WOOD, True,
    ),
    ClassSpec(
        9, "bookshelf", "common", "wall_floor", "shelf",
        (0.6, 0.3, 1.5), (1.2, 0.4, 2.0),
        _WOOD,
    ),
    ClassSpec(
        10, "window", "common", "wall", "box",
        (0.8, 0.04, 1.0), (1.6, 0.05, 1.4),
        ("white", "grey"),
    ),
    ClassSpec(
        11, "sofa", "common", "wall_floor", "sofa",
        (1.6, 0.8, 0.8), (2.2, 0.95, 0.9),
        _ANY,
    ),
    ClassSpec(
        12, "bed", "common", "wall_floor", "bed",
        (1.4, 1.9, 0.9), (1.8, 2.1, 1.1),
        ("white", "blue", "grey", "beige"),
    ),
    ClassSpec(
        13, "lamp", "common", "floor", "lamp",
        (0.3, 0.3, 1.3), (0.45, 0.45, 1.7),
        ("white", "black", "yellow"),
    ),
    ClassSpec(
        14, "monitor", "common", "on_surface", "monitor",
        (0.45, 0.18, 0.35), (0.65, 0.22, 0.48),
        ("black", "grey"),
    ),
    ClassSpec(
        15, "plant", "common", "floor", "plant",
        (0.3, 0.3, 0.6), (0.5, 0.5, 1.1),
        ("green",),
    ),
    ClassSpec(
        16, "trash can", "common", "floor", "cylinder",
        (0.25, 0.25, 0.35), (0.35, 0.35, 0.6),
        ("grey", "black", "blue", "green"),
    ),
    ClassSpec(
        17, "box", "common", "floor", "box",
        (0.25, 0.25, 0.2), (0.6, 0.5, 0.5),
        ("brown", "beige", "white"),
    ),
    ClassSpec(
        18, "pillow", "common", "on_surface", "box",
        (0.4, 0.3, 0.1), (0.6, 0.4, 0.15),
        _ANY,
    ),
    ClassSpec(
        19, "picture", "common", "wall", "box",
        (0.4, 0.03, 0.3), (1.0, 0.04, 0.8),
        _ANY,
    ),
    ClassSpec(
        20, "sneaker", "tail", "floor", "box",
        (0.1, 0.28, 0.1), (0.12, 0.32, 0.13),
        ("white", "black", "red", "blue"),
    ),
    ClassSpec(
        21, "backpack", "tail", "floor", "box",
        (0.3, 0.18, 0.4), (0.35, 0.25, 0.5),
        ("black", "blue", "red", "green"),
    ),
    ClassSpec(
        22, "mug", "tail", "on_surface", "cylinder",
        (0.08, 0.08, 0.1), (0.1, 0.1, 0.12),
        ("white", "red", "blue", "yellow"),
    ),
    ClassSpec(
        23, "toilet", "tail", "wall_floor", "toilet",
        (0.38, 0.6, 0.75), (0.42, 0.7, 0.8),
        ("white",),
    ),
    ClassSpec(
        24, "sink", "tail", "wall_floor", "box",
        (0.5, 0.4, 0.85), (0.7, 0.5, 0.9),
        ("white", "grey"),
    ),
    ClassSpec(
        25, "refrigerator", "tail", "wall_floor", "box",
        (0.6, 0.65, 1.7), (0.8, 0.75, 1.9),
        ("white", "grey", "black"),
    ),
    ClassSpec(
        26, "whiteboard", "tail", "wall", "box",
        (1.0, 0.02, 0.8), (1.8, 0.03, 1.2),
        ("white",),
    ),
    ClassSpec(
        27, "guitar", "tail", "floor", "cylinder",
        (0.35, 0.35, 1.0), (0.4, 0.4, 1.05),
        ("brown", "black", "red"),
    ),
    ClassSpec(
        28, "fire extinguisher", "tail", "floor", "cylinder",
        (0.15, 0.15, 0.5), (0.18, 0.18, 0.6),
        ("red",),
    ),
    ClassSpec(
        29, "bucket", "tail", "floor", "cylinder",
        (0.25, 0.25, 0.25), (0.32, 0.32, 0.35),
        ("blue", "red", "yellow", "grey"),
    ),
    ClassSpec(
        30, "traffic cone", "tail", "floor", "cone",
        (0.3, 0.3, 0.45), (0.36, 0.36, 0.7),
        ("orange",),
    ),
)

_BY_NAME: dict[str, ClassSpec] = {c.name: c for c in CLASSES}
_BY_ID: dict[int, ClassSpec] = {c.class_id: c for c in CLASSES}
assert len(_BY_NAME) == len(CLASSES) == len(_BY_ID), "class names and ids must be unique"


def class_by_name(name: str) -> ClassSpec:
    """The class called ``name``; ``KeyError`` names the known classes."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown class {name!r}; known: {sorted(_BY_NAME)}") from None


def class_by_id(class_id: int) -> ClassSpec:
    """The class with id ``class_id`` (>= 1)."""
    try:
        return _BY_ID[class_id]
    except KeyError:
        raise KeyError(f"unknown class id {class_id}") from None


def classes_in_tier(tier: Tier) -> tuple[ClassSpec, ...]:
    return tuple(c for c in CLASSES if c.tier == tier)


# --------------------------------------------------------------------------- shapes
#
# Every recipe builds the object in a local frame: x = width, y = depth (front faces -y), z up,
# footprint centred on the origin, base at z = 0. The scene places it with a yaw and a shift.


def _box(
    sx: float, sy: float, sz: float, *, cx: float = 0.0, cy: float = 0.0, z0: float = 0.0
) -> o3d.geometry.TriangleMesh:
    """Box of size (sx, sy, sz), footprint centred at (cx, cy), bottom at z0."""
    mesh = o3d.geometry.TriangleMesh.create_box(max(sx, 1e-3), max(sy, 1e-3), max(sz, 1e-3))
    mesh.translate((cx - sx / 2, cy - sy / 2, z0))
    return mesh


def _cylinder(
    radius: float, height: float, *, cx: float = 0.0, cy: float = 0.0, z0: float = 0.0
) -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh.create_cylinder(radius=radius, height=height, resolution=20)
    mesh.translate((cx, cy, z0 + height / 2))
    return mesh


def _cone(radius: float, height: float, *, z0: float = 0.0) -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh.create_cone(radius=radius, height=height, resolution=20)
    mesh.translate((0.0, 0.0, z0))
    return mesh


def _sphere(radius: float, z_centre: float) -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh.create_sphere(radius=radius, resolution=10)
    mesh.translate((0.0, 0.0, z_centre))
    return mesh


def _merge(parts: Sequence[o3d.geometry.TriangleMesh]) -> o3d.geometry.TriangleMesh:
    out = o3d.geometry.TriangleMesh()
    for part in parts:
        out += part
    return out


def build_mesh(shape: Shape, size_m: NDArray[np.float64]) -> o3d.geometry.TriangleMesh:
    """Triangle mesh of ``shape`` filling the (3,) extent ``size_m`` in the local frame.

    ``plane`` is handled by the scene (room structure is built from explicit rectangles).
    """
    sx, sy, sz = (float(v) for v in size_m)
    leg = min(0.05, 0.1 * min(sx, sy))
    if shape == "box":
        return _box(sx, sy, sz)
    if shape == "cylinder":
        return _cylinder(min(sx, sy) / 2, sz)
    if shape == "cone":
        return _cone(min(sx, sy) / 2, sz)
    if shape == "table":
        top = 0.04
        legs = [
            _box(leg, leg, sz - top, cx=x * (sx / 2 - leg), cy=y * (sy / 2 - leg))
            for x in (-1, 1)
            for y in (-1, 1)
        ]
        return _merge([_box(sx, sy, top, z0=sz - top), *legs])
    if shape == "chair":
        seat_h = 0.45 * sz
        legs = [
            _box(leg, leg, seat_h, cx=x * (sx / 2 - leg), cy=y * (sy / 2 - leg))
            for x in (-1, 1)
            for y in (-1, 1)
        ]
        seat = _box(sx, sy, 0.05, z0=seat_h)
        back = _box(sx, 0.05, sz - seat_h - 0.05, cy=sy / 2 - 0.025, z0=seat_h + 0.05)
        return _merge([seat, back, *legs])
    if shape == "bed":
        mattress = _box(sx, sy, 0.5 * sz)
        headboard = _box(sx, 0.08, sz, cy=sy / 2 - 0.04)
        return _merge([mattress, headboard])
    if shape == "sofa":
        arm = 0.18
        base = _box(sx - 2 * arm, sy, 0.45 * sz)
        back = _box(sx - 2 * arm, 0.2, sz, cy=sy / 2 - 0.1)
        arms = [_box(arm, sy, 0.65 * sz, cx=x * (sx / 2 - arm / 2)) for x in (-1, 1)]
        return _merge([base, back, *arms])
    if shape == "lamp":
        shade_h = 0.3 * sz
        base = _cylinder(0.4 * min(sx, sy) / 2, 0.04)
        pole = _cylinder(0.015, sz - shade_h, z0=0.04)
        shade = _cylinder(min(sx, sy) / 2, shade_h, z0=sz - shade_h)
        return _merge([base, pole, shade])
    if shape == "plant":
        pot_h = 0.35 * sz
        pot = _cylinder(0.35 * min(sx, sy), pot_h)
        foliage_r = min(min(sx, sy) / 2, (sz - pot_h) / 2)
        return _merge([pot, _sphere(foliage_r, sz - foliage_r)])
    if shape == "monitor":
        stand = _box(0.2 * sx, 0.6 * sy, 0.02)
        neck = _box(0.05, 0.04, 0.3 * sz, cy=0.1 * sy)
        screen = _box(sx, 0.04, 0.7 * sz, cy=0.1 * sy, z0=0.3 * sz)
        return _merge([stand, neck, screen])
    if shape == "toilet":
        bowl = _cylinder(sx / 2, 0.42, cy=-sy / 2 + sx / 2)
        tank = _box(sx, 0.2, sz, cy=sy / 2 - 0.1)
        return _merge([bowl, tank])
    if shape == "shelf":
        side = 0.03
        n_boards = max(3, int(sz / 0.35))
        parts = [_box(side, sy, sz, cx=x * (sx / 2 - side / 2)) for x in (-1, 1)]
        parts.append(_box(sx, 0.02, sz, cy=sy / 2 - 0.01))
        parts += [
            _box(sx - 2 * side, sy, 0.025, z0=i * (sz - 0.025) / (n_boards - 1))
            for i in range(n_boards)
        ]
        return _merge(parts)
    raise ValueError(f"no mesh recipe for shape {shape!r}")

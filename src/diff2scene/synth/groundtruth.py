"""Ground truth of a synthetic scene: class and instance tables plus a labelled point cloud.

Saved beside the bag as ``scene.json`` (tables, human-readable) and ``gt_points.npz`` (points
sampled on every instance's surface with their instance and class ids). Evaluation labels a
reconstructed map by nearest ground-truth point, so the cloud samples surfaces uniformly by
area. Loading never unpickles and checks every field, so a truncated or hand-edited file is
reported as a :class:`~diff2scene.errors.DataFormatError` instead of producing wrong scores.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import DataFormatError
from diff2scene.synth.classes import CLASSES, TIERS, Tier
from diff2scene.synth.scene import SceneGeometry, SceneInstance

#: Name of the tables file inside a synthetic dataset directory.
SCENE_FILE = "scene.json"
#: Name of the labelled point-cloud file inside a synthetic dataset directory.
POINTS_FILE = "gt_points.npz"
#: Version of the on-disk format; bump on any incompatible change.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassInfo:
    """One class of the label space (all classes, present in the scene or not)."""

    class_id: int
    name: str
    tier: Tier


@dataclass(frozen=True)
class InstanceInfo:
    """One instance of the scene and its attributes."""

    instance_id: int
    class_id: int
    class_name: str
    colour_name: str
    #: sRGB, 0-255.
    colour_rgb: tuple[int, int, int]
    #: World axis-aligned box corner (x, y, z) with the smallest coordinates, metres.
    bbox_min_m: tuple[float, float, float]
    #: World axis-aligned box corner with the largest coordinates, metres.
    bbox_max_m: tuple[float, float, float]


@dataclass
class GroundTruth:
    """Everything the benchmark scores against for one synthetic scene."""

    classes: tuple[ClassInfo, ...]
    instances: tuple[InstanceInfo, ...]
    #: (P, 3) float32 points on the instances' surfaces, world frame, metres.
    points: NDArray[np.float32]
    #: (P,) int32 instance id of each point (>= 1).
    point_instance: NDArray[np.int32]
    #: (P,) int32 class id of each point (>= 1).
    point_class: NDArray[np.int32]
    #: Free-form provenance (seed, room size, render settings); JSON-serialisable.
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    def instance_classes(self) -> dict[int, str]:
        """Instance id → class name (what the oracle segmenter needs)."""
        return {inst.instance_id: inst.class_name for inst in self.instances}

    def instance_colours(self) -> dict[int, str]:
        """Instance id → colour name (the oracle segmenter embeds "<colour> <class>")."""
        return {inst.instance_id: inst.colour_name for inst in self.instances}

    def class_tiers(self) -> dict[str, Tier]:
        """Class name → frequency tier (for the head/common/tail mIoU split)."""
        return {c.name: c.tier for c in self.classes}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_scene(
        cls,
        scene: SceneGeometry,
        *,
        points_per_m2: float = 1000.0,
        max_points: int = 2_000_000,
        metadata: dict[str, Any] | None = None,
    ) -> GroundTruth:
        """Tables of ``scene`` and an area-uniform surface sample (deterministic per seed).

        Downward faces resting on the floor are skipped: no camera can see them, and points
        there would be scored as missed by every method alike.
        """
        if points_per_m2 <= 0 or max_points < 1:
            raise ValueError("points_per_m2 must be > 0 and max_points >= 1")
        rng = np.random.default_rng([scene.seed, 0x6701])
        triangles = [_visible_triangles(inst) for inst in scene.instances]
        areas = [float(_areas(tri).sum()) for tri in triangles]
        scale = min(1.0, max_points / max(points_per_m2 * sum(areas), 1.0))
        pts, inst_ids, cls_ids = [], [], []
        for inst, tri, area in zip(scene.instances, triangles, areas, strict=True):
            n = max(1, math.floor(area * points_per_m2 * scale)) if len(tri) else 0
            if n == 0:
                continue
            pts.append(_sample_triangles(tri, n, rng))
            inst_ids.append(np.full(n, inst.instance_id, dtype=np.int32))
            cls_ids.append(np.full(n, inst.class_id, dtype=np.int32))
        instances = tuple(_instance_info(inst) for inst in scene.instances)
        meta = scene.describe()
        meta.update(metadata or {})
        return cls(
            classes=tuple(ClassInfo(c.class_id, c.name, c.tier) for c in CLASSES),
            instances=instances,
            points=np.concatenate(pts).astype(np.float32),
            point_instance=np.concatenate(inst_ids),
            point_class=np.concatenate(cls_ids),
            metadata=meta,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``scene.json`` and ``gt_points.npz`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tables = {
            "format": "diff2scene.synth.groundtruth",
            "version": FORMAT_VERSION,
            "metadata": self.metadata,
            "classes": [{"id": c.class_id, "name": c.name, "tier": c.tier} for c in self.classes],
            "instances": [
                {
                    "id": i.instance_id,
                    "class_id": i.class_id,
                    "class_name": i.class_name,
                    "colour_name": i.colour_name,
                    "colour_rgb": list(i.colour_rgb),
                    "bbox_min_m": list(i.bbox_min_m),
                    "bbox_max_m": list(i.bbox_max_m),
                }
                for i in self.instances
            ],
        }
        (directory / SCENE_FILE).write_text(json.dumps(tables, indent=1) + "\n")
        np.savez_compressed(
            directory / POINTS_FILE,
            points=self.points,
            point_instance=self.point_instance,
            point_class=self.point_class,
        )

    @classmethod
    def load(cls, directory: str | Path) -> GroundTruth:
        """Read and check the files written by :meth:`save`; ``DataFormatError`` if unusable."""
        directory = Path(directory)
        scene_path, points_path = directory / SCENE_FILE, directory / POINTS_FILE
        try:
            tables = json.loads(scene_path.read_text())
        except FileNotFoundError as exc:
            raise DataFormatError(f"ground truth not found: {scene_path}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{scene_path}: not valid JSON: {exc}") from exc
        try:
            classes, instances, metadata = _parse_tables(tables)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"{scene_path}: malformed tables: {exc!r}") from exc
        arrays = _load_points(points_path)
        try:
            return cls(classes, instances, metadata=metadata, **arrays)
        except DataFormatError as exc:
            raise DataFormatError(f"{directory}: {exc}") from exc


# ---------------------------------------------------------------------- helpers


def _instance_info(inst: SceneInstance) -> InstanceInfo:
    lo, hi = inst.bbox_m()
    r, g, b = inst.colour_rgb
    return InstanceInfo(
        instance_id=inst.instance_id,
        class_id=inst.class_id,
        class_name=inst.class_name,
        colour_name=inst.colour_name,
        colour_rgb=(int(r), int(g), int(b)),
        bbox_min_m=(float(lo[0]), float(lo[1]), float(lo[2])),
        bbox_max_m=(float(hi[0]), float(hi[1]), float(hi[2])),
    )


def _visible_triangles(inst: SceneInstance) -> NDArray[np.float64]:
    """(T, 3, 3) triangle corners, without downward faces lying on the floor."""
    tri: NDArray[np.float64] = inst.vertices[inst.triangles]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    down_on_floor = (normal[:, 2] < -0.9 * np.linalg.norm(normal, axis=1)) & (
        tri[:, :, 2].max(axis=1) < 0.01
    )
    kept: NDArray[np.float64] = tri[~down_on_floor]
    return kept


def _areas(tri: NDArray[np.float64]) -> NDArray[np.float64]:
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    areas: NDArray[np.float64] = 0.5 * np.linalg.norm(cross, axis=1)
    return areas


def _sample_triangles(
    tri: NDArray[np.float64], n: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """(n, 3) points uniform by area over (T, 3, 3) triangles."""
    areas = _areas(tri)
    pick = rng.choice(len(tri), size=n, p=areas / areas.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    t = tri[pick]
    points: NDArray[np.float64] = (
        t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    )
    return points


def _triple(value: Any) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in value)
    return (x, y, z)


def _parse_tables(
    tables: Any,
) -> tuple[tuple[ClassInfo, ...], tuple[InstanceInfo, ...], dict[str, Any]]:
    if not isinstance(tables, dict):
        raise TypeError("top level must be an object")
    if tables.get("version") != FORMAT_VERSION:
        raise ValueError(f"version {tables.get('version')!r}, expected {FORMAT_VERSION}")
    classes = []
    for c in tables["classes"]:
        if c["tier"] not in TIERS:
            raise ValueError(f"class {c['name']!r}: tier {c['tier']!r} not in {TIERS}")
        classes.append(ClassInfo(int(c["id"]), str(c["name"]), c["tier"]))
    instances = []
    for i in tables["instances"]:
        r, g, b = (int(v) for v in i["colour_rgb"])
        instances.append(
            InstanceInfo(
                instance_id=int(i["id"]),
                class_id=int(i["class_id"]),
                class_name=str(i["class_name"]),
                colour_name=str(i["colour_name"]),
                colour_rgb=(r, g, b),
                bbox_min_m=_triple(i["bbox_min_m"]),
                bbox_max_m=_triple(i["bbox_max_m"]),
            )
        )
    metadata = tables.get("metadata", {})
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be an object")
    return tuple(classes), tuple(instances), metadata


def _load_points(path: Path) -> dict[str, NDArray[Any]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"points", "point_instance", "point_class"} - set(npz.files)
            if missing:
                raise DataFormatError(f"{path}: missing arrays {sorted(missing)}")
            return {k: npz[k] for k in ("points", "point_instance", "point_class")}
    except FileNotFoundError as exc:
        raise DataFormatError(f"ground-truth points not found: {path}") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"{path}: unreadable point file: {exc}") from exc


def _validate(gt: GroundTruth) -> None:
    """Shapes, dtypes and cross-references; raises DataFormatError on the first problem."""
    class_ids = [c.class_id for c in gt.classes]
    if len(set(class_ids)) != len(class_ids) or any(i < 1 for i in class_ids):
        raise DataFormatError("class ids must be unique and >= 1")
    names = {c.class_id: c.name for c in gt.classes}
    instance_class = {}
    for inst in gt.instances:
        if inst.instance_id < 1 or inst.instance_id in instance_class:
            raise DataFormatError(f"instance id {inst.instance_id} is not unique or < 1")
        if names.get(inst.class_id) != inst.class_name:
            raise DataFormatError(
                f"instance {inst.instance_id}: class {inst.class_id}/{inst.class_name!r} "
                "is not in the class table"
            )
        instance_class[inst.instance_id] = inst.class_id
    pts, pi, pc = gt.points, gt.point_instance, gt.point_class
    if pts.dtype != np.float32 or pts.ndim != 2 or pts.shape[1] != 3:
        raise DataFormatError(f"points must be (P, 3) float32, got {pts.shape} {pts.dtype}")
    n = pts.shape[0]
    for name, arr in (("point_instance", pi), ("point_class", pc)):
        if arr.dtype != np.int32 or arr.shape != (n,):
            raise DataFormatError(f"{name} must be ({n},) int32, got {arr.shape} {arr.dtype}")
    if not np.all(np.isfinite(pts)):
        raise DataFormatError("points contain NaN or inf")
    if n == 0:
        return
    max_id = max(instance_class, default=0)
    if pi.min() < 1 or pi.max() > max_id:
        raise DataFormatError("point_instance refers to instances missing from the table")
    lut = np.zeros(max_id + 1, dtype=np.int64)
    for iid, cid in instance_class.items():
        lut[iid] = cid
    if np.any(lut[pi] == 0):
        raise DataFormatError("point_instance refers to instances missing from the table")
    if np.any(lut[pi] != pc):
        raise DataFormatError("point_class disagrees with the instance table")

"""One synthetic dataset directory: a scene's bag plus its ground-truth sidecar files.

The scene is one room, or a building floor of rooms along corridors when the config has a
``floor`` (:mod:`diff2scene.synth.floor`, toured by :mod:`diff2scene.synth.floor_route`).

Layout (what ``diff2scene synth --out DIR`` writes and the evaluation reads)::

    DIR/bag/            rosbag2 directory (MCAP): RGB-D, camera info, pose, TF, instance images
    DIR/scene.json      class table, instances (class, colour, box), provenance
    DIR/gt_points.npz   labelled surface point cloud

The bag is written under a temporary name and renamed when complete, so an interrupted run
never leaves something that looks like a finished bag.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diff2scene.config import to_dict
from diff2scene.errors import ConfigError
from diff2scene.synth.bag import BagStats, BagTopics, write_bag
from diff2scene.synth.floor import FloorConfig, generate_floor
from diff2scene.synth.floor_route import floor_route
from diff2scene.synth.groundtruth import POINTS_FILE, SCENE_FILE, GroundTruth
from diff2scene.synth.render import (
    CameraTrajectory,
    RenderConfig,
    camera_trajectory,
    render_frames,
)
from diff2scene.synth.scene import SceneConfig, SceneGeometry, generate_scene

#: Name of the rosbag2 directory inside a synthetic dataset directory.
BAG_DIR = "bag"


@dataclass
class SynthConfig:
    """Everything that defines a synthetic dataset besides its seed."""

    #: Room size and contents (of every room, when ``floor`` is set).
    scene: SceneConfig = field(default_factory=SceneConfig)
    #: A building floor of rooms along corridors instead of one room; None: one room. Its
    #: route, not ``render.n_frames``, sets the number of frames.
    floor: FloorConfig | None = None
    #: Camera, path and sensor model.
    render: RenderConfig = field(default_factory=RenderConfig)
    #: Bag topic names.
    topics: BagTopics = field(default_factory=BagTopics)
    #: Ground-truth surface sampling density, points per square metre.
    gt_points_per_m2: float = 1000.0
    #: zstd chunk compression of the MCAP bag.
    compress: bool = True


@dataclass(frozen=True)
class SynthPlan:
    """What a run is about to write, known before the first frame is rendered."""

    n_frames: int
    #: Frame rate of the stamps, Hz (see ``SynthResult.frame_rate_hz``).
    frame_rate_hz: float
    width: int
    height: int
    #: Floor area of the scene (a room's, or a building floor's with its walls), m².
    area_m2: float
    #: The images' size before any compression (colour, depth and instance ids), bytes.
    raw_image_bytes: int

    @property
    def duration_s(self) -> float:
        """Time the recording spans, seconds."""
        return (self.n_frames - 1) / self.frame_rate_hz


@dataclass
class SynthResult:
    """What :func:`synthesize` produced."""

    out_dir: Path
    bag_path: Path
    groundtruth: GroundTruth
    bag: BagStats
    #: Frame rate of the bag's stamps, Hz: the render config's ``rate_hz``, or lower where
    #: that would have moved the camera faster than its speed limits.
    frame_rate_hz: float
    #: Wall-clock time of the whole run, seconds.
    elapsed_s: float


def is_bag_directory(path: Path) -> bool:
    """Whether ``path`` is a rosbag2 directory holding nothing else (safe to delete with
    --force: a mistyped ``--out`` that names a directory of other files is never removed)."""
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return all(n == "metadata.yaml" or n.endswith((".mcap", ".db3")) for n in names)


def synthesize(
    out_dir: str | Path,
    seed: int,
    config: SynthConfig | None = None,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    announce: Callable[[SynthPlan], None] | None = None,
) -> SynthResult:
    """Generate scene ``seed``, render it and write the bag and ground truth under ``out_dir``.

    Refuses (``ConfigError``) to replace an existing bag unless ``force``; even then only a
    directory that holds nothing but bag files is deleted. ``announce`` is called once with
    the plan (frame count, rate, sizes) before the first frame, ``progress`` with the number of
    frames written so far. Frames are rendered and written one at a time, so memory does not
    grow with the sequence.
    """
    start = time.perf_counter()
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    bag_path = out_dir / BAG_DIR
    # The bag's file is named after its directory, so it is written as ``.partial/bag``.
    partial_root = out_dir / ".partial"
    partial = partial_root / BAG_DIR
    if bag_path.exists():
        if not force:
            raise ConfigError(f"{bag_path} already exists; pass --force to overwrite it")
        if not is_bag_directory(bag_path):
            raise ConfigError(f"{bag_path} exists and holds non-bag files; not deleting it")
        shutil.rmtree(bag_path)
    if partial.exists():
        if not is_bag_directory(partial):
            raise ConfigError(f"{partial} holds non-bag files; remove it by hand")
        shutil.rmtree(partial)  # left over from an interrupted run
    partial_root.mkdir(parents=True, exist_ok=True)

    scene, trajectory, area_m2, route = _plan(seed, config)
    n_frames = len(trajectory.poses)
    frame_rate_hz = trajectory.rate_hz
    if announce is not None:
        width, height = config.render.width, config.render.height
        announce(SynthPlan(
            n_frames=n_frames, frame_rate_hz=frame_rate_hz, width=width, height=height,
            area_m2=area_m2, raw_image_bytes=n_frames * width * height * (3 + 2 + 4),
        ))
    metadata: dict[str, Any] = {
        "generator": "diff2scene.synth",
        "config": to_dict(config),
        "frames": n_frames,
        "frame_rate_hz": frame_rate_hz,
        "bag": BAG_DIR,
    }
    if route:
        metadata["route"] = route
    gt = GroundTruth.from_scene(
        scene, points_per_m2=config.gt_points_per_m2, metadata=metadata
    )
    for name in (SCENE_FILE, POINTS_FILE):
        (out_dir / name).unlink(missing_ok=True)
    stats = write_bag(
        partial,
        render_frames(scene, config.render, trajectory=trajectory),
        topics=config.topics,
        compress=config.compress,
        progress=progress,
    )
    partial.rename(bag_path)
    partial_root.rmdir()
    stats.path = bag_path
    gt.save(out_dir)
    return SynthResult(
        out_dir=out_dir,
        bag_path=bag_path,
        groundtruth=gt,
        bag=stats,
        frame_rate_hz=frame_rate_hz,
        elapsed_s=time.perf_counter() - start,
    )


def _plan(
    seed: int, config: SynthConfig
) -> tuple[SceneGeometry, CameraTrajectory, float, dict[str, Any]]:
    """(scene, camera trajectory, floor area in m², route metadata) of a run."""
    if config.floor is None:
        room = generate_scene(seed, config.scene)
        area_m2 = float(room.room_size_m[0] * room.room_size_m[1])
        return room, camera_trajectory(room, config.render), area_m2, {}
    floor = generate_floor(seed, config.floor, config.scene)
    route = floor_route(floor, config.render, config.floor.route)
    return floor, route.trajectory, floor.area_m2, route.describe()

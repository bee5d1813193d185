"""A Replica sequence as NICE-SLAM distributes it (the rendered ``Replica/<room>`` sequences)::

    SEQ_DIR/results/frame%06d.jpg   colour
    SEQ_DIR/results/depth%06d.png   uint16 depth, png_depth_scale units per metre
    SEQ_DIR/traj.txt                one camera-to-world pose per line: 16 numbers, row-major

with the camera from a YAML file (``--camera``): ``H, W, fx, fy, cx, cy, png_depth_scale``,
flat or under ``cam:`` as in NICE-SLAM's ``configs/Replica/replica.yaml``. Line i of
``traj.txt`` is frame i; its poses are in OpenCV's camera convention (x right, y down,
z forward), the optical frame the bag's poses name. Colour and depth are rendered by one
camera, so no registration is needed.

The ground truth, where present, is the Replica scene's semantic mesh, as the evaluation
reads it (:func:`diff2scene.eval.datasets.load_replica`): ``[habitat/]mesh_semantic.ply`` and
``[habitat/]info_semantic.json`` of the Replica-Dataset scene (``room_0/``), by default looked
for in SEQ_DIR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from diff2scene.datasets.sequence import (
    checked_pose,
    read_depth_png,
    read_rgb,
    require_dir,
    require_file,
)
from diff2scene.errors import DataFormatError
from diff2scene.types import CameraIntrinsics, Frame

#: The camera file's keys (NICE-SLAM's names).
CAMERA_KEYS = ("H", "W", "fx", "fy", "cx", "cy", "png_depth_scale")
#: The ground-truth files of a Replica scene.
MESH = "mesh_semantic.ply"
INFO = "info_semantic.json"


@dataclass(frozen=True)
class ReplicaCamera:
    """The rendering camera of a sequence."""

    intrinsics: CameraIntrinsics
    #: Depth PNG units per metre (6553.5 in NICE-SLAM's Replica: 1 m = 6553.5).
    png_depth_scale: float


def read_camera(path: Path) -> ReplicaCamera:
    """The camera of a NICE-SLAM config (keys flat or under ``cam:``)."""
    try:
        data = yaml.safe_load(require_file(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataFormatError(f"cannot read camera file {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("cam"), dict):
        data = data["cam"]
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a mapping with {', '.join(CAMERA_KEYS)}")
    missing = [k for k in CAMERA_KEYS if k not in data]
    if missing:
        raise DataFormatError(f"{path}: missing camera key(s) {', '.join(missing)} "
                              f"(needs {', '.join(CAMERA_KEYS)}, flat or under cam:)")  # fmt: skip
    try:
        values = {k: float(data[k]) for k in CAMERA_KEYS}
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"{path}: camera values must be numbers: {exc}") from exc
    width, height = values["W"], values["H"]
    if not (width.is_integer() and height.is_integer() and width > 0 and height > 0):
        raise DataFormatError(f"{path}: W and H must be positive integers, got {width}, {height}")
    if not all(np.isfinite(v) for v in values.values()) or min(
        values["fx"], values["fy"], values["png_depth_scale"]
    ) <= 0:
        raise DataFormatError(f"{path}: fx, fy and png_depth_scale must be finite and > 0")
    intrinsics = CameraIntrinsics(width=int(width), height=int(height), fx=values["fx"],
                                  fy=values["fy"], cx=values["cx"], cy=values["cy"])  # fmt: skip
    return ReplicaCamera(intrinsics, values["png_depth_scale"])


def read_trajectory(path: Path) -> NDArray[np.float64]:
    """(N, 4, 4) poses of ``traj.txt``: 16 numbers per line, row-major."""
    rows: list[list[float]] = []
    try:
        lines = require_file(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read {path}: {exc}") from exc
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError as exc:
            raise DataFormatError(f"{path}:{line_no}: not numbers: {exc}") from exc
        if len(values) != 16:
            raise DataFormatError(f"{path}:{line_no}: {len(values)} numbers, a pose has 16")
        rows.append(values)
    if not rows:
        raise DataFormatError(f"{path}: no poses")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4, 4)


class ReplicaSequence:
    """One NICE-SLAM Replica sequence (see the module doc)."""

    dataset = "replica"

    def __init__(
        self,
        seq_dir: str | Path,
        camera_file: str | Path,
        *,
        ground_truth_dir: str | Path | None = None,
    ) -> None:
        self.root = require_dir(Path(seq_dir), "Replica sequence directory")
        self.name = self.root.name
        self.results = require_dir(self.root / "results", "frames (results/)")
        self.camera = read_camera(Path(camera_file))
        self.trajectory = read_trajectory(self.root / "traj.txt")
        self.numbers: Sequence[int] = range(len(self.trajectory))
        self._size = (self.camera.intrinsics.width, self.camera.intrinsics.height)
        self._ground_truth = self._find_ground_truth(
            Path(ground_truth_dir) if ground_truth_dir is not None else None
        )

    def color_path(self, number: int) -> Path:
        return self.results / f"frame{number:06d}.jpg"

    def depth_path(self, number: int) -> Path:
        return self.results / f"depth{number:06d}.png"

    def _find_ground_truth(self, directory: Path | None) -> list[Path]:
        """The semantic mesh and its object table, in ``directory`` or its ``habitat/``
        (default: the sequence directory, where a missing pair just means no ground truth)."""
        where = directory if directory is not None else self.root
        if directory is not None:
            require_dir(directory, "Replica ground-truth directory")
        base = where / "habitat" if (where / "habitat").is_dir() else where
        found = [p for p in (base / MESH, base / INFO) if p.is_file()]
        if len(found) == 2:
            return found
        if found or directory is not None:
            raise DataFormatError(f"{base}: the semantic ground truth needs both {MESH} and "
                                  f"{INFO}")  # fmt: skip
        return []

    def check_files(self, numbers: Sequence[int]) -> None:
        for number in numbers:
            require_file(self.color_path(number))
            require_file(self.depth_path(number))

    def pose(self, number: int) -> NDArray[np.float64] | None:
        return checked_pose(self.trajectory[number], f"{self.root / 'traj.txt'}, pose {number}")

    def frame(self, number: int, T_world_camera: NDArray[np.float64], stamp_ns: int) -> Frame:
        rgb = read_rgb(self.color_path(number), self._size)
        depth = read_depth_png(self.depth_path(number), self._size)
        return Frame(
            stamp_ns=stamp_ns,
            rgb=np.asarray(rgb, dtype=np.uint8),
            depth_m=depth.astype(np.float32) / np.float32(self.camera.png_depth_scale),
            intrinsics=self.camera.intrinsics,
            T_world_camera=T_world_camera,
            index=number,
        )

    def ground_truth(self) -> list[Path]:
        return list(self._ground_truth)

    def details(self) -> dict[str, Any]:
        k = self.camera.intrinsics
        return {
            "camera": {"width": k.width, "height": k.height, "fx": k.fx, "fy": k.fy,
                       "cx": k.cx, "cy": k.cy},
            "png_depth_scale": self.camera.png_depth_scale,
            "registration": "none (colour and depth rendered by one camera)",
        }  # fmt: skip

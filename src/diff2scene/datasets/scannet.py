"""A ScanNet scene as exported by ScanNet's ``SensReader`` (``reader.py --export_*``)::

    SCENE_DIR/color/N.jpg                    colour, 1296x968 in ScanNet
    SCENE_DIR/depth/N.png                    uint16 depth in millimetres, 640x480
    SCENE_DIR/pose/N.txt                     4x4 camera-to-world (rows of -inf: tracking lost)
    SCENE_DIR/intrinsic/intrinsic_color.txt  4x4 calibration of the colour images
    SCENE_DIR/intrinsic/intrinsic_depth.txt  4x4 calibration of the depth images

and, in the scene's release directory (``scans/<scene>/``, by default SCENE_DIR itself), the
ground truth the evaluation reads (:func:`diff2scene.eval.datasets.load_scannet`)::

    <scene>_vh_clean_2.labels.ply  <scene>.aggregation.json  <scene>_vh_clean_2.0.010000.segs.json

Frames are the numbers N of ``color/*.jpg``. The poses are in OpenCV's camera convention
(x right, y down, z forward), the optical frame the bag's poses name. Each frame's colour is
registered to its depth camera (:func:`~diff2scene.datasets.sequence.register_to_depth`), so
the bag carries one calibration: the depth camera's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from diff2scene.datasets.sequence import (
    checked_pose,
    image_size,
    intrinsics_from_matrix,
    read_depth_png,
    read_matrix,
    read_rgb,
    register_to_depth,
    require_dir,
    require_file,
)
from diff2scene.errors import DataFormatError
from diff2scene.types import Frame

#: ScanNet depth PNGs hold millimetres.
DEPTH_UNITS_PER_M = 1000.0
#: Suffixes of the ground-truth files, after the scene name.
LABELS_PLY = "_vh_clean_2.labels.ply"
AGGREGATION = ".aggregation.json"
SEGMENTS = "_vh_clean_2.0.010000.segs.json"


def _number(path: Path) -> int | None:
    return int(path.stem) if path.stem.isdigit() else None


class ScanNetSequence:
    """The exported frames of one ScanNet scene (see the module doc)."""

    dataset = "scannet"

    def __init__(self, scene_dir: str | Path, *, ground_truth_dir: str | Path | None = None
                 ) -> None:  # fmt: skip
        self.root = require_dir(Path(scene_dir), "ScanNet scene directory")
        self.color_dir = require_dir(self.root / "color", "colour frames (color/N.jpg)")
        self.depth_dir = require_dir(self.root / "depth", "depth frames (depth/N.png)")
        self.pose_dir = require_dir(self.root / "pose", "poses (pose/N.txt)")
        intrinsic = require_dir(self.root / "intrinsic", "intrinsics (intrinsic/*.txt)")
        numbers = sorted(n for p in self.color_dir.glob("*.jpg") if (n := _number(p)) is not None)
        if not numbers:
            raise DataFormatError(f"{self.color_dir}: no colour frames named N.jpg")
        self.numbers: Sequence[int] = numbers
        color_size = image_size(self.color_path(numbers[0]))
        self.depth_size = image_size(self.depth_path(numbers[0]))
        color_k = intrinsic / "intrinsic_color.txt"
        depth_k = intrinsic / "intrinsic_depth.txt"
        self.color_intrinsics = intrinsics_from_matrix(
            read_matrix(color_k, rows=4, cols=4), color_size, color_k
        )
        self.depth_intrinsics = intrinsics_from_matrix(
            read_matrix(depth_k, rows=4, cols=4), self.depth_size, depth_k
        )
        self._color_size = color_size
        self.name, self._ground_truth = self._find_ground_truth(
            Path(ground_truth_dir) if ground_truth_dir is not None else None
        )

    def color_path(self, number: int) -> Path:
        return self.color_dir / f"{number}.jpg"

    def depth_path(self, number: int) -> Path:
        return self.depth_dir / f"{number}.png"

    def pose_path(self, number: int) -> Path:
        return self.pose_dir / f"{number}.txt"

    def _find_ground_truth(self, directory: Path | None) -> tuple[str, list[Path]]:
        """The scene name and its ground-truth files: the labelled mesh, then the aggregation
        and segments beside it where present (ScanNet200 labels need both; ScanNet20 labels
        are the mesh's own). Without ``directory`` a scene without ground truth (the test
        split) imports without it; a directory given explicitly must hold it."""
        where = directory if directory is not None else self.root
        if directory is not None:
            require_dir(directory, "ScanNet ground-truth directory")
        plys = sorted(where.glob(f"*{LABELS_PLY}"))
        own = [p for p in plys if p.name == f"{self.root.name}{LABELS_PLY}"]
        if len(plys) > 1 and not own:
            raise DataFormatError(f"{where}: several labelled meshes "
                                  f"({', '.join(p.name for p in plys)}); pass the scene's "
                                  "own directory as --ground-truth")  # fmt: skip
        if not plys:
            if directory is not None:
                raise DataFormatError(f"{directory}: no <scene>{LABELS_PLY}")
            return self.root.name, []
        ply = (own or plys)[0]
        scene = ply.name[: -len(LABELS_PLY)]
        extra = [where / f"{scene}{AGGREGATION}", where / f"{scene}{SEGMENTS}"]
        return scene, [ply, *(p for p in extra if p.is_file())]

    def check_files(self, numbers: Sequence[int]) -> None:
        for number in numbers:
            for path in (self.color_path(number), self.depth_path(number),
                         self.pose_path(number)):  # fmt: skip
                require_file(path)

    def pose(self, number: int) -> NDArray[np.float64] | None:
        path = self.pose_path(number)
        return checked_pose(read_matrix(path, rows=4, cols=4), str(path))

    def frame(self, number: int, T_world_camera: NDArray[np.float64], stamp_ns: int) -> Frame:
        color = read_rgb(self.color_path(number), self._color_size)
        rgb = register_to_depth(color, self.color_intrinsics, self.depth_intrinsics)
        depth = read_depth_png(self.depth_path(number), self.depth_size)
        return Frame(
            stamp_ns=stamp_ns,
            rgb=np.asarray(rgb, dtype=np.uint8),
            depth_m=(depth.astype(np.float32) / np.float32(DEPTH_UNITS_PER_M)),
            intrinsics=self.depth_intrinsics,
            T_world_camera=T_world_camera,
            index=number,
        )

    def ground_truth(self) -> list[Path]:
        return list(self._ground_truth)

    def details(self) -> dict[str, Any]:
        c, d = self.color_intrinsics, self.depth_intrinsics
        return {
            "color": {"width": c.width, "height": c.height, "fx": c.fx, "fy": c.fy,
                      "cx": c.cx, "cy": c.cy},
            "depth": {"width": d.width, "height": d.height, "fx": d.fx, "fy": d.fy,
                      "cx": d.cx, "cy": d.cy},
            "registration": "colour resampled onto the depth camera (shared optical centre)",
            "depth_units_per_m": DEPTH_UNITS_PER_M,
        }  # fmt: skip

"""What every dataset import shares: frame selection, stamps, colour registration, the bag
and the ground truth beside it.

A dataset reader (:class:`DatasetSequence`) names its frames, reads one pose and one frame at
a time and lists its ground-truth files; :func:`import_sequence` does the rest:

* **Selection.** Every ``every``-th frame of the sequence, in frame-number order; frames whose
  pose is invalid (non-finite, as ScanNet marks lost tracking) are skipped and counted; the
  import stops after ``max_frames`` written frames.
* **Stamps.** Datasets keep no capture times, so frame number N is stamped
  ``start_stamp_ns + N / rate_hz``: a strided import keeps the sequence's own timing, and a
  skipped frame leaves the gap a dropped frame leaves in a recording (a replay counts it).
* **Bag.** The frames go through the synthetic-bag writer (:func:`diff2scene.synth.bag.write_bag`)
  with :func:`import_topics`: what ``ros2 bag record`` keeps of a camera driver's
  image_transport topics (JPEG colour, ``compressedDepth`` PNG depth, CameraInfo) and of a
  localiser (map → camera optical frame on ``/tf``). The bag is written under a temporary name
  and renamed when complete, so a failed import never leaves something that looks like a bag.
* **Ground truth** is linked (symlinked, copied where the file system refuses links) into the
  bag's parent directory, where the evaluation's loaders
  (:func:`diff2scene.eval.datasets.load_scene`) read it; a parent that already holds another
  scene's ground truth is refused, since a replay would score the bag against it.
* **Summary.** ``<bag>.import.json`` beside the bag says what was read, written and skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.synth.bag import BagTopics, write_bag
from diff2scene.synth.dataset import is_bag_directory
from diff2scene.types import CameraIntrinsics, Frame

#: Stamp of frame number 0: a plausible wall-clock epoch rather than 0, which tf2 reads as
#: "the latest transform" (the synthetic bags start at the same instant).
DEFAULT_START_STAMP_NS = 1_700_000_000_000_000_000
#: Ground-truth files by which the evaluation recognises a scene directory
#: (:func:`diff2scene.eval.datasets.detect_format`): another scene's in a bag's parent
#: directory would be taken for this bag's.
GROUND_TRUTH_MARKERS = (
    "scene.json", "*_vh_clean_2.labels.ply", "mesh_semantic.ply", "info_semantic.json", "habitat",
)  # fmt: skip
#: A pose whose rotation is further than this from orthonormal (max |RᵀR − I|) is malformed.
_ROTATION_TOLERANCE = 1e-3


def import_topics(*, jpeg_quality: int = 95) -> BagTopics:
    """The topics of an imported sequence: image_transport's ``compressed`` colour and
    ``compressedDepth`` depth under ``/camera``, one CameraInfo, and the pose only on ``/tf``
    (map → camera optical frame), as a camera driver plus a localiser are recorded. Colour
    and depth share the depth camera's calibration (the colour is registered to it)."""
    return BagTopics(
        pose="",
        instance="",
        color_transport="compressed",
        depth_transport="compressedDepth",
        jpeg_quality=jpeg_quality,
        tf_tree="camera",
    )


@dataclass
class ImportConfig:
    """Which frames of a sequence are imported, and how they are stamped and stored."""

    #: Keep every n-th frame of the sequence (1 = all).
    every: int = 1
    #: Stop after this many frames are written (0 = no limit); skipped frames do not count.
    max_frames: int = 0
    #: Nominal frame rate the stamps are spaced at, Hz (frame N at N / rate_hz): ScanNet was
    #: captured at 30 Hz; Replica's rendered sequences have no rate of their own.
    rate_hz: float = 30.0
    #: Stamp of frame number 0, nanoseconds.
    start_stamp_ns: int = DEFAULT_START_STAMP_NS
    #: JPEG quality of the colour images (image_transport's default).
    jpeg_quality: int = 95
    #: zstd chunk compression of the MCAP file.
    compress: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"--every must be >= 1, got {self.every}")
        if self.max_frames < 0:
            raise ConfigError(f"--max-frames must be >= 0, got {self.max_frames}")
        if not (np.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ConfigError(f"--rate-hz must be > 0, got {self.rate_hz}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.start_stamp_ns <= 0:
            raise ConfigError(f"start_stamp_ns must be > 0, got {self.start_stamp_ns}")

    def stamp_ns(self, number: int) -> int:
        """Stamp of frame number ``number``."""
        return self.start_stamp_ns + round(number * 1e9 / self.rate_hz)


class DatasetSequence(Protocol):
    """One sequence of a dataset, as its reader module presents it."""

    #: Dataset name ("scannet", "replica").
    dataset: str
    #: Scene or sequence name.
    name: str
    #: The directory the sequence is read from.
    root: Path
    #: The sequence's frame numbers, ascending.
    numbers: Sequence[int]

    def check_files(self, numbers: Sequence[int]) -> None:
        """Raise :class:`DataFormatError` naming the first file of ``numbers`` that is missing
        (before any frame is written, not minutes into the import)."""

    def pose(self, number: int) -> NDArray[np.float64] | None:
        """(4, 4) camera-to-world pose of the optical frame, None when the dataset marks it
        invalid; :class:`DataFormatError` when it is unreadable or not a rigid transform."""

    def frame(self, number: int, T_world_camera: NDArray[np.float64], stamp_ns: int) -> Frame:
        """The frame's colour registered to its depth, depth in metres, calibration, pose."""

    def ground_truth(self) -> list[Path]:
        """The ground-truth files to link beside the bag (empty when the scene has none)."""

    def details(self) -> dict[str, Any]:
        """What the summary records about the camera and the files read."""


# --------------------------------------------------------------------------- reading files


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataFormatError(f"{what} not found: {path}")
    return path


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataFormatError(f"missing file: {path}")
    return path


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(require_file(path))
        image.load()
    except OSError as exc:  # UnidentifiedImageError and truncated files are OSErrors
        raise DataFormatError(f"cannot read image {path}: {exc}") from exc
    return image


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    try:
        with Image.open(require_file(path)) as image:
            return image.size
    except OSError as exc:
        raise DataFormatError(f"cannot read image {path}: {exc}") from exc


def read_rgb(path: Path, size: tuple[int, int]) -> Image.Image:
    """The colour image at ``path`` as RGB; :class:`DataFormatError` unless it is
    ``size`` (width, height) pixels."""
    image = _open_image(path)
    if image.size != size:
        raise DataFormatError(f"{path}: {image.size[0]}x{image.size[1]} pixels, the sequence's "
                              f"colour images are {size[0]}x{size[1]}")  # fmt: skip
    return image.convert("RGB")


def read_depth_png(path: Path, size: tuple[int, int]) -> NDArray[np.uint16]:
    """(H, W) uint16 raw depth of a 16-bit single-channel PNG of ``size`` (width, height)."""
    image = _open_image(path)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise DataFormatError(f"{path}: expected a 16-bit single-channel depth PNG, got mode "
                              f"{image.mode}")  # fmt: skip
    if image.size != size:
        raise DataFormatError(f"{path}: {image.size[0]}x{image.size[1]} pixels, expected "
                              f"{size[0]}x{size[1]}")  # fmt: skip
    raw = np.asarray(image)
    if raw.dtype != np.uint16 and (raw.min(initial=0) < 0 or raw.max(initial=0) > 65535):
        raise DataFormatError(f"{path}: depth values outside 0..65535")
    return raw.astype(np.uint16)


def read_matrix(path: Path, *, rows: int, cols: int) -> NDArray[np.float64]:
    """A whitespace-separated text matrix of exactly ``rows`` x ``cols`` numbers."""
    try:
        values = np.loadtxt(require_file(path), dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataFormatError(f"{path}: not a matrix of numbers: {exc}") from exc
    if values.shape != (rows, cols):
        raise DataFormatError(f"{path}: expected {rows}x{cols} numbers, got "
                              f"{values.shape[0]}x{values.shape[1]}")  # fmt: skip
    return values


def intrinsics_from_matrix(
    K: NDArray[np.float64], size: tuple[int, int], where: Path
) -> CameraIntrinsics:
    """Pinhole intrinsics from a 3x3 or 4x4 calibration matrix, for images of ``size``."""
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
        raise DataFormatError(f"{where}: focal lengths must be finite and > 0, got "
                              f"fx={fx} fy={fy}")  # fmt: skip
    return CameraIntrinsics(width=size[0], height=size[1], fx=fx, fy=fy, cx=cx, cy=cy)


def checked_pose(T: NDArray[np.float64], where: str) -> NDArray[np.float64] | None:
    """``T`` if it is a rigid camera-to-world transform, None if the dataset marks it invalid
    (any non-finite entry: ScanNet writes rows of ``-inf`` where tracking was lost);
    :class:`DataFormatError` for a finite matrix that is not rigid (a malformed file)."""
    if not np.isfinite(T).all():
        return None
    R = T[:3, :3]
    if not np.allclose(T[3], (0.0, 0.0, 0.0, 1.0), atol=1e-6) or (
        np.abs(R.T @ R - np.eye(3)).max() > _ROTATION_TOLERANCE or np.linalg.det(R) <= 0
    ):
        raise DataFormatError(f"{where}: not a rigid camera-to-world transform: {T.tolist()}")
    return T


def register_to_depth(
    image: Image.Image,
    color: CameraIntrinsics,
    depth: CameraIntrinsics,
    *,
    resample: Image.Resampling = Image.Resampling.BOX,
) -> Image.Image:
    """``image`` (seen by the ``color`` camera) resampled onto the ``depth`` camera's pixels.

    The two cameras are taken to share their optical centre and axes (ScanNet's exported
    colour and depth frames do; their extrinsics are identity), so depth pixel (u, v) sees
    colour pixel ``cx_c + fx_c / fx_d · (u − cx_d)`` (and likewise in v): the depth image's
    field of view is a box in the colour image, which is area-averaged (``BOX``, like
    OpenCV's INTER_AREA; ``NEAREST`` for label images) down to the depth size. Where the
    depth view reaches past the colour image, the colour's edge pixels are repeated.
    """
    sx, sy = color.fx / depth.fx, color.fy / depth.fy
    # Box edges in PIL's pixel-edge coordinates (pixel i spans [i, i + 1]).
    x0 = color.cx + 0.5 + sx * (-0.5 - depth.cx)
    x1 = color.cx + 0.5 + sx * (depth.width - 0.5 - depth.cx)
    y0 = color.cy + 0.5 + sy * (-0.5 - depth.cy)
    y1 = color.cy + 0.5 + sy * (depth.height - 0.5 - depth.cy)
    width, height = image.size
    pad = [max(0, int(np.ceil(v))) for v in (-x0, -y0, x1 - width, y1 - height)]
    if any(pad):
        array = np.asarray(image)
        widths = ((pad[1], pad[3]), (pad[0], pad[2])) + ((0, 0),) * (array.ndim - 2)
        image = Image.fromarray(np.pad(array, widths, mode="edge"))
        x0, x1, y0, y1 = x0 + pad[0], x1 + pad[0], y0 + pad[1], y1 + pad[1]
    box = (max(0.0, x0), max(0.0, y0), min(float(image.size[0]), x1),
           min(float(image.size[1]), y1))  # fmt: skip
    return image.resize((depth.width, depth.height), resample, box=box)


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class LinkedFile:
    """One ground-truth file placed beside the bag."""

    source: str
    destination: str
    #: "symlink", "copy", or "kept" (the destination already was this file).
    how: str


def summary_path(bag: Path) -> Path:
    """Where an import's summary is written: ``<bag>.import.json`` beside the bag."""
    return bag.parent / f"{bag.name}.import.json"


def _plan_links(files: Sequence[Path], directory: Path, *, force: bool) -> list[Path]:
    """The destinations of ``files`` in ``directory``; refuses a destination that already is
    another file (a symlink is replaced when ``force``) and a directory holding some other
    scene's ground truth."""
    destinations = [directory / f.name for f in files]
    ours = {d.name for d in destinations}
    for source, dest in zip(files, destinations, strict=True):
        if not os.path.lexists(dest):
            continue
        if dest.exists() and dest.samefile(source):
            continue
        if not (dest.is_symlink() and force):
            raise DataFormatError(
                f"{dest} already exists and is not {source}: import each scene beside its "
                "own bag (--out DIR/<scene>/bag)"
                + (", or pass --force to replace the link" if dest.is_symlink() else "")
            )
    foreign = sorted(
        p.name for pattern in GROUND_TRUTH_MARKERS for p in directory.glob(pattern)
        if p.name not in ours
    )  # fmt: skip
    if foreign:
        raise DataFormatError(
            f"{directory} holds other ground truth ({', '.join(foreign)}); a replay of the bag "
            "would be scored against it: import each scene beside its own bag "
            "(--out DIR/<scene>/bag)"
        )
    return destinations


def _link(source: Path, dest: Path) -> LinkedFile:
    if dest.exists() and dest.samefile(source):
        return LinkedFile(str(source), str(dest), "kept")
    if os.path.lexists(dest):
        dest.unlink()  # a link to another file, replaced under --force (see _plan_links)
    try:
        dest.symlink_to(source.resolve())
        how = "symlink"
    except OSError:
        shutil.copy2(source, dest)
        how = "copy"
    return LinkedFile(str(source), str(dest), how)


# --------------------------------------------------------------------------- the import


@dataclass
class ImportResult:
    """What an import wrote (also ``<bag>.import.json``)."""

    dataset: str
    scene: str
    source: str
    bag: str
    frames_in_sequence: int
    #: Frames the stride chose (reading stops once ``max_frames`` are written).
    frames_selected: int
    frames_written: int
    #: Frame numbers skipped because the dataset marks their pose invalid.
    invalid_pose_frames: list[int]
    #: Frame numbers written (first and last), and the stamps' rate.
    first_frame: int
    last_frame: int
    rate_hz: float
    every: int
    max_frames: int
    #: Messages per topic.
    messages: dict[str, int]
    ground_truth: list[LinkedFile] = field(default_factory=list)
    camera: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def _prepare_bag(bag: Path, *, force: bool) -> Path:
    """The temporary root the bag is written under; clears a finished bag under ``force``."""
    if bag.exists():
        if not force:
            raise ConfigError(f"{bag} already exists; pass --force to replace it")
        if not is_bag_directory(bag):
            raise ConfigError(f"{bag} exists and holds files other than a bag; not deleting it")
        shutil.rmtree(bag)
    partial_root = bag.parent / f".{bag.name}.partial"
    if partial_root.exists():  # left over from a killed import
        if any(p.name != bag.name or not is_bag_directory(p) for p in partial_root.iterdir()):
            raise ConfigError(f"{partial_root} holds files other than a bag; remove it by hand")
        shutil.rmtree(partial_root)
    partial_root.mkdir(parents=True)
    return partial_root


def import_sequence(
    sequence: DatasetSequence,
    bag: str | Path,
    config: ImportConfig | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Write ``sequence`` as the rosbag2 (MCAP) directory ``bag``, its ground truth beside it
    and ``<bag>.import.json`` (see the module doc). Raises :class:`DataFormatError` naming the
    missing or unreadable file, or when no selected frame has a valid pose."""
    from tqdm import tqdm

    start = time.perf_counter()
    config = config or ImportConfig()
    bag = Path(bag)
    selected = list(sequence.numbers[:: config.every])
    if not selected:
        raise DataFormatError(f"{sequence.name}: the sequence has no frames")
    sequence.check_files(selected)
    gt_files = sequence.ground_truth()
    destinations = _plan_links(gt_files, bag.parent, force=force)
    partial_root = _prepare_bag(bag, force=force)
    invalid: list[int] = []
    written: list[int] = []
    total = min(len(selected), config.max_frames) if config.max_frames else len(selected)

    def frames(bar: Any) -> Iterator[Frame]:
        for number in selected:
            if config.max_frames and len(written) >= config.max_frames:
                return
            T = sequence.pose(number)
            if T is None:
                invalid.append(number)
                if not config.max_frames:  # the bar counts frames to write
                    bar.total -= 1
                bar.set_postfix(invalid_poses=len(invalid))
                continue
            frame = sequence.frame(number, T, config.stamp_ns(number))
            written.append(number)
            bar.update()
            yield frame

    try:
        with tqdm(total=total, desc=f"import {sequence.name}", unit="frame",
                  disable=not progress) as bar:  # fmt: skip
            stats = write_bag(partial_root / bag.name, frames(bar),
                              topics=import_topics(jpeg_quality=config.jpeg_quality),
                              compress=config.compress)  # fmt: skip
        if not written:
            raise DataFormatError(f"{sequence.name}: none of the {len(selected)} selected "
                                  f"frames has a valid pose ({len(invalid)} invalid)")  # fmt: skip
        (partial_root / bag.name).rename(bag)
    finally:
        shutil.rmtree(partial_root, ignore_errors=True)
    linked = [_link(src, dst) for src, dst in zip(gt_files, destinations, strict=True)]
    result = ImportResult(
        dataset=sequence.dataset,
        scene=sequence.name,
        source=str(sequence.root),
        bag=str(bag),
        frames_in_sequence=len(sequence.numbers),
        frames_selected=len(selected),
        frames_written=len(written),
        invalid_pose_frames=invalid,
        first_frame=written[0],
        last_frame=written[-1],
        rate_hz=config.rate_hz,
        every=config.every,
        max_frames=config.max_frames,
        messages=dict(stats.messages),
        ground_truth=linked,
        camera=sequence.details(),
        elapsed_s=time.perf_counter() - start,
    )
    result.save(summary_path(bag))
    return result

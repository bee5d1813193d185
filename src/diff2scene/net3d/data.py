"""Distillation data: one cached file per scene with voxels, keyframe masks and embeddings.

Building a scene runs the mapper over all frames (final surface voxels), then the 2D segmenter
*once* per keyframe and the mask unprojection against the final voxels; the result is written
as a safetensors file so that 200 epochs never touch the 2D model again. Layout (all keys):

- ``coords`` (M, 3) int32 voxel coordinates, ``colors`` (M, 3) uint8 RGB;
- per keyframe ``j`` (``view0000``, ``view0001``, ...): ``{view}.voxel_index`` (V,) int64 visible
  voxels, ``{view}.weights`` (N, V) float16 memberships B3d, ``{view}.emb.{space}`` (N, D)
  float32 mask embeddings;
- metadata: format name/version, ``num_views``, ``voxel_size_m``, ``segmenter``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from diff2scene.errors import DataFormatError, InputError
from diff2scene.segmentation.base import Segmenter2D
from diff2scene.types import Frame

if TYPE_CHECKING:
    from diff2scene.mapping import KeyframeConfig, MapperConfig, UnprojectConfig

_LOG = logging.getLogger(__name__)

CACHE_FORMAT = "diff2scene.net3d.scene"
CACHE_VERSION = "1"


@dataclass
class ViewTargets:
    """What one keyframe teaches: visible voxels, their memberships and the mask classifiers."""

    voxel_index: NDArray[np.int64]  # (V,) into the scene's voxels
    weights: NDArray[np.float16]  # (N, V) B3d in [0, 1]
    embeddings: dict[str, NDArray[np.float32]]  # space -> (N, D)

    @property
    def num_masks(self) -> int:
        return int(self.weights.shape[0])


@dataclass
class SceneData:
    """One scene's voxels and per-keyframe distillation targets."""

    coords: NDArray[np.int32]  # (M, 3)
    colors: NDArray[np.uint8]  # (M, 3) RGB
    views: list[ViewTargets]
    voxel_size_m: float
    segmenter: str = ""

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def validate(self) -> None:
        """Reject inconsistent arrays at the boundary instead of failing inside training."""
        m = self.num_voxels
        if self.coords.shape != (m, 3) or self.colors.shape != (m, 3):
            raise DataFormatError(f"coords {self.coords.shape} / colors {self.colors.shape}")
        for j, v in enumerate(self.views):
            if v.weights.ndim != 2 or v.weights.shape[1] != v.voxel_index.shape[0]:
                raise DataFormatError(f"view {j}: weights {v.weights.shape} vs index")
            if v.voxel_index.size and (v.voxel_index.min() < 0 or v.voxel_index.max() >= m):
                raise DataFormatError(f"view {j}: voxel index outside the scene's {m} voxels")
            for space, emb in v.embeddings.items():
                if emb.ndim != 2 or emb.shape[0] != v.num_masks:
                    raise DataFormatError(f"view {j}: {space} embeddings {emb.shape}")

    def save(self, path: str | Path) -> Path:
        """Write the scene as one safetensors file (no pickle anywhere)."""
        self.validate()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, NDArray[np.generic]] = {
            "coords": np.ascontiguousarray(self.coords, dtype=np.int32),
            "colors": np.ascontiguousarray(self.colors, dtype=np.uint8),
        }
        for j, v in enumerate(self.views):
            key = f"view{j:04d}"
            tensors[f"{key}.voxel_index"] = np.ascontiguousarray(v.voxel_index, dtype=np.int64)
            tensors[f"{key}.weights"] = np.ascontiguousarray(v.weights, dtype=np.float16)
            for space, emb in v.embeddings.items():
                tensors[f"{key}.emb.{space}"] = np.ascontiguousarray(emb, dtype=np.float32)
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "num_views": str(len(self.views)),
            "voxel_size_m": repr(self.voxel_size_m),
            "segmenter": self.segmenter,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SceneData:
        """Read a file written by :meth:`save`; corrupt or foreign files raise DataFormatError."""
        path = Path(path)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            data = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataFormatError(f"{path}: not a readable scene cache: {exc}") from exc
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise DataFormatError(f"{path}: not a {CACHE_FORMAT} v{CACHE_VERSION} file")
        try:
            views = []
            for j in range(int(meta["num_views"])):
                key = f"view{j:04d}"
                prefix = f"{key}.emb."
                emb = {k[len(prefix) :]: data[k] for k in data if k.startswith(prefix)}
                views.append(ViewTargets(data[f"{key}.voxel_index"], data[f"{key}.weights"], emb))
            scene = cls(
                coords=data["coords"],
                colors=data["colors"],
                views=views,
                voxel_size_m=float(meta["voxel_size_m"]),
                segmenter=meta.get("segmenter", ""),
            )
        except (KeyError, ValueError) as exc:
            raise DataFormatError(f"{path}: incomplete scene cache: {exc}") from exc
        scene.validate()
        return scene


def build_scene(
    frames: Iterable[Frame],
    segmenter: Segmenter2D,
    *,
    mapper_config: MapperConfig | None = None,
    keyframe_config: KeyframeConfig | None = None,
    unproject_config: UnprojectConfig | None = None,
    segmenter_name: str = "",
) -> SceneData:
    """Fuse ``frames`` into voxels, segment keyframes once and unproject their masks.

    ``frames`` is iterated twice (fusion first, so every keyframe is unprojected against the
    final voxels; then keyframes): pass a list or a re-iterable source such as a bag reader.
    Keyframes whose masks see no voxel are skipped (logged).
    """
    # Imported here: the mapping stack (Open3D) is only needed when a cache is (re)built.
    from diff2scene.mapping import KeyframeSelector, Mapper, MaskUnprojector
    from diff2scene.mapping.chunks import ChunkBounds

    mapper = Mapper(mapper_config)
    for frame in frames:
        mapper.integrate(frame)
    mapper.update_voxels()
    if mapper.num_voxels == 0:
        raise InputError("empty scene", "no surface voxels after fusing the frames")
    points_m = mapper.points_m
    coords = mapper.coords
    bounds = ChunkBounds(mapper.config.voxel_size_m)
    bounds.append(coords)
    boxes = bounds.frozen()
    selector = KeyframeSelector(keyframe_config)
    unprojector = MaskUnprojector(unproject_config)
    views: list[ViewTargets] = []
    for frame in frames:
        if not selector.is_keyframe(frame):
            continue
        masks = segmenter.segment(frame)
        un = unprojector.unproject(
            masks.masks, frame.depth_m, frame.intrinsics, frame.T_world_camera, points_m,
            boxes=boxes,
        )
        if un.num_visible == 0 or masks.num_masks == 0:
            _LOG.info("keyframe %d: no visible voxel or no mask, skipped", frame.index)
            continue
        views.append(
            ViewTargets(
                voxel_index=un.voxel_index,
                weights=un.weights.astype(np.float16),
                embeddings={k: np.asarray(v, np.float32) for k, v in masks.embeddings.items()},
            )
        )
    return SceneData(
        coords=coords,
        colors=mapper.colors.copy(),
        views=views,
        voxel_size_m=mapper.config.voxel_size_m,
        segmenter=segmenter_name,
    )


@dataclass
class AugmentConfig:
    """Voxel-level augmentations applied to each training scene (fresh draw per step)."""

    #: Rotate the scene by a uniform random angle about the vertical (z) axis.
    rotate_z: bool = True
    #: Uniform scale factor range (1.0, 1.0 disables).
    scale_range: tuple[float, float] = (0.9, 1.1)
    #: Standard deviation of per-voxel position jitter before re-voxelisation, in voxels.
    jitter_voxels: float = 0.1

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if self.jitter_voxels < 0:
            raise ValueError("jitter_voxels must be >= 0")


def augment_coords(
    coords: NDArray[np.int32], config: AugmentConfig | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformed voxels: unique (M', 3) int32 coords and the (M,) int64 map old → new.

    Voxel centres are rotated, scaled and jittered and then re-voxelised; voxels that land in
    the same cell merge (the map sends both to it), so the distillation targets of every view
    stay valid through ``new_index = old_to_new[voxel_index]``.
    """
    xyz = torch.from_numpy(np.asarray(coords, dtype=np.float64))
    if config is not None:
        centre = xyz.mean(dim=0)
        xyz = xyz - centre
        if config.rotate_z:
            angle = float(torch.rand((), generator=generator, dtype=torch.float64)) * 2 * math.pi
            c, s = math.cos(angle), math.sin(angle)
            rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
            xyz = xyz @ rot.T
        lo, hi = config.scale_range
        scale = lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))
        xyz = xyz * scale
        if config.jitter_voxels > 0:
            noise = torch.randn(xyz.shape, generator=generator, dtype=torch.float64)
            xyz = xyz + config.jitter_voxels * noise
        xyz = xyz + centre
    ijk = torch.round(xyz).to(torch.int64)
    unique, old_to_new = torch.unique(ijk, dim=0, return_inverse=True)
    return unique.to(torch.int32), old_to_new


def colors_to_features(colors: NDArray[np.uint8] | torch.Tensor) -> torch.Tensor:
    """(M, 3) uint8 RGB → (M, 3) float32 in [-0.5, 0.5], the network's input features."""
    t = torch.as_tensor(np.asarray(colors)) if not isinstance(colors, torch.Tensor) else colors
    return t.to(torch.float32) / 255.0 - 0.5


def split_views(
    views: Sequence[ViewTargets], holdout_every: int
) -> tuple[list[ViewTargets], list[ViewTargets]]:
    """(training views, held-out views): every ``holdout_every``-th view is held out (0: none)."""
    if holdout_every <= 0:
        return list(views), []
    train = [v for j, v in enumerate(views) if j % holdout_every != holdout_every - 1]
    held = [v for j, v in enumerate(views) if j % holdout_every == holdout_every - 1]
    return train, held


def describe(scene: SceneData) -> str:
    """One line for logs."""
    masks = sum(v.num_masks for v in scene.views)
    spaces = sorted({s for v in scene.views for s in v.embeddings})
    return json.dumps(
        {"voxels": scene.num_voxels, "views": len(scene.views), "masks": masks, "spaces": spaces}
    )

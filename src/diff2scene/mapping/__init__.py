"""Online voxel map: RGB-D fusion, keyframes, 2D-mask unprojection, persistence, pictures."""

from diff2scene.mapping.keyframes import KeyframeConfig, KeyframeSelector, sharpness
from diff2scene.mapping.mapper import (
    Mapper,
    MapperConfig,
    MapperStats,
    SurfaceUpdate,
    voxel_centres,
)
from diff2scene.mapping.render import RenderConfig, colors_for_labels, label_palette, render_map
from diff2scene.mapping.semantic_map import FORMAT_VERSION, MaskBank, SemanticMap
from diff2scene.mapping.snapshot import MapSnapshot
from diff2scene.mapping.unproject import MaskUnprojector, UnprojectConfig, Unprojection
from diff2scene.mapping.voxel_index import VoxelIndex

__all__ = [
    "FORMAT_VERSION",
    "KeyframeConfig",
    "KeyframeSelector",
    "MapSnapshot",
    "Mapper",
    "MapperConfig",
    "MapperStats",
    "MaskBank",
    "MaskUnprojector",
    "RenderConfig",
    "SemanticMap",
    "SurfaceUpdate",
    "UnprojectConfig",
    "Unprojection",
    "VoxelIndex",
    "colors_for_labels",
    "label_palette",
    "render_map",
    "sharpness",
    "voxel_centres",
]

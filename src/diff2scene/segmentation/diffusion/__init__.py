"""The ODISE-architecture 2D model: Stable Diffusion features, Mask2Former head, MaskCLIP."""

from diff2scene.segmentation.diffusion.segmenter import (
    DiffusionSegmenter,
    DiffusionSegmenterConfig,
    DiffusionSegmenterModel,
    fuse_class_probabilities,
)

__all__ = [
    "DiffusionSegmenter",
    "DiffusionSegmenterConfig",
    "DiffusionSegmenterModel",
    "fuse_class_probabilities",
]

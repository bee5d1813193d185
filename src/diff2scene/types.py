"""Data records passed between the core's stages.

They are plain dataclasses of NumPy arrays so that every stage can be fed from a bag, a live
ROS topic, a dataset directory or a test without conversion layers in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

#: Name of the 256-d mask-embedding space of the diffusion (Mask2Former) head.
SPACE_DIFFUSION = "diffusion"
#: Name of the 768-d CLIP (MaskCLIP) embedding space.
SPACE_CLIP = "clip"
#: Default width of each embedding space: ODISE's mask embeddings and CLIP ViT-L/14's.
SPACE_DIMS: dict[str, int] = {SPACE_DIFFUSION: 256, SPACE_CLIP: 768}


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an undistorted (rectified) image, in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def matrix(self) -> NDArray[np.float64]:
        """The (3, 3) calibration matrix K."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def scaled(self, factor: float) -> CameraIntrinsics:
        """Intrinsics of the same camera at ``factor`` times the resolution."""
        return CameraIntrinsics(
            width=round(self.width * factor),
            height=round(self.height * factor),
            fx=self.fx * factor,
            fy=self.fy * factor,
            cx=(self.cx + 0.5) * factor - 0.5,
            cy=(self.cy + 0.5) * factor - 0.5,
        )


@dataclass
class Frame:
    """One time-synchronised RGB-D observation with its pose.

    ``T_world_camera`` maps points from the camera *optical* frame (x right, y down, z forward,
    REP-103 ``_optical`` convention) to the world/map frame.
    """

    stamp_ns: int
    rgb: NDArray[np.uint8]  # (H, W, 3) RGB
    depth_m: NDArray[np.float32]  # (H, W), 0 where invalid
    intrinsics: CameraIntrinsics
    T_world_camera: NDArray[np.float64]  # (4, 4)
    index: int = 0
    #: Ground-truth per-pixel instance ids (synthetic data only), (H, W) int32, 0 = none.
    instance_ids: NDArray[np.int32] | None = None


@dataclass
class MaskSet:
    """What a 2D segmenter says about one image.

    ``masks`` are per-pixel probabilities that the pixel belongs to the mask. ``embeddings`` holds
    one (N, D) float32 array per embedding space (``SPACE_DIFFUSION``, ``SPACE_CLIP``); each mask
    embedding acts as a classifier for 3D features in that space (mask distillation) and is
    scored against text to get class probabilities.
    """

    masks: NDArray[np.float32]  # (N, H, W) in [0, 1]
    embeddings: dict[str, NDArray[np.float32]] = field(default_factory=dict)  # space -> (N, D)
    #: Per-mask class probabilities for the vocabulary given to the segmenter, (N, C), or None.
    class_probs: NDArray[np.float32] | None = None

    @property
    def num_masks(self) -> int:
        return int(self.masks.shape[0])

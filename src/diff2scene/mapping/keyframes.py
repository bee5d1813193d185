"""Keyframe selection: which frames the (slow) 2D model sees.

The 2D model runs at well under 1 Hz on a CPU, so it should see the scene from distinct
viewpoints rather than every frame: a frame becomes a keyframe once the camera has moved or
turned enough since the last keyframe, or enough time has passed, and only if it is sharp
(motion blur ruins masks). Sharpness is the variance of the image Laplacian.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import ConfigError
from diff2scene.mapping.mapper import rotation_angle_deg
from diff2scene.types import Frame

REJECT_BLURRY = "blurry"
REJECT_TOO_SOON = "too_soon"
REJECT_NOT_MOVED = "not_moved"
REJECT_INVALID_POSE = "invalid_pose"


@dataclass
class KeyframeConfig:
    """Thresholds for promoting a frame to a keyframe."""

    #: Camera translation since the last keyframe that triggers a new one, in metres.
    min_translation_m: float = 0.3
    #: Camera rotation since the last keyframe that triggers a new one, in degrees.
    min_rotation_deg: float = 15.0
    #: A keyframe is taken after this long even without motion (scene may change), in seconds;
    #: 0 disables.
    max_interval_s: float = 5.0
    #: Keyframes are never closer in time than this, in seconds (caps the 2D model's load).
    min_interval_s: float = 0.0
    #: Frames whose grey-level Laplacian variance is below this are too blurry (0 disables);
    #: the scale is 8-bit grey levels squared.
    min_sharpness: float = 0.0

    def __post_init__(self) -> None:
        if self.min_translation_m <= 0 or self.min_rotation_deg <= 0:
            raise ConfigError("KeyframeConfig: motion thresholds must be > 0")
        if self.max_interval_s < 0 or self.min_interval_s < 0 or self.min_sharpness < 0:
            raise ConfigError("KeyframeConfig: intervals and sharpness must be >= 0")


def sharpness(rgb: NDArray[np.uint8]) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (higher = sharper)."""
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )
    return float(lap.var()) if lap.size else 0.0


@dataclass
class KeyframeStats:
    """How many frames were promoted and why others were not."""

    keyframes: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class KeyframeSelector:
    """Decides, frame by frame, whether a frame is a keyframe (stateful: remembers the last)."""

    def __init__(self, config: KeyframeConfig | None = None) -> None:
        self.config = config or KeyframeConfig()
        self.stats = KeyframeStats()
        self._last_pose: NDArray[np.float64] | None = None
        self._last_stamp_ns = 0

    def _reject(self, reason: str) -> bool:
        self.stats.rejected[reason] += 1
        return False

    def is_keyframe(self, frame: Frame) -> bool:
        """True if ``frame`` should go to the 2D model; it then becomes the reference."""
        cfg = self.config
        T = np.asarray(frame.T_world_camera, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            return self._reject(REJECT_INVALID_POSE)
        if self._last_pose is not None:
            dt_s = (frame.stamp_ns - self._last_stamp_ns) * 1e-9
            if dt_s < cfg.min_interval_s:
                return self._reject(REJECT_TOO_SOON)
            moved_m = float(np.linalg.norm(T[:3, 3] - self._last_pose[:3, 3]))
            turned_deg = rotation_angle_deg(self._last_pose[:3, :3].T @ T[:3, :3])
            timed_out = cfg.max_interval_s > 0 and dt_s >= cfg.max_interval_s
            if not (
                moved_m >= cfg.min_translation_m or turned_deg >= cfg.min_rotation_deg or timed_out
            ):
                return self._reject(REJECT_NOT_MOVED)
        if cfg.min_sharpness > 0 and sharpness(frame.rgb) < cfg.min_sharpness:
            return self._reject(REJECT_BLURRY)
        self._last_pose = T.copy()
        self._last_stamp_ns = frame.stamp_ns
        self.stats.keyframes += 1
        return True

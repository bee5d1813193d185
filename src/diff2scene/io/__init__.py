"""Frame sources: where synchronised RGB-D + pose frames come from (bags, datasets, live)."""

from diff2scene.io.bag import BagFrameSource, BagSourceConfig
from diff2scene.io.base import FrameSource, SkipStats

__all__ = ["BagFrameSource", "BagSourceConfig", "FrameSource", "SkipStats"]

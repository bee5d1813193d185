"""Offline replay: a bag through the same pipeline a robot runs, into a saved semantic map.

``diff2scene replay BAG --out MAP.npz`` reads the bag with the frame source, feeds every frame
to :class:`~diff2scene.pipeline.Pipeline` (keyframe queue policy ``block``, so no keyframe is
lost to a slow model) and saves the map. The 2D model is chosen by ``segmenter.kind``:
``oracle`` (synthetic bags: ground-truth masks degraded in known ways, DESIGN §5) or
``diffusion`` (a model profile from ``models/``; ``tiny`` runs anywhere, the real one needs
weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from diff2scene.config import from_dict, load_yaml
from diff2scene.io.bag import BagFrameSource, BagSourceConfig
from diff2scene.io.cli import add_topic_flags, apply_topic_flags
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.segmentation.base import Segmenter2D
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter

__all__ = ["ReplayConfig", "SegmenterConfig", "build_segmenter", "load_replay_config", "replay"]

_LOG = logging.getLogger(__name__)


@dataclass
class ReplayConfig:
    """Everything a replay needs besides the bag path."""

    pipeline: PipelineConfig = field(
        default_factory=lambda: PipelineConfig(overflow_policy="block")
    )
    source: BagSourceConfig = field(default_factory=BagSourceConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)


def load_replay_config(path: str | Path | None) -> ReplayConfig:
    return ReplayConfig() if path is None else from_dict(ReplayConfig, load_yaml(path))


def replay(
    bag: str | Path,
    config: ReplayConfig,
    *,
    segmenter: Segmenter2D,
    progress: bool = True,
) -> Pipeline:
    """Run every frame of ``bag`` through a new pipeline; returns it flushed and closed."""
    source = BagFrameSource(bag, config.source)
    pipeline = Pipeline(config.pipeline, segmenter)
    pipeline.map.metadata["source_bag"] = str(bag)
    for frame in tqdm(source, desc="replay", unit="frame", disable=not progress):
        pipeline.add_frame(frame)
    pipeline.close()
    pipeline.map.metadata["frame_source_stats"] = source.assembler.counters()
    return pipeline


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("replay", help="replay a bag into a saved semantic map")
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or MCAP)")
    parser.add_argument("--out", type=Path, required=True, help="map file to write (.npz)")
    parser.add_argument("--config", type=Path, default=None, help="ReplayConfig YAML")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_topic_flags(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_replay_config(args.config)
    config.source = apply_topic_flags(config.source, args)
    layout = BagFrameSource(args.bag, config.source).layout
    print(f"reading {layout.color_topic} + {layout.depth_topic} + {layout.camera_info_topic}, "
          f"pose from {layout.pose_topic or 'TF'}")
    for note in layout.notes:
        print(f"  (auto) {note}")
    segmenter, _ = build_segmenter(config.segmenter, bag=args.bag)
    t0 = time.perf_counter()
    pipeline = replay(args.bag, config, segmenter=segmenter, progress=not args.no_progress)
    path = pipeline.save(args.out)
    stats = pipeline.stats_dict() | {"replay_s": round(time.perf_counter() - t0, 2)}
    print(json.dumps(stats, indent=2))
    print(f"map written to {path}")
    return 0

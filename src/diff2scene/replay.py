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
from typing import Any, Literal

from tqdm import tqdm

from diff2scene.config import from_dict, load_yaml
from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.io.bag import BagFrameSource, BagSourceConfig
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.segmentation.base import Segmenter2D
from diff2scene.segmentation.clip import ClipConfig
from diff2scene.segmentation.oracle import OracleConfig, OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig

_LOG = logging.getLogger(__name__)


def _tiny_text() -> TextEncoderConfig:
    return TextEncoderConfig(clip=ClipConfig.tiny_profile())


@dataclass
class SegmenterConfig:
    """Which 2D model labels the keyframes, and the text encoder that goes with it."""

    #: "oracle" (synthetic bags with ground truth) or "diffusion" (a model profile).
    kind: Literal["oracle", "diffusion"] = "oracle"
    #: Diffusion model profile: a name in ``models/`` (``tiny``, ``odise_sd15``) or a YAML path.
    profile: str = "tiny"
    #: Torch device of the 2D model ("cpu", "cuda", "cuda:1").
    device: str = "cpu"
    #: Noise model of the oracle segmenter.
    oracle: OracleConfig = field(default_factory=OracleConfig)
    #: Text encoder for the oracle's embeddings and for queries (oracle kind); the diffusion
    #: kind uses its profile's CLIP so text and masks share one embedding space.
    text: TextEncoderConfig = field(default_factory=_tiny_text)


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


def ground_truth_dir(bag: Path) -> Path:
    """The synthetic-scene directory of a bag written by ``diff2scene synth`` (``DIR/bag``)."""
    return bag.parent if (bag.parent / "scene.json").is_file() else bag


def build_segmenter(
    cfg: SegmenterConfig, *, bag: Path | None = None
) -> tuple[Segmenter2D, ClipTextEncoder]:
    """The configured 2D model and the text encoder whose space its embeddings live in."""
    if cfg.kind == "oracle":
        from diff2scene.synth.groundtruth import GroundTruth

        if bag is None:
            raise ConfigError("the oracle segmenter needs a synthetic bag's ground truth")
        gt_dir = ground_truth_dir(bag)
        try:
            gt = GroundTruth.load(gt_dir)
        except FileNotFoundError as exc:
            raise DataFormatError(
                f"no ground truth (scene.json) beside {bag}: the oracle segmenter only works on "
                "bags written by `diff2scene synth`; use segmenter.kind: diffusion otherwise"
            ) from exc
        encoder = ClipTextEncoder.from_config(cfg.text)
        return OracleSegmenter(gt.instance_classes(), encoder, cfg.oracle), encoder
    from diff2scene.segmentation.profiles import build_segmenter as build_diffusion
    from diff2scene.segmentation.profiles import load_profile

    profile = load_profile(cfg.profile)
    segmenter = build_diffusion(profile, device=cfg.device)
    clip_cfg = profile.tiny.clip if profile.tiny is not None else profile.weights.clip  # type: ignore[union-attr]
    encoder = ClipTextEncoder.from_config(TextEncoderConfig(clip=clip_cfg))
    return segmenter, encoder


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
    pipeline.map.metadata["frame_source_stats"] = source.stats.as_dict()
    return pipeline


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("replay", help="replay a bag into a saved semantic map")
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or MCAP)")
    parser.add_argument("--out", type=Path, required=True, help="map file to write (.npz)")
    parser.add_argument("--config", type=Path, default=None, help="ReplayConfig YAML")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_replay_config(args.config)
    segmenter, _ = build_segmenter(config.segmenter, bag=args.bag)
    t0 = time.perf_counter()
    pipeline = replay(args.bag, config, segmenter=segmenter, progress=not args.no_progress)
    path = pipeline.save(args.out)
    stats = pipeline.stats_dict() | {"replay_s": round(time.perf_counter() - t0, 2)}
    print(json.dumps(stats, indent=2))
    print(f"map written to {path}")
    return 0

"""Which 2D model labels keyframes, built from config, with the text encoder of its space.

Shared by replay, training, evaluation and the benchmarks so that every tool builds the
segmenter (and the text encoder its embeddings must be compared with) the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.segmentation.base import Segmenter2D
from diff2scene.segmentation.clip import ClipConfig
from diff2scene.segmentation.oracle import OracleConfig, OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig


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


def ground_truth_dir(path: Path) -> Path:
    """The synthetic-scene directory of a bag written by ``diff2scene synth`` (``DIR/bag``),
    given the bag or the scene directory itself."""
    if (path / "scene.json").is_file():
        return path
    return path.parent if (path.parent / "scene.json").is_file() else path


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

"""Which 2D model labels keyframes, built from config, with the text encoder of its space.

Shared by replay, training, evaluation, the benchmarks and the node so that every tool builds
the segmenter (and the text encoder its embeddings must be compared with) the same way.

The text space is chosen with the model: the diffusion segmenter's masks live in its CLIP's
space, so its text goes through that CLIP; the oracle-noise segmenter (synthetic bags with
ground truth) defaults to the :mod:`synthetic text space <diff2scene.segmentation.synthetic_text>`,
because the only CLIP available without downloaded weights is random and gives every class
name nearly the same embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.segmentation.base import Segmenter2D, TextEncoder
from diff2scene.segmentation.clip import ClipConfig
from diff2scene.segmentation.oracle import OracleConfig, OracleSegmenter
from diff2scene.segmentation.synthetic_text import SyntheticTextConfig, SyntheticTextEncoder
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig

#: The text spaces :attr:`SegmenterConfig.text_space` can name.
TextSpace = Literal["auto", "synthetic", "clip"]


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
    #: Text space of the oracle's embeddings and of queries: "synthetic" (the synthetic text
    #: space, not CLIP), "clip" (the CLIP text tower of ``text``) or "auto" (synthetic for
    #: the oracle, the profile's CLIP for the diffusion model, which accepts nothing else).
    text_space: TextSpace = "auto"
    #: The synthetic text space (text_space synthetic).
    synthetic_text: SyntheticTextConfig = field(default_factory=SyntheticTextConfig)
    #: CLIP text encoder of the oracle when text_space is "clip"; the diffusion kind uses its
    #: profile's CLIP so text and masks share one embedding space.
    text: TextEncoderConfig = field(default_factory=_tiny_text)

    def __post_init__(self) -> None:
        if self.kind not in ("oracle", "diffusion"):
            raise ConfigError(f"segmenter kind must be oracle or diffusion, got {self.kind!r}")
        if self.text_space not in ("auto", "synthetic", "clip"):
            raise ConfigError(
                f"text_space must be auto, synthetic or clip, got {self.text_space!r}"
            )
        if self.kind == "diffusion" and self.text_space == "synthetic":
            raise ConfigError(
                "the diffusion segmenter embeds masks in CLIP space: text_space synthetic only "
                "works with kind oracle"
            )

    @property
    def resolved_text_space(self) -> Literal["synthetic", "clip"]:
        """The text space actually used ("auto" resolved by kind)."""
        if self.text_space == "auto":
            return "synthetic" if self.kind == "oracle" else "clip"
        return self.text_space


def ground_truth_dir(path: Path) -> Path:
    """The synthetic-scene directory of a bag written by ``diff2scene synth`` (``DIR/bag``),
    given the bag or the scene directory itself."""
    if (path / "scene.json").is_file():
        return path
    return path.parent if (path.parent / "scene.json").is_file() else path


def build_text_encoder(cfg: SegmenterConfig) -> TextEncoder:
    """The text encoder of an oracle segmenter configured by ``cfg`` (synthetic or CLIP)."""
    if cfg.resolved_text_space == "synthetic":
        return SyntheticTextEncoder(cfg.synthetic_text)
    return ClipTextEncoder.from_config(cfg.text)


def build_segmenter(
    cfg: SegmenterConfig, *, bag: Path | None = None
) -> tuple[Segmenter2D, TextEncoder]:
    """The configured 2D model and the text encoder whose space its embeddings live in.

    ``bag`` (a bag written by ``diff2scene synth`` or its scene directory) is needed by the
    oracle kind, which reads the scene's instance → class and colour tables beside it.
    """
    if cfg.kind == "oracle":
        from diff2scene.synth.groundtruth import SCENE_FILE, GroundTruth

        if bag is None:
            raise ConfigError("the oracle segmenter needs a synthetic bag's ground truth")
        gt_dir = ground_truth_dir(bag)
        # Checked here rather than caught from GroundTruth.load, whose missing-file error is
        # about the file, not about the setting that asked for it.
        if not (gt_dir / SCENE_FILE).is_file():
            raise DataFormatError(
                f"no ground truth ({SCENE_FILE}) beside {bag}: segmenter.kind oracle only works "
                "on bags written by `diff2scene synth`; for other bags set segmenter.kind: "
                "diffusion (segmenter.profile odise_sd15 for the real model, tiny for a dry run)"
            )
        gt = GroundTruth.load(gt_dir)
        encoder = build_text_encoder(cfg)
        oracle = OracleSegmenter(
            gt.instance_classes(), encoder, cfg.oracle, instance_colours=gt.instance_colours()
        )
        return oracle, encoder
    from diff2scene.segmentation.profiles import build_segmenter as build_diffusion
    from diff2scene.segmentation.profiles import load_profile

    profile = load_profile(cfg.profile)
    segmenter = build_diffusion(profile, device=cfg.device)
    clip_cfg = profile.tiny.clip if profile.tiny is not None else profile.weights.clip  # type: ignore[union-attr]
    encoder = ClipTextEncoder.from_config(TextEncoderConfig(clip=clip_cfg))
    return segmenter, encoder

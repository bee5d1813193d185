"""Segmenter factory: the oracle gets the synthetic text space by default, CLIP on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diff2scene.config import from_dict
from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
from diff2scene.segmentation.oracle import OracleConfig, OracleSegmenter
from diff2scene.segmentation.synthetic_text import SyntheticTextEncoder
from diff2scene.segmentation.text import ClipTextEncoder
from diff2scene.synth.groundtruth import GroundTruth
from diff2scene.synth.scene import generate_scene
from diff2scene.types import SPACE_CLIP, CameraIntrinsics, Frame


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene")
    GroundTruth.from_scene(generate_scene(3), points_per_m2=20.0).save(out)
    (out / "bag").mkdir()
    return out


def test_oracle_defaults_to_the_synthetic_text_space(scene_dir: Path) -> None:
    # undegraded, so that its one mask's embedding is exactly the text's
    cfg = SegmenterConfig(kind="oracle", oracle=OracleConfig.exact())
    assert cfg.resolved_text_space == "synthetic"
    segmenter, encoder = build_segmenter(cfg, bag=scene_dir / "bag")
    assert isinstance(encoder, SyntheticTextEncoder) and isinstance(segmenter, OracleSegmenter)
    gt = GroundTruth.load(scene_dir)
    inst = next(i for i in gt.instances if i.class_name not in ("wall", "floor", "ceiling"))
    ids = np.zeros((8, 8), np.int32)
    ids[2:6, 2:6] = inst.instance_id
    frame = Frame(stamp_ns=0, rgb=np.zeros((8, 8, 3), np.uint8),
                  depth_m=np.ones((8, 8), np.float32),
                  intrinsics=CameraIntrinsics(8, 8, 8.0, 8.0, 4.0, 4.0),
                  T_world_camera=np.eye(4), index=0, instance_ids=ids)  # fmt: skip
    masks = segmenter.segment(frame)
    expected = encoder.encode([f"{inst.colour_name} {inst.class_name}"])
    np.testing.assert_allclose(masks.embeddings[SPACE_CLIP], expected, atol=1e-5)


def test_oracle_with_clip_on_request(scene_dir: Path) -> None:
    _, encoder = build_segmenter(SegmenterConfig(kind="oracle", text_space="clip"), bag=scene_dir)
    assert isinstance(encoder, ClipTextEncoder)


def test_config_rules_and_yaml_round_trip(tmp_path: Path) -> None:
    assert SegmenterConfig(kind="diffusion").resolved_text_space == "clip"
    with pytest.raises(ConfigError, match="only works with kind oracle"):
        SegmenterConfig(kind="diffusion", text_space="synthetic")
    with pytest.raises(ConfigError, match="text_space"):
        SegmenterConfig(text_space="glove")  # type: ignore[arg-type]
    cfg = from_dict(
        SegmenterConfig,
        {"kind": "oracle", "text_space": "synthetic",
         "synthetic_text": {"seed": 3, "attribute_weight": 0.25}},
        where="segmenter",
    )  # fmt: skip
    assert cfg.synthetic_text.seed == 3 and cfg.synthetic_text.attribute_weight == 0.25
    with pytest.raises(ConfigError):
        build_segmenter(SegmenterConfig(kind="oracle"))
    with pytest.raises(DataFormatError):
        build_segmenter(SegmenterConfig(kind="oracle"), bag=tmp_path)

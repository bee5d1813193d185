"""``Pipeline.load`` replaces the map but keeps the counts of the frames the pipeline was given
(a node's frame accounting, integrated + skipped = frames in, must still close after a load)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diff2scene.mapping.mapper import MapperConfig
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.segmentation.clip import ClipConfig
from diff2scene.segmentation.oracle import OracleConfig, OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig
from diff2scene.synth.groundtruth import GroundTruth
from diff2scene.synth.render import RenderConfig, render_frames
from diff2scene.synth.scene import SceneConfig, generate_scene


def test_load_keeps_the_frame_counters(tmp_path: Path) -> None:
    scene = generate_scene(3, SceneConfig())
    frames = list(render_frames(scene, RenderConfig(width=64, height=48, n_frames=6)))
    encoder = ClipTextEncoder.from_config(TextEncoderConfig(clip=ClipConfig.tiny_profile()))
    segmenter = OracleSegmenter(GroundTruth.from_scene(scene).instance_classes(), encoder,
                                OracleConfig.exact())
    config = PipelineConfig(
        mapper=MapperConfig(voxel_size_m=0.05, device="CPU:0", max_speed_m_s=50.0,
                            max_angular_speed_deg_s=3600.0),
        threaded=False,
    )
    pipe = Pipeline(config, segmenter)
    for frame in frames[:3]:
        assert pipe.add_frame(frame)
    bad = frames[3]
    bad.depth_m = np.full_like(bad.depth_m, np.nan)
    assert not pipe.add_frame(bad)
    saved = pipe.save(tmp_path / "m.npz")
    pipe.load(saved)
    assert pipe.add_frame(frames[4])
    stats = pipe.stats_dict()
    assert stats["frames_in"] == 5
    assert stats["frames_integrated"] == 4
    assert stats["frames_skipped_no_valid_depth"] == 1

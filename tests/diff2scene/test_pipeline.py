"""The online pipeline on a small generated room with the oracle segmenter."""

from pathlib import Path

import numpy as np
import pytest

from diff2scene.mapping.keyframes import KeyframeConfig
from diff2scene.mapping.mapper import MapperConfig
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.segmentation.base import Segmenter2D
from diff2scene.segmentation.clip import ClipConfig
from diff2scene.segmentation.oracle import OracleConfig, OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig
from diff2scene.synth.groundtruth import GroundTruth
from diff2scene.synth.render import RenderConfig, render_frames
from diff2scene.synth.scene import SceneConfig, generate_scene
from diff2scene.types import Frame, MaskSet


@pytest.fixture(scope="module")
def room() -> tuple[list[Frame], dict[int, str]]:
    scene = generate_scene(3, SceneConfig())
    frames = list(render_frames(scene, RenderConfig(width=128, height=96, n_frames=16)))
    return frames, GroundTruth.from_scene(scene).instance_classes()


@pytest.fixture(scope="module")
def encoder() -> ClipTextEncoder:
    return ClipTextEncoder.from_config(TextEncoderConfig(clip=ClipConfig.tiny_profile()))


def _config(**kw: object) -> PipelineConfig:
    return PipelineConfig(
        mapper=MapperConfig(voxel_size_m=0.05, device="CPU:0"),
        keyframes=KeyframeConfig(),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("threaded", [False, True])
def test_frames_become_a_labelled_map(room, encoder, threaded: bool, tmp_path: Path) -> None:
    frames, table = room
    oracle = OracleSegmenter(table, encoder, OracleConfig())
    pipe = Pipeline(_config(threaded=threaded, overflow_policy="block"), oracle)
    for frame in frames:
        assert pipe.add_frame(frame)
    pipe.close()
    stats = pipe.stats_dict()
    assert stats["frames_integrated"] == len(frames)
    assert stats["keyframes_segmented"] == stats["keyframes_selected"] >= 2
    assert stats["keyframes_dropped"] == 0
    smap = pipe.map
    assert smap.num_voxels > 1000
    assert smap.mask_bank.num_masks > 0
    covered = (smap.member_ids[:, 0] >= 0).mean()
    assert covered > 0.5
    saved = pipe.save(tmp_path / "m.npz")
    pipe2 = Pipeline(_config(threaded=False), oracle)
    pipe2.load(saved)
    np.testing.assert_array_equal(pipe2.map.member_ids, smap.member_ids)
    assert pipe2.map.metadata["pipeline_stats"]["frames_in"] == len(frames)
    # Mapping goes on after a load: old voxels keep their rows, new ones are appended.
    for frame in frames[:4]:
        pipe2.add_frame(frame)
    pipe2.close()
    np.testing.assert_array_equal(pipe2.map.coords[: smap.num_voxels], smap.coords)


class _Slow(Segmenter2D):
    """A segmenter that waits until released, to fill the keyframe queue deterministically."""

    def __init__(self, inner: Segmenter2D) -> None:
        import threading

        self.inner = inner
        self.release = threading.Event()

    @property
    def embedding_dims(self) -> dict[str, int]:
        return self.inner.embedding_dims

    def segment(self, frame, vocabulary=None) -> MaskSet:  # type: ignore[no-untyped-def]
        self.release.wait(timeout=60)
        return self.inner.segment(frame, vocabulary)

    def classify(self, embeddings, vocabulary):  # type: ignore[no-untyped-def]
        return self.inner.classify(embeddings, vocabulary)


def test_full_queue_drops_oldest_and_counts(room, encoder) -> None:
    frames, table = room
    slow = _Slow(OracleSegmenter(table, encoder, OracleConfig()))
    cfg = _config(threaded=True, overflow_policy="drop_oldest", keyframe_queue_size=1)
    cfg.keyframes = KeyframeConfig(min_translation_m=1e-6, min_rotation_deg=1e-6)
    pipe = Pipeline(cfg, slow)
    for frame in frames[:6]:
        pipe.add_frame(frame)  # never blocks although the model is stuck
    slow.release.set()
    pipe.close()
    s = pipe.stats
    assert s.keyframes_selected == 6
    assert s.keyframes_dropped >= 1
    assert s.keyframes_segmented + s.keyframes_dropped == s.keyframes_selected


class _Broken(Segmenter2D):
    @property
    def embedding_dims(self) -> dict[str, int]:
        return {"clip": 4}

    def segment(self, frame, vocabulary=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA out of memory")

    def classify(self, embeddings, vocabulary):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def test_model_failure_keeps_the_map(room) -> None:
    frames, _ = room
    pipe = Pipeline(_config(threaded=False), _Broken())
    for frame in frames[:4]:
        pipe.add_frame(frame)
    pipe.close()
    assert pipe.stats.segment_errors["RuntimeError"] == pipe.stats.keyframes_selected >= 1
    assert pipe.map.num_voxels > 0


def test_3d_features_follow_the_growing_map(room, encoder) -> None:
    from diff2scene.net3d.inference import Net3DConfig

    frames, table = room
    oracle = OracleSegmenter(table, encoder, OracleConfig())
    cfg = _config(
        threaded=False,
        net3d_enabled=True,
        net3d=Net3DConfig(backend="reference"),
        net3d_every_keyframes=1,
    )
    pipe = Pipeline(cfg, oracle)
    for frame in frames[:8]:
        pipe.add_frame(frame)
    runs = pipe.stats.net3d_runs
    assert runs >= 1
    pipe.close()
    smap = pipe.map
    assert set(smap.features_3d) == {"diffusion", "clip"}
    assert all(f.shape == (smap.num_voxels, f.shape[1]) for f in smap.features_3d.values())
    assert all(f.dtype == np.float16 for f in smap.features_3d.values())
    # every voxel, early or late, got features (a row of exact zeros = never computed)
    assert all(np.any(f != 0, axis=1).all() for f in smap.features_3d.values())
    assert pipe.stats_dict()["net3d_runs"] == pipe.stats.net3d_runs > runs

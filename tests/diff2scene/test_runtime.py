"""The mapping runtime under the node and the replay: one frame queue, one set of answers.

A tiny synthetic room (96x72, 24 frames, ground truth beside it) is fed into runtimes the way
the node feeds them (records → assembler → queue → worker) and the way a deterministic replay
does (inline); the books, verdicts, ranks, labels and shutdown are checked on the result.
"""

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diff2scene.errors import ConfigError, InputError
from diff2scene.io.bag import BagFrameSource
from diff2scene.io.output_layout import UNKNOWN_LABEL
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.runtime import (
    MAX_VOCABULARY_CLASSES,
    MappingRuntime,
    RuntimeConfig,
    build_models,
    frames_in_mapper,
    frames_unaccounted,
)
from diff2scene.segmentation.factory import SegmenterConfig
from diff2scene.synth.dataset import SynthConfig, SynthResult, synthesize
from diff2scene.synth.render import RenderConfig
from diff2scene.types import Frame

N_FRAMES = 24


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    render = RenderConfig(width=96, height=72, n_frames=N_FRAMES, rate_hz=3.0)
    return synthesize(tmp_path_factory.mktemp("room"), 5,
                      SynthConfig(render=render, gt_points_per_m2=50.0))  # fmt: skip


def _config(**changes: object) -> RuntimeConfig:
    """The oracle on 5 cm voxels, the 2D model inline (same bag → same map)."""
    config = RuntimeConfig(segmenter=SegmenterConfig(kind="oracle"), **changes)  # type: ignore[arg-type]
    config.pipeline.mapper.voxel_size_m = 0.05
    config.pipeline.threaded = False
    return config


def _runtime(room: SynthResult, config: RuntimeConfig, **kwargs: object) -> MappingRuntime:
    segmenter, encoder = build_models(config, bag=room.bag_path)
    return MappingRuntime(config, segmenter=segmenter, text_encoder=encoder,
                          **kwargs)  # type: ignore[arg-type]  # fmt: skip


def _feed(room: SynthResult, runtime: MappingRuntime) -> None:
    for raw in BagFrameSource(room.bag_path).raw_frames(runtime.assembler):
        runtime.submit([raw])


def test_defaults_are_the_real_model_and_oracle_needs_a_scene() -> None:
    config = RuntimeConfig()
    assert (config.segmenter.kind, config.segmenter.profile) == ("diffusion", "odise_sd15")
    with pytest.raises(ConfigError, match="scene_dir"):
        build_models(RuntimeConfig(segmenter=SegmenterConfig(kind="oracle")))
    with pytest.raises(ConfigError, match="frame_queue_size"):
        RuntimeConfig(frame_queue_size=0)


def test_queued_and_inline_runtimes_build_the_same_map(room: SynthResult) -> None:
    inline = _runtime(room, _config(), frames="inline", background_queries=False)
    _feed(room, inline)
    inline.finish()
    # the node's path: a worker thread maps what the queue holds (2D model inline here too)
    queued = _runtime(room, _config(frame_queue_size=N_FRAMES), frames="queue",
                      background_queries=False)  # fmt: skip
    _feed(room, queued)
    queued.finish()
    assert inline.pipeline.stats.frames_in == queued.pipeline.stats.frames_in == N_FRAMES
    assert inline.pipeline.map.num_voxels == queued.pipeline.map.num_voxels > 0
    for runtime in (inline, queued):
        stats = runtime.diagnostics()
        assert frames_unaccounted(stats) == 0 and frames_in_mapper(stats) == 0


def test_a_full_queue_drops_its_oldest_frame_and_the_books_still_close(
    room: SynthResult,
) -> None:
    config = _config(frame_queue_size=2)
    config.pipeline = replace(config.pipeline, threaded=True)
    runtime = _runtime(room, config, frames="queue")
    release = threading.Event()
    add_frame = runtime.pipeline.add_frame

    def slow_add_frame(frame: Frame) -> bool:
        release.wait(timeout=30)  # the mapper is stuck while the camera goes on
        return add_frame(frame)

    runtime.pipeline.add_frame = slow_add_frame  # type: ignore[method-assign]
    _feed(room, runtime)
    stats = runtime.diagnostics()
    dropped = int(stats["skipped_frame_queue_full"])
    assert dropped >= N_FRAMES - 3  # 2 queued + 1 in the worker's hands at most
    assert stats["frame_queue_depth"] <= 2
    release.set()
    assert runtime.drain(timeout_s=60)
    runtime.pipeline.flush(timeout_s=60)
    stats = runtime.diagnostics()
    assert runtime.pipeline.stats.frames_in + dropped == N_FRAMES
    assert frames_unaccounted(stats) == 0 and frames_in_mapper(stats) == 0
    assert runtime.health(stats).level == "warn"
    runtime.shutdown()


@pytest.fixture(scope="module")
def mapped(room: SynthResult) -> MappingRuntime:
    runtime = _runtime(room, _config(), frames="inline", background_queries=False)
    _feed(room, runtime)
    runtime.finish()
    return runtime


def test_an_empty_map_is_a_verdict_not_an_empty_answer(room: SynthResult) -> None:
    runtime = _runtime(room, _config(), frames="inline", background_queries=False)
    with pytest.raises(InputError, match="empty_map"):
        runtime.query("chair")


def test_answers_carry_instance_ranks_per_point(mapped: MappingRuntime) -> None:
    answer = mapped.query("chair")
    result = answer.result
    assert result.instances, "the room has chairs"
    assert answer.points_m.shape[0] == answer.rgb.shape[0] == answer.scores.shape[0]
    ranks = np.zeros(answer.snapshot.num_voxels, np.uint32)
    ranks[result.matched] = answer.rank_labels
    for rank, instance in enumerate(result.instances, start=1):
        # a point of the best instance is never relabelled by a worse one
        assert np.all(ranks[instance.voxel_indices] <= rank)
        assert np.all(ranks[instance.voxel_indices] >= 1)
    assert set(np.unique(answer.rank_labels)) <= set(range(len(result.instances) + 1))
    assert "instances of 'chair'" in answer.summary()


def test_labelled_cloud_marks_unknown_voxels_and_subsamples(mapped: MappingRuntime) -> None:
    full = mapped.labelled_cloud()
    n = mapped.pipeline.map.num_voxels
    assert full.points_m.shape == (n, 3) and full.labels.dtype == np.uint32
    labelling = mapped.session.labelling().labelling
    unknown = labelling.labels < 0
    assert np.all(full.labels[unknown] == UNKNOWN_LABEL)
    assert np.all(full.labels[~unknown] == labelling.labels[~unknown])
    colors = np.asarray(mapped.pipeline.map.snapshot().colors)
    assert np.array_equal(full.rgb[unknown], colors[unknown])  # fused colour kept
    small = mapped.labelled_cloud(max_points=100)
    assert small.points_m.shape == (100, 3) and small.labels.shape == (100,)


def test_vocabulary_is_bounded(mapped: MappingRuntime) -> None:
    with pytest.raises(InputError, match="vocabulary_too_large"):
        mapped.set_vocabulary(classes=[f"c{i}" for i in range(MAX_VOCABULARY_CLASSES + 1)])
    with pytest.raises(InputError, match="class_name_too_long"):
        mapped.set_vocabulary(classes=["x" * 101])


def test_shutdown_saves_the_map_within_its_budget(room: SynthResult, tmp_path: Path) -> None:
    runtime = _runtime(room, _config(shutdown_timeout_s=30.0), frames="queue",
                       clock_ns=None)  # fmt: skip
    _feed(room, runtime)
    runtime.end_of_stream()
    assert runtime.drain(timeout_s=60)
    report = runtime.shutdown(save_to=tmp_path / "map.npz")
    assert report.saved == tmp_path / "map.npz" and report.save_error == ""
    assert report.frame_worker_stopped and report.duration_s < 30.0
    assert SemanticMap.load(report.saved).num_voxels == runtime.pipeline.map.num_voxels > 0
    # a loaded map answers from its own version, never the one it replaced
    other = _runtime(room, _config(), frames="inline", background_queries=False)
    assert other.load(report.saved) == runtime.pipeline.map.num_voxels
    assert other.query("chair").snapshot.num_voxels == runtime.pipeline.map.num_voxels


def test_health_says_why(mapped: MappingRuntime) -> None:
    stats = mapped.diagnostics()
    assert mapped.health(stats).level == "ok"
    warn = mapped.health({**stats, "keyframes_dropped": 2, "input_loss_ratio": 0.5,
                          "input_gaps": 9})  # fmt: skip
    assert warn.level == "warn" and len(warn.problems) == 2
    assert "2 frames/keyframes dropped" in warn.problems[0] and "9 stamp gaps" in warn.problems[1]
    error = mapped.health(stats, errors=["incompatible QoS on ['/camera']"])
    assert error.level == "error" and "incompatible QoS" in error.summary(stats)

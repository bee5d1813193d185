"""One tiny synthetic room (96x72, 24 frames at 3 Hz), its replay, and the means to replay an
import of it with the same 2D masks.

The 2D model is the oracle: masks from the ground-truth instance image of each view, so the
semantic map is worth scoring (a random-weight model labels nothing right, and two scores of
zero agree whatever the import did). An imported bag carries no instance images, so
:class:`ViewOracle` hands the oracle the synthetic view each imported frame shows, found by
its stamp; the two maps then differ only by what the import did to colour, depth and pose.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from diff2scene.config import from_dict
from diff2scene.datasets.sequence import ImportConfig
from diff2scene.eval.datasets import load_scene
from diff2scene.eval.evaluate import EvalConfig, evaluate_scene, summarise
from diff2scene.replay import ReplayConfig, ReplayRun, run_replay
from diff2scene.runtime import build_models
from diff2scene.segmentation.base import Segmenter2D, TextEncoder, Vocabulary
from diff2scene.synth.dataset import SynthConfig, SynthResult, synthesize
from diff2scene.synth.render import RenderConfig
from diff2scene.types import Frame, MaskSet
from tests.diff2scene.datasets.layouts import WrittenSequence, bag_frames

N_FRAMES = 24
#: Dataset frame number of the extra frame written with an invalid pose.
INVALID_AT = 12
#: Scoring only: no class-name or relation queries.
SCORING = EvalConfig(max_query_classes=0, max_relation_queries=0)


@pytest.fixture(scope="package")
def room(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    render = RenderConfig(width=96, height=72, n_frames=N_FRAMES, rate_hz=3.0)
    return synthesize(tmp_path_factory.mktemp("room"), 3,
                      SynthConfig(render=render, gt_points_per_m2=50.0))  # fmt: skip


@pytest.fixture(scope="package")
def replay_config() -> ReplayConfig:
    return from_dict(ReplayConfig, {
        "pipeline": {"mapper": {"voxel_size_m": 0.05, "device": "CPU:0"}},
        "segmenter": {"kind": "oracle"},
    })  # fmt: skip


@pytest.fixture(scope="package")
def oracle(room: SynthResult, replay_config: ReplayConfig) -> tuple[Segmenter2D, TextEncoder]:
    return build_models(replay_config, bag=room.bag_path)


@pytest.fixture(scope="package")
def synthetic_run(
    room: SynthResult, replay_config: ReplayConfig, oracle: tuple[Segmenter2D, TextEncoder]
) -> ReplayRun:
    segmenter, encoder = oracle
    return run_replay(room.bag_path, replay_config, segmenter=segmenter, text_encoder=encoder,
                      progress=False)  # fmt: skip


class ViewOracle(Segmenter2D):
    """The oracle, given the instance image of the synthetic view an imported frame shows."""

    def __init__(self, oracle: Segmenter2D, instance_ids: dict[int, NDArray[np.int32]]) -> None:
        self._oracle = oracle
        self._instance_ids = instance_ids

    @property
    def embedding_dims(self) -> dict[str, int]:
        return self._oracle.embedding_dims

    def segment(self, frame: Frame, vocabulary: Vocabulary | None = None) -> MaskSet:
        ids = self._instance_ids[frame.stamp_ns]  # a stamp the import did not write: KeyError
        return self._oracle.segment(dataclasses.replace(frame, instance_ids=ids), vocabulary)

    def classify(
        self, embeddings: dict[str, NDArray[np.float32]], vocabulary: Vocabulary
    ) -> NDArray[np.float32]:
        return self._oracle.classify(embeddings, vocabulary)


def replay_import(
    bag: Path,
    written: WrittenSequence,
    *,
    room: SynthResult,
    config: ReplayConfig,
    oracle: tuple[Segmenter2D, TextEncoder],
) -> ReplayRun:
    """Replay ``bag``, imported from ``written`` at the room's frame rate, with the oracle
    shown each frame's synthetic view."""
    stamps = ImportConfig(rate_hz=room.frame_rate_hz)
    frames = bag_frames(room)
    ids = {stamps.stamp_ns(n): frames[i].instance_ids for n, i in written.synthetic_index.items()}
    assert all(v is not None for v in ids.values())
    segmenter = ViewOracle(oracle[0], {k: v for k, v in ids.items() if v is not None})
    return run_replay(bag, config, segmenter=segmenter, text_encoder=oracle[1], progress=False)


def voxels(run: ReplayRun) -> int:
    with run.pipeline.lock:
        return run.pipeline.map.snapshot().num_voxels


def miou(run: ReplayRun, scene_dir: Path) -> dict[str, float]:
    """mIoU per branch of ``run``'s map against the ground truth in ``scene_dir``."""
    report = summarise([evaluate_scene(load_scene(scene_dir), run.runtime.session.engine(),
                                       SCORING)])  # fmt: skip
    return {branch: entry["miou_all"] for branch, entry in report["branches"].items()}

"""The factory's refusals name the setting that caused them, and only that setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from diff2scene.errors import DataFormatError, MissingWeightsError
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter


def test_oracle_without_ground_truth_says_the_oracle_needs_a_synthetic_bag(
    tmp_path: Path,
) -> None:
    bag = tmp_path / "recorded" / "bag"
    bag.mkdir(parents=True)
    with pytest.raises(DataFormatError) as info:
        build_segmenter(SegmenterConfig(kind="oracle"), bag=bag)
    msg = str(info.value)
    assert f"no ground truth (scene.json) beside {bag}" in msg
    assert "segmenter.kind oracle only works on bags written by `diff2scene synth`" in msg
    assert "segmenter.kind: diffusion" in msg


def test_diffusion_without_weights_never_mentions_ground_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = SegmenterConfig(kind="diffusion", profile="odise_sd15")
    with pytest.raises(MissingWeightsError) as info:
        build_segmenter(cfg, bag=tmp_path / "bag")
    assert "ground truth" not in str(info.value)
    assert info.value.path.is_relative_to(tmp_path)

"""Without model weights on disk, a command fails with one message a user can act on.

The real profile (``odise_sd15``) on a machine without its head checkpoint must end the run with
exit status 2 and one message naming the missing file, how to make it and the dry-run profile;
no traceback, and no word about ground truth, which has nothing to do with it. Asking for the
oracle segmenter on a bag without ground truth must say that the oracle needs a synthetic bag.
Each command runs as its own process, as a user starts it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diff2scene.config import load_yaml
from diff2scene.segmentation.profile_lookup import find_profile
from diff2scene.synth.dataset import SynthConfig, synthesize
from diff2scene.synth.render import RenderConfig


@pytest.fixture(scope="module")
def plain_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bag with no ground truth beside it, as a recorded bag would be."""
    room = tmp_path_factory.mktemp("room")
    render = RenderConfig(width=64, height=48, n_frames=3, rate_hz=3.0)
    result = synthesize(room, 1, SynthConfig(render=render, gt_points_per_m2=20.0))
    recorded = tmp_path_factory.mktemp("recorded") / "bag"
    result.bag_path.rename(recorded)
    return recorded


def _replay(cwd: Path, bag: Path, segmenter: dict[str, str]) -> subprocess.CompletedProcess[str]:
    config = cwd / "replay.yaml"
    config.write_text(yaml.safe_dump({"segmenter": segmenter}))
    env = {k: v for k, v in os.environ.items() if k != "DIFF2SCENE_MODELS_DIR"}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "diff2scene.cli", "replay", str(bag),
               "--out", str(cwd / "out"), "--config", str(config), "--no-progress"]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


def test_real_profile_without_weights_fails_with_one_clear_message(
    plain_bag: Path, tmp_path: Path
) -> None:
    run = _replay(tmp_path, plain_bag, {"kind": "diffusion", "profile": "odise_sd15"})
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    head = Path(load_yaml(find_profile("odise_sd15"))["weights"]["head_checkpoint"])
    head = head if head.is_absolute() else tmp_path / head
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, run.stderr
    message = errors[0]
    assert message.startswith("diff2scene replay: error: ")
    assert str(head) in message
    assert f"diff2scene convert-odise odise_label_coco_50e-b67d2efc.pth {head}" in message
    assert "segmenter.profile: tiny" in message
    assert "Traceback" not in output
    assert "ground truth" not in output.lower()


def test_oracle_on_a_bag_without_ground_truth_says_what_the_oracle_needs(
    plain_bag: Path, tmp_path: Path
) -> None:
    run = _replay(tmp_path, plain_bag, {"kind": "oracle"})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "only works on bags written by `diff2scene synth`" in run.stderr
    assert "segmenter.kind: diffusion" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr

"""Distillation training on a tiny scene: loss drops, held-out masks improve, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diff2scene.config import from_dict, load_config, to_dict
from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.net3d.checkpoint import load_checkpoint
from diff2scene.net3d.data import SceneData
from diff2scene.net3d.model import MinkUNetConfig
from diff2scene.net3d.train import TrainConfig, train

TINY_MODEL = MinkUNetConfig(
    init_dim=8,
    stem_kernel=3,
    planes=(8, 16, 16, 16, 16, 16, 16, 16),
    layers=(1,) * 8,
    head_dims={"diffusion": 8, "clip": 12},
)


def _config(tmp_path: Path, scenes: list[Path], **kw: object) -> TrainConfig:
    base = {
        "scenes": [str(s) for s in scenes],
        "out_dir": str(tmp_path / "run"),
        "cache_dir": str(tmp_path / "cache"),
        "model": to_dict(TINY_MODEL),
        "epochs": 30,
        "batch_size": 1,
        "lr": 1e-2,
        "holdout_every": 4,
        "checkpoint_every_epochs": 5,
    }
    base.update(kw)
    return from_dict(TrainConfig, base)


def test_distillation_lowers_loss_and_improves_heldout_masks(tmp_path, scene_factory) -> None:
    scene = scene_factory(0).save(tmp_path / "scene.safetensors")
    result = train(_config(tmp_path, [scene]), progress=False)
    first = sum(result.losses[:3]) / 3
    last = sum(result.losses[-3:]) / 3
    assert last <= 0.5 * first, (first, last)
    before = result.metrics["heldout_iou_initial"]
    after = result.metrics["heldout_iou_final"]
    print("held-out mean IoU before/after:", before, after)
    for space in ("diffusion", "clip"):
        assert after[space] > before[space] + 0.2
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["loss_last"] == pytest.approx(result.losses[-1])
    assert (run / "loss_curve.png").stat().st_size > 0
    ckpt = load_checkpoint(run / "checkpoints" / "epoch_0030.safetensors")
    assert ckpt.step == 30 and ckpt.losses == pytest.approx(result.losses)
    assert ckpt.config["model"]["planes"] == list(TINY_MODEL.planes)


def test_resume_continues_the_same_loss_curve(tmp_path, scene_factory) -> None:
    scenes = [scene_factory(s, num_views=3).save(tmp_path / f"s{s}.safetensors") for s in (1, 2, 3)]
    kw = {"epochs": 6, "batch_size": 2, "holdout_every": 0, "checkpoint_every_epochs": 3}
    straight = train(_config(tmp_path / "a", scenes, **kw), progress=False)
    cfg = _config(tmp_path / "b", scenes, **kw)
    part = train(cfg, progress=False, max_epochs=3)
    assert part.step == 6 and part.checkpoint is not None
    resumed = train(cfg, resume=part.checkpoint, progress=False)
    assert resumed.step == straight.step == 12
    torch.testing.assert_close(
        torch.tensor(resumed.losses), torch.tensor(straight.losses), rtol=1e-5, atol=1e-6
    )


def test_corrupt_checkpoint_and_bad_config_are_rejected(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DataFormatError):
        load_checkpoint(bad)
    with pytest.raises(DataFormatError):
        SceneData.load(bad)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"epochs": 3, "learning_rate": 1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(TrainConfig, tmp_path / "c.yaml")


def test_scene_cache_round_trip(tmp_path, scene_factory) -> None:
    scene = scene_factory(4, num_views=2)
    back = SceneData.load(scene.save(tmp_path / "x.safetensors"))
    assert (back.coords == scene.coords).all() and len(back.views) == 2
    assert (back.views[1].weights == scene.views[1].weights).all()
    assert set(back.views[0].embeddings) == {"diffusion", "clip"}


def test_ddp_with_two_processes_on_cpu(tmp_path, scene_factory) -> None:
    scenes = [scene_factory(s, num_views=2).save(tmp_path / f"s{s}.safetensors") for s in (5, 6)]
    cfg = _config(tmp_path, scenes, epochs=2, batch_size=2, holdout_every=0)
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "diff2scene.cli",
            "train",
            str(cfg_path),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_0002.safetensors")
    assert len(ckpt.losses) == 2

"""Mask-distillation training of the 3D network (``diff2scene train CONFIG``).

One entry point serves a single process and ``torchrun`` (DistributedDataParallel; gloo on
CPU, NCCL on CUDA): with ``WORLD_SIZE`` > 1 in the environment each rank takes its share of
every global batch and gradients are averaged. Rank 0 builds missing scene caches, writes
checkpoints, the loss curve and the metrics.

Every random draw (scene order, augmentations) comes from a generator seeded by
(seed, epoch/step, rank), and the learning rate is a pure function of the step, so a run resumed
from a checkpoint continues the same loss curve as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from diff2scene.config import to_dict
from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.io.assembler import InputConfig
from diff2scene.io.bag import BagSourceConfig
from diff2scene.mapping import KeyframeConfig, MapperConfig, UnprojectConfig
from diff2scene.net3d.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from diff2scene.net3d.data import (
    AugmentConfig,
    SceneData,
    ViewTargets,
    augment_coords,
    build_scene,
    colors_to_features,
    describe,
    split_views,
)
from diff2scene.net3d.loss import ViewBatch, distillation_loss, mask_iou
from diff2scene.net3d.model import MinkUNet, MinkUNetConfig, count_parameters
from diff2scene.net3d.sparse import make_sparse_tensor, resolve_backend
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter

_LOG = logging.getLogger(__name__)

#: 2D segmenters that can build scene caches.
@dataclass
class TrainConfig:
    """Everything a distillation run needs; YAML keys are these field names."""

    #: Scenes: cached ``.safetensors`` files, synthetic dataset directories (``DIR/bag`` +
    #: ``DIR/scene.json``, as ``diff2scene synth`` writes them) or bag directories; the last two
    #: are turned into caches on first use.
    scenes: list[Path] = field(default_factory=list)
    #: Run directory: checkpoints, metrics.json, loss_curve.png.
    out_dir: Path = Path("runs/net3d")
    #: Where scene caches built from bags are kept.
    cache_dir: Path = Path("runs/net3d/cache")
    #: The 3D network.
    model: MinkUNetConfig = field(default_factory=MinkUNetConfig)
    #: Sparse backend: auto (reference on CPU, spconv on CUDA), reference or spconv.
    backend: str = "auto"
    #: Torch device for training ("cpu", "cuda", "cuda:1"; under torchrun cuda uses LOCAL_RANK).
    device: str = "cpu"
    #: Passes over all scenes.
    epochs: int = 200
    #: Scenes per optimisation step over all processes together.
    batch_size: int = 8
    #: Initial Adam learning rate.
    lr: float = 1e-4
    #: Poly decay: lr_t = lr · (1 − t / T)^power.
    poly_power: float = 0.9
    #: Adam weight decay.
    weight_decay: float = 0.0
    #: Training augmentations; null disables them.
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    #: Every n-th keyframe of a scene is held out for evaluation (0: none).
    holdout_every: int = 0
    #: Keyframes used per scene and step, drawn at random (0: all); bounds step cost.
    max_views_per_step: int = 0
    #: Seed of initialisation, scene order and augmentations.
    seed: int = 0
    #: Write a checkpoint every this many epochs (and always after the last one).
    checkpoint_every_epochs: int = 10
    #: 2D segmenter for building caches from bags (the oracle needs synthetic scene dirs).
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    #: Bag reading (topics, sync) for scenes given as bags.
    bag: BagSourceConfig = field(default_factory=BagSourceConfig)
    #: How the bag's messages are assembled into frames (sync, pose source), as in replay.
    input: InputConfig = field(default_factory=InputConfig)
    #: Voxel fusion for scenes given as bags.
    mapper: MapperConfig = field(default_factory=MapperConfig)
    #: Keyframe selection for scenes given as bags.
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    #: Mask unprojection (visibility rule) for scenes given as bags.
    unproject: UnprojectConfig = field(default_factory=UnprojectConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.lr <= 0 or self.poly_power < 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0, poly_power and weight_decay >= 0")
        if self.holdout_every < 0 or self.max_views_per_step < 0:
            raise ConfigError("holdout_every and max_views_per_step must be >= 0")
        if self.checkpoint_every_epochs < 1:
            raise ConfigError("checkpoint_every_epochs must be >= 1")


@dataclass
class TrainResult:
    """What a run produced (rank 0 fills the paths)."""

    losses: list[float]
    step: int
    metrics: dict[str, Any]
    checkpoint: Path | None = None


def _cache_path(config: TrainConfig, scene: Path) -> Path:
    """Cache file named by the scene and a digest of everything that shapes its contents."""
    recipe = {
        "scene": str(scene.resolve()),
        "segmenter": to_dict(config.segmenter),
        "bag": to_dict(config.bag),
        "input": to_dict(config.input),
        "mapper": to_dict(config.mapper),
        "keyframes": to_dict(config.keyframes),
        "unproject": to_dict(config.unproject),
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return config.cache_dir / f"{scene.name}-{digest}.safetensors"


def prepare_scene(config: TrainConfig, scene: Path) -> Path:
    """Path of the scene's cache file, building it (segmenter run once) if needed."""
    if scene.suffix == ".safetensors":
        return scene
    cache = _cache_path(config, scene)
    if cache.exists():
        return cache
    from diff2scene.io.bag import BagFrameSource

    _LOG.info("building scene cache %s from %s", cache, scene)
    bag = scene / "bag" if (scene / "bag" / "metadata.yaml").exists() else scene
    source = BagFrameSource(bag, config.bag, input_config=config.input)
    data = build_scene(
        source,
        build_segmenter(config.segmenter, bag=bag)[0],
        mapper_config=config.mapper,
        keyframe_config=config.keyframes,
        unproject_config=config.unproject,
        segmenter_name=config.segmenter.kind,
    )
    if not data.views:
        raise DataFormatError(f"{scene}: no keyframe produced distillation targets")
    return data.save(cache)


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


def _views_to_batch(
    views: list[ViewTargets], old_to_new: torch.Tensor, offset: int, device: torch.device
) -> list[ViewBatch]:
    out = []
    for v in views:
        idx = old_to_new[torch.from_numpy(v.voxel_index)] + offset
        out.append(
            ViewBatch(
                voxel_index=idx.to(device),
                weights=torch.from_numpy(v.weights.astype(np.float32)).to(device),
                embeddings={k: torch.from_numpy(e).to(device) for k, e in v.embeddings.items()},
            )
        )
    return out


def collate(
    scenes: list[SceneData],
    views: list[list[ViewTargets]],
    *,
    augment: AugmentConfig | None,
    generator: torch.Generator,
    max_views: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[ViewBatch]]:
    """Batch scenes into one sparse input: (M, 4) int32 coords, (M, 3) feats, view targets."""
    coords_parts, feat_parts, batch_views = [], [], []
    offset = 0
    for b, (scene, scene_views) in enumerate(zip(scenes, views, strict=True)):
        coords, old_to_new = augment_coords(scene.coords, augment, generator)
        n = coords.shape[0]
        # Merged voxels take the colour of one of their sources (the last writer).
        feats = torch.empty((n, 3), dtype=torch.float32)
        feats[old_to_new] = colors_to_features(scene.colors)
        chosen = scene_views
        if 0 < max_views < len(scene_views):
            pick = torch.randperm(len(scene_views), generator=generator)[:max_views]
            chosen = [scene_views[int(i)] for i in pick]
        batch_col = torch.full((n, 1), b, dtype=torch.int32)
        coords_parts.append(torch.cat([batch_col, coords], dim=1))
        feat_parts.append(feats)
        batch_views.extend(_views_to_batch(chosen, old_to_new, offset, device))
        offset += n
    return (
        torch.cat(coords_parts).to(device),
        torch.cat(feat_parts).to(device),
        batch_views,
    )


def evaluate(
    model: nn.Module,
    scenes: list[SceneData],
    views: list[list[ViewTargets]],
    *,
    backend: str,
    device: torch.device,
) -> dict[str, float]:
    """Mean IoU of B'3d vs B3d (threshold 0.5) per space over ``views``, eval mode, no augment."""
    was_training = model.training
    model.eval()
    per_space: dict[str, list[float]] = {}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for scene, scene_views in zip(scenes, views, strict=True):
            if not scene_views:
                continue
            coords, feats, vb = collate(
                [scene], [scene_views], augment=None, generator=g, max_views=0, device=device
            )
            be = resolve_backend(backend, training=False, device=device)
            out = model(make_sparse_tensor(coords, feats, backend=be))
            for space in out:
                iou = mask_iou(out, vb, space=space)
                if not math.isnan(iou):
                    per_space.setdefault(space, []).append(iou)
    model.train(was_training)
    return {space: float(np.mean(v)) for space, v in per_space.items()}


def poly_lr(base_lr: float, step: int, total_steps: int, power: float) -> float:
    """Learning rate at ``step`` of ``total_steps`` under poly decay."""
    return float(base_lr * max(0.0, 1.0 - step / max(1, total_steps)) ** power)


def _plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("mask distillation loss")
    ax.set_yscale("log" if losses and min(losses) > 0 else "linear")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(
    config: TrainConfig,
    *,
    resume: Path | None = None,
    progress: bool = True,
    max_epochs: int | None = None,
) -> TrainResult:
    """Run (or continue) distillation; ``max_epochs`` stops early without changing the schedule.

    The learning-rate schedule always spans ``config.epochs``; ``max_epochs`` only ends this
    invocation sooner (after writing a checkpoint), which is how a run is split into parts.
    """
    device = torch.device(config.device)
    ddp = _init_distributed(device)
    if device.type == "cuda" and ddp.world > 1 and device.index is None:
        device = torch.device("cuda", ddp.local_rank)
    backend = resolve_backend(config.backend, training=True, device=device)
    if not config.scenes:
        raise ConfigError("no scenes given")

    if ddp.main:
        cache_paths = [prepare_scene(config, Path(s)) for s in config.scenes]
    if ddp.world > 1:
        dist.barrier()
    if not ddp.main:
        cache_paths = [prepare_scene(config, Path(s)) for s in config.scenes]
    scenes = [SceneData.load(p) for p in cache_paths]
    splits = [split_views(s.views, config.holdout_every) for s in scenes]
    train_views = [t for t, _ in splits]
    held_views = [h for _, h in splits]
    if ddp.main:
        for p, s in zip(cache_paths, scenes, strict=True):
            _LOG.info("scene %s: %s", p.name, describe(s))

    torch.manual_seed(config.seed)
    model = MinkUNet(config.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, epoch, losses = 0, 0, []
    metrics: dict[str, Any] = {"param_count": count_parameters(model), "backend": backend}
    if resume is not None:
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is None:
            raise DataFormatError(f"{resume}: weights-only checkpoint cannot resume training")
        optimizer.load_state_dict(ckpt.optimizer_state)
        step, epoch, losses = ckpt.step, ckpt.epoch, list(ckpt.losses)
        prev = config.out_dir / "metrics.json"
        if prev.exists():
            metrics.update(
                {k: v for k, v in json.loads(prev.read_text()).items() if k.startswith("heldout")}
            )
    elif any(held_views):
        metrics["heldout_iou_initial"] = evaluate(
            model, scenes, held_views, backend=config.backend, device=device
        )
    net: nn.Module = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    steps_per_epoch = math.ceil(len(scenes) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    last_epoch = config.epochs if max_epochs is None else min(config.epochs, max_epochs)
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (progress and ddp.main),
        desc="distill",
        unit="step",
    )
    t0 = time.perf_counter()
    ckpt_path: Path | None = None
    model.train()
    while epoch < last_epoch:
        order = torch.randperm(
            len(scenes), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch)
        ).tolist()
        for b in range(steps_per_epoch):
            batch = order[b * config.batch_size : (b + 1) * config.batch_size]
            while len(batch) < ddp.world:  # every rank needs a scene to take part in all-reduce
                batch = batch + batch
            mine = batch[ddp.rank :: ddp.world]
            g = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 131 + ddp.rank)
            coords, feats, views = collate(
                [scenes[i] for i in mine],
                [train_views[i] for i in mine],
                augment=config.augment,
                generator=g,
                max_views=config.max_views_per_step,
                device=device,
            )
            lr = poly_lr(config.lr, step, total_steps, config.poly_power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = net(make_sparse_tensor(coords, feats, backend=backend))
            loss = distillation_loss(out, views)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.detach().clone()
            if ddp.world > 1:
                dist.all_reduce(value)
                value /= ddp.world
            losses.append(float(value))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        epoch += 1
        if ddp.main and (epoch % config.checkpoint_every_epochs == 0 or epoch == last_epoch):
            ckpt_path = save_checkpoint(
                config.out_dir / "checkpoints" / f"epoch_{epoch:04d}.safetensors",
                Checkpoint(
                    model_state=model.state_dict(),
                    optimizer_state=optimizer.state_dict(),
                    config=to_dict(config),
                    step=step,
                    epoch=epoch,
                    losses=losses,
                ),
            )
    bar.close()
    metrics.update(
        {
            "steps": step,
            "epochs_done": epoch,
            "epochs_planned": config.epochs,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "seconds_this_invocation": time.perf_counter() - t0,
            "world_size": ddp.world,
        }
    )
    if any(held_views):
        metrics["heldout_iou_final"] = evaluate(
            model, scenes, held_views, backend=config.backend, device=device
        )
    if ddp.main:
        config.out_dir.mkdir(parents=True, exist_ok=True)
        (config.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _plot_losses(losses, config.out_dir / "loss_curve.png")
    if ddp.world > 1:
        dist.barrier()
    return TrainResult(losses=losses, step=step, metrics=metrics, checkpoint=ckpt_path)

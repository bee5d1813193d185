"""3D branch benchmark: MinkUNet18A forward over 200k voxels per backend, one training step.

Run: ``PYTHONPATH=src:. .venv/bin/python -m bench.net3d``. Scenes are procedural rooms at 2 cm
(floor, walls, box furniture: surface voxels only, like a fused map). The CPU is shared with
other jobs, so absolute times are noisy; the reference/spconv ratio is measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from bench.common import peak_rss_mb, timed, write_results
from diff2scene.net3d.data import SceneData, ViewTargets, colors_to_features
from diff2scene.net3d.inference import Net3D, Net3DConfig
from diff2scene.net3d.loss import ViewBatch, distillation_loss
from diff2scene.net3d.model import MinkUNet, count_parameters, reference_param_count
from diff2scene.net3d.sparse import make_sparse_tensor, spconv_backend
from diff2scene.types import SPACE_DIMS


def room_voxels(target: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """About ``target`` surface voxels (M, 3) int32 of a room with boxes, and colours (M, 3)."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(target / 3.2))  # floor + 4 walls of height side/2.5 + furniture
    height = max(20, side * 2 // 5)
    parts = []
    g = np.arange(side)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    parts.append(np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size, int)], 1))
    h = np.arange(1, height)
    for fixed_axis, value in ((0, 0), (0, side - 1), (1, 0), (1, side - 1)):
        a, z = np.meshgrid(g, h, indexing="ij")
        wall = np.zeros((a.size, 3), int)
        wall[:, fixed_axis] = value
        wall[:, 1 - fixed_axis] = a.ravel()
        wall[:, 2] = z.ravel()
        parts.append(wall)
    while sum(len(p) for p in parts) < target:
        sx, sy, sz = rng.integers(10, 40, 3)
        corner = rng.integers(2, side - 45, 2)
        top = np.stack(np.meshgrid(np.arange(sx), np.arange(sy), indexing="ij"), -1).reshape(-1, 2)
        parts.append(np.concatenate([top + corner, np.full((len(top), 1), sz)], 1))
        edge = (top[:, 0] == 0) | (top[:, 0] == sx - 1) | (top[:, 1] == 0) | (top[:, 1] == sy - 1)
        ring_a = top[edge]
        for z in range(1, sz):
            parts.append(np.concatenate([ring_a + corner, np.full((len(ring_a), 1), z)], 1))
    coords = np.unique(np.concatenate(parts), axis=0)
    order = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0]))
    coords = coords[order][:target].astype(np.int32)
    colors = rng.integers(0, 255, (len(coords), 3)).astype(np.uint8)
    return coords, colors


def synthetic_scene(num_voxels: int, seed: int, views: int = 8, masks: int = 30) -> SceneData:
    coords, colors = room_voxels(num_voxels, seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(views):
        vis = np.sort(rng.choice(len(coords), size=len(coords) // 3, replace=False))
        owner = rng.integers(0, masks, len(vis))
        weights = (owner[None, :] == np.arange(masks)[:, None]).astype(np.float16)
        emb = {
            s: (rng.normal(size=(masks, d)) / np.sqrt(d)).astype(np.float32)
            for s, d in SPACE_DIMS.items()
        }
        out.append(ViewTargets(vis.astype(np.int64), weights, emb))
    return SceneData(coords, colors, out, voxel_size_m=0.02)


def train_step_seconds(scenes: list[SceneData]) -> tuple[float, float]:
    """Median time of one reference-backend Adam step on the batch, and peak RSS after."""
    torch.manual_seed(0)
    model = MinkUNet().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    parts, feats, views, offset = [], [], [], 0
    for b, s in enumerate(scenes):
        c = torch.from_numpy(s.coords)
        parts.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1))
        feats.append(colors_to_features(s.colors))
        for v in s.views:
            views.append(
                ViewBatch(
                    torch.from_numpy(v.voxel_index) + offset,
                    torch.from_numpy(v.weights.astype(np.float32)),
                    {k: torch.from_numpy(e) for k, e in v.embeddings.items()},
                )
            )
        offset += len(c)
    coords, f = torch.cat(parts), torch.cat(feats)

    def step() -> None:
        out = model(make_sparse_tensor(coords, f, backend="reference"))
        loss = distillation_loss(out, views)
        opt.zero_grad()
        loss.backward()
        opt.step()

    seconds = timed(step, repeats=2, warmup=1)
    return seconds, peak_rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voxels", type=int, default=200_000)
    parser.add_argument("--train-scene-voxels", type=int, default=50_000)
    args = parser.parse_args()
    figures: dict[str, float | int | str] = {}
    load_before = os.getloadavg()[0]

    # Training first, so the process's peak RSS is that of the training step.
    scenes = [synthetic_scene(args.train_scene_voxels, seed) for seed in (1, 2)]
    step_s, peak_mb = train_step_seconds(scenes)
    figures["train_step_s_cpu"] = step_s
    figures["train_peak_mem_mb"] = peak_mb
    figures["train_batch_voxels"] = sum(s.num_voxels for s in scenes)

    model = MinkUNet().eval()
    figures["param_count"] = count_parameters(model)
    figures["param_count_openscene_minkunet18a_768"] = reference_param_count(out_channels=768)
    coords, colors = room_voxels(args.voxels, 0)
    figures["forward_voxels"] = len(coords)
    for backend in ("reference", "spconv"):
        if backend == "spconv" and not spconv_backend.available():
            continue
        net = Net3D(model, Net3DConfig(backend=backend))
        figures[f"forward_s_200k_{backend}"] = timed(
            lambda net=net: net.infer(coords, colors), repeats=2, warmup=1
        )
        figures["bytes_per_voxel_features"] = net.bytes_per_voxel
    if "forward_s_200k_spconv" in figures:
        figures["reference_over_spconv_ratio"] = float(figures["forward_s_200k_reference"]) / float(
            figures["forward_s_200k_spconv"]
        )
    figures["torch_threads"] = torch.get_num_threads()
    figures["load_avg_1min_before"] = load_before
    figures["load_avg_1min_after"] = os.getloadavg()[0]
    notes = (
        "CPU shared with other jobs during the run (see load averages): times are indicative. "
        "spconv runs its CPU kernels with one PyTorch thread (they race with more, see "
        "diff2scene/net3d/sparse/spconv_backend.py); the reference backend uses all threads. "
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )
    path = write_results("net3d", figures, title="3D branch (MinkUNet18A)", notes=notes)
    print(path.read_text())


if __name__ == "__main__":
    main()

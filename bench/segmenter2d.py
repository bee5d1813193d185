"""Per-keyframe cost of the real-size 2D model (random weights): diffusion features, head, CLIP.

The architecture is the real one — SD v1.5 UNet + VAE (configs written out in
:mod:`diff2scene.segmentation.profiles`, nothing downloaded), CLIP ViT-L/14-336, ODISE's
Mask2Former head — with random weights, so the figures are latency and memory only, never
quality. One 512×512 keyframe (exactly one diffusion window). Target (issue #4): head + CLIP
add at most 40 % over the bare diffusion feature pass.

Run: ``PYTHONPATH=src:. .venv/bin/python -m bench.segmenter2d [--repeats N] [--device-only]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from bench.common import peak_rss_mb, write_results
from diff2scene.segmentation.diffusion import DiffusionSegmenter
from diff2scene.segmentation.profiles import build_segmenter, load_profile
from diff2scene.types import CameraIntrinsics, Frame

SIZE_PX = 512


def _frame(seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE_PX, 0:SIZE_PX]
    rgb = np.zeros((SIZE_PX, SIZE_PX, 3))
    for _ in range(8):
        cy, cx, r = rng.uniform(0, SIZE_PX), rng.uniform(0, SIZE_PX), rng.uniform(30, 150)
        rgb += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(
            0, 255, 3
        )
    return Frame(
        stamp_ns=0,
        rgb=np.clip(rgb, 0, 255).astype(np.uint8),
        depth_m=np.ones((SIZE_PX, SIZE_PX), np.float32),
        intrinsics=CameraIntrinsics(SIZE_PX, SIZE_PX, 400.0, 400.0, 256.0, 256.0),
        T_world_camera=np.eye(4),
    )


def _build(device: str) -> DiffusionSegmenter:
    profile = load_profile("odise_sd15")
    assert profile.weights is not None
    profile.weights.random_init = True
    torch.manual_seed(0)
    return build_segmenter(profile, device=device)


def measure(device: str, repeats: int) -> dict[str, float]:
    """Median seconds per part over ``repeats`` keyframes after one warm-up keyframe."""
    t0 = time.perf_counter()
    seg = _build(device)
    build_s = time.perf_counter() - t0
    frame = _frame()
    seg.segment(frame)  # warm-up: allocator, kernels, lazy inits
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    parts: dict[str, list[float]] = {"diffusion": [], "head": [], "clip": [], "total": []}
    for _ in range(repeats):
        t = time.perf_counter()
        seg.segment(frame)
        wall = time.perf_counter() - t
        tm = seg.timings
        parts["diffusion"].append(tm.diffusion_features_s)
        parts["head"].append(tm.head_s)
        parts["clip"].append(tm.clip_s)
        parts["total"].append(wall)
    med = {k: statistics.median(v) for k, v in parts.items()}
    out = {
        "keyframe_s_total": med["total"],
        "keyframe_s_diffusion_features": med["diffusion"],
        "keyframe_s_head": med["head"],
        "keyframe_s_clip": med["clip"],
        "head_clip_overhead_ratio": (med["head"] + med["clip"]) / med["diffusion"],
        "build_s": build_s,
        "head_params_m": sum(v.numel() for v in seg.model.head_state_dict().values()) / 1e6,
    }
    if device.startswith("cuda"):
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    del seg
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed keyframes per device")
    parser.add_argument("--skip-cpu", action="store_true", help="only measure on CUDA")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "image_px": SIZE_PX,
        # This machine is shared: the load says how much of it the figures below really had.
        "load_avg_1m_start": os.getloadavg()[0],
    }
    if not args.skip_cpu:
        cpu = measure("cpu", args.repeats)
        figures.update(
            {
                "keyframe_s_total_cpu_512": cpu["keyframe_s_total"],
                "keyframe_s_diffusion_features": cpu["keyframe_s_diffusion_features"],
                "keyframe_s_head": cpu["keyframe_s_head"],
                "keyframe_s_clip": cpu["keyframe_s_clip"],
                "head_clip_overhead_ratio": cpu["head_clip_overhead_ratio"],
                "peak_mem_mb": peak_rss_mb(),
                "build_s_cpu": cpu["build_s"],
                "head_params_m": cpu["head_params_m"],
            }
        )
    if torch.cuda.is_available():
        gpu = measure("cuda", max(args.repeats, 5))
        figures.update(
            {
                "cuda_device": torch.cuda.get_device_name(0),
                "keyframe_s_total_cuda_512": gpu["keyframe_s_total"],
                "keyframe_s_diffusion_features_cuda": gpu["keyframe_s_diffusion_features"],
                "keyframe_s_head_cuda": gpu["keyframe_s_head"],
                "keyframe_s_clip_cuda": gpu["keyframe_s_clip"],
                "head_clip_overhead_ratio_cuda": gpu["head_clip_overhead_ratio"],
                "peak_mem_mb_cuda": gpu["peak_mem_mb"],
                "head_params_m": gpu["head_params_m"],
            }
        )
    figures["load_avg_1m_end"] = os.getloadavg()[0]
    name = "segmenter2d" if not args.skip_cpu else "segmenter2d_cuda"
    path = write_results(
        name,
        figures,
        title="2D diffusion segmenter (real-size architecture, random weights), 512x512 keyframe",
        notes=(
            "Diffusion features = SD VAE encoder + UNet (t=0) + VAE decoder up to its stride-4 "
            "block + feature projections; CLIP = one ViT-L/14-336 pass (implicit captioner and "
            "MaskCLIP share it) + mask pooling; head = pixel decoder + transformer decoder. "
            "peak_mem_mb is the process peak RSS (includes building the model)."
        ),
    )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

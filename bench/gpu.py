"""The project's GPU figures in one short run: 2D keyframe, TSDF fusion, 3D network, query.

Everything uses random weights of the real architectures (nothing is downloaded):

* ``keyframe``: the whole ODISE-architecture segmenter (SD v1.5 UNet + VAE features, implicit
  captioner, pixel decoder, transformer decoder, CLIP ViT-L/14-336 MaskCLIP) on one keyframe,
  512² (one diffusion window) and 1024² (four windows), fp32 and fp16 (``torch.autocast``;
  weights stay fp32). One warm-up keyframe, then the median of ``--repeats``.
* ``tsdf``: ``Mapper.integrate`` (Open3D ``VoxelBlockGrid``) of 640×480 frames on ``CUDA:0``,
  with the CPU in the same run as the baseline — only where Open3D with CUDA imports.
* ``net3d``: MinkUNet18A forward (``Net3D.infer``: upload, network, fp16 download) and one
  Adam training step (distillation loss over 8 views) at 200k voxels, on every sparse
  backend that imports (spconv, and the pure-PyTorch reference).
* ``query``: a text query over a 1M-voxel map with 10k masks (``bench.query``'s map) with the
  ViT-L/14-336 text tower on the GPU; the ensemble scoring and clustering are NumPy on the CPU.

Each section's figures are written as soon as it ends, so a run cut short still reports what
it measured; a section that fails records ``<section>_error`` and the others still run.

Run: ``bench/gpu.sh`` (on a CUDA machine), or ``python -m bench.gpu --smoke`` (tiny sizes, any
device) to check the script itself.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import os
import platform
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS_DIR, write_results
from diff2scene.types import CameraIntrinsics, Frame

SECTIONS = ("keyframe", "tsdf", "net3d", "query")
Figures = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (the real ones, or tiny ones for ``--smoke``)."""

    profile: str
    keyframe_px: tuple[int, ...]
    net3d_voxels: int
    net3d_label: str
    query_objects: int
    query_keyframes: int
    query_label: str
    tsdf_frames: int


REAL = Sizes("odise_sd15", (512, 1024), 200_000, "200k", 100, 100, "1m", 60)
SMOKE = Sizes("tiny", (128, 256), 10_000, "10k", 4, 4, "smoke", 4)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_s(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0


def _half_dtype(device: str) -> torch.dtype:
    """fp16 on CUDA; on a CPU (smoke runs only) bf16, the half type CPU autocast supports."""
    return torch.float16 if device.startswith("cuda") else torch.bfloat16


def _half(device: str) -> Any:
    return torch.autocast(torch.device(device).type, dtype=_half_dtype(device))


def keyframe_image(size_px: int, seed: int = 0) -> Frame:
    """A smooth colour-blob image (SD and CLIP see natural-image statistics, not noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32)
    rgb = np.zeros((size_px, size_px, 3), np.float32)
    for _ in range(8):
        cy, cx = rng.uniform(0, size_px, 2)
        r = rng.uniform(0.06, 0.3) * size_px
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        rgb += blob[..., None] * rng.uniform(0, 255, 3).astype(np.float32)
    half = size_px / 2
    return Frame(
        stamp_ns=0,
        rgb=np.clip(rgb, 0, 255).astype(np.uint8),
        depth_m=np.ones((size_px, size_px), np.float32),
        intrinsics=CameraIntrinsics(size_px, size_px, 0.8 * size_px, 0.8 * size_px, half, half),
        T_world_camera=np.eye(4),
    )


def run_keyframe(device: str, sizes: Sizes, repeats: int, figures: Figures) -> None:
    from diff2scene.segmentation.profiles import build_segmenter, load_profile

    profile = load_profile(sizes.profile)
    if profile.weights is not None:
        profile.weights.random_init = True
        profile.weights.clip.device = device
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # Random initialisation of ~1.4G parameters is itself GPU work worth not doing on the CPU.
    try:
        with torch.device(device):
            seg = build_segmenter(profile, device=device)
        figures["keyframe_built_on"] = device
    except Exception as exc:
        print(f"  building on {device} failed ({type(exc).__name__}: {exc}); on the CPU instead")
        torch.manual_seed(0)
        seg = build_segmenter(profile, device=device)
        figures["keyframe_built_on"] = "cpu"
    _sync(device)
    figures["keyframe_build_s"] = time.perf_counter() - t0
    runs = [(sizes.keyframe_px[0], "fp32")] + [(px, "fp16") for px in sizes.keyframe_px]
    # Last: the weights themselves in half precision (autocast still runs the fp32-only ops in
    # fp32), as SD is usually deployed; it changes the model in place.
    runs += [(px, "fp16w") for px in sizes.keyframe_px]
    for px, precision in runs:
        frame = keyframe_image(px)
        if precision == "fp16w" and figures.get("keyframe_weights") != "half":
            seg.model.to(_half_dtype(device))
            figures["keyframe_weights"] = "half"
        ctx = _half(device) if precision.startswith("fp16") else nullcontext()
        key = f"{px}_{precision}"
        parts: dict[str, list[float]] = {"diffusion": [], "head": [], "clip": []}

        one = _keyframe_call(seg, frame, ctx, parts)

        _reset_peak(device)
        figures[f"keyframe_s_{key}"] = _median_s(one, device, repeats)
        for part, values in parts.items():
            figures[f"keyframe_s_{key}_{part}"] = statistics.median(values[1:] or values)
        figures[f"keyframe_s_{key}_outside_model"] = figures[f"keyframe_s_{key}"] - sum(
            figures[f"keyframe_s_{key}_{part}"] for part in parts
        )
        if device.startswith("cuda"):
            figures[f"keyframe_peak_mem_mb_{key}"] = _peak_mb(device)
        print(f"  keyframe {key}: {figures[f'keyframe_s_{key}']:.4f} s", flush=True)
    first = sizes.keyframe_px[0]
    for half in ("fp16", "fp16w"):
        figures[f"keyframe_fp32_over_{half}_ratio_{first}"] = (
            figures[f"keyframe_s_{first}_fp32"] / figures[f"keyframe_s_{first}_{half}"]
        )
    figures["keyframe_head_params_m"] = (
        sum(v.numel() for v in seg.model.head_state_dict().values()) / 1e6
    )


def _keyframe_call(
    seg: Any, frame: Frame, ctx: Any, parts: dict[str, list[float]]
) -> Callable[[], None]:
    """One keyframe through the segmenter, its per-part timers appended to ``parts``."""

    def call() -> None:
        with ctx:
            masks = seg.segment(frame)
        if masks.masks.shape[0] == 0:  # the figure must cover a keyframe that made masks
            raise RuntimeError("segmenter returned no masks")
        tm = seg.timings
        parts["diffusion"].append(tm.diffusion_features_s)
        parts["head"].append(tm.head_s)
        parts["clip"].append(tm.clip_s)

    return call


def _tsdf_frames(count: int) -> list[Frame]:
    """640×480 views of a synthetic room, rendered before any timing."""
    from diff2scene.synth.render import RenderConfig, render_frames
    from diff2scene.synth.scene import SceneConfig, generate_scene

    scene = generate_scene(0, SceneConfig())
    frames = []
    for frame in render_frames(scene, RenderConfig()):
        frames.append(frame)
        if len(frames) == count:
            break
    return frames


def run_tsdf(device: str, sizes: Sizes, repeats: int, figures: Figures) -> None:
    del repeats  # every frame is one timed integration
    try:
        import open3d as o3d
    except ImportError as exc:
        figures["tsdf_status"] = f"not measured: open3d does not import here ({exc})"
        return
    figures["open3d_version"] = o3d.__version__
    cuda = o3d.core.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        figures["tsdf_status"] = "not measured: this Open3D build has no CUDA"
        return
    from diff2scene.mapping import Mapper, MapperConfig

    frames = _tsdf_frames(sizes.tsdf_frames)
    targets = ["CUDA:0", "CPU:0"] if cuda else ["CPU:0"]
    for target in targets:
        mapper = Mapper(MapperConfig(device=target))
        mapper.integrate(frames[0])  # allocation and kernel set-up
        times = []
        for frame in frames[1:]:
            t0 = time.perf_counter()
            mapper.integrate(frame)
            if target.startswith("CUDA"):
                o3d.core.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        name = "cuda" if target.startswith("CUDA") else "cpu"
        figures[f"tsdf_integrate_ms_640x480_{name}"] = 1e3 * statistics.median(times)
    figures["tsdf_frames"] = len(frames) - 1
    if cuda:
        figures["tsdf_cpu_over_cuda_ratio"] = (
            figures["tsdf_integrate_ms_640x480_cpu"] / figures["tsdf_integrate_ms_640x480_cuda"]
        )
        figures["tsdf_status"] = "measured"
    else:
        figures["tsdf_status"] = "CPU only: this Open3D build has no CUDA"


def run_net3d(device: str, sizes: Sizes, repeats: int, figures: Figures) -> None:
    from bench.net3d import room_voxels, synthetic_scene
    from diff2scene.net3d.inference import Net3D, Net3DConfig
    from diff2scene.net3d.model import MinkUNet
    from diff2scene.net3d.sparse import spconv_backend

    backends = ["reference"]
    if spconv_backend.available():
        try:
            import spconv

            figures["spconv_version"] = str(getattr(spconv, "__version__", "unknown"))
            backends.insert(0, "spconv")
        except Exception as exc:  # a wheel built for another CUDA fails here, not at find_spec
            figures["spconv_status"] = f"not usable: {type(exc).__name__}: {exc}"
    else:
        figures["spconv_status"] = "not installed"
    n = sizes.net3d_label
    coords, colors = room_voxels(sizes.net3d_voxels, 0)
    figures["net3d_voxels"] = len(coords)
    scene = synthetic_scene(sizes.net3d_voxels, 1)
    figures["net3d_train_voxels"] = scene.num_voxels
    for backend in backends:
        try:
            torch.manual_seed(0)
            net = Net3D(MinkUNet(), Net3DConfig(backend=backend, device=device))
            _reset_peak(device)
            figures[f"net3d_forward_s_{n}_{backend}"] = _median_s(
                functools.partial(net.infer, coords, colors), device, repeats
            )
            if device.startswith("cuda"):
                figures[f"net3d_forward_peak_mem_mb_{n}_{backend}"] = _peak_mb(device)
            figures[f"net3d_forward_s_{n}_{backend}_network"] = _median_s(
                _network_call(net, coords, colors), device, repeats
            )
            del net
            if backend == "spconv" and not device.startswith("cuda"):
                figures["net3d_train_step_spconv_status"] = "skipped: spconv trains on CUDA only"
                continue
            step = _train_step(scene, backend, device)
            _reset_peak(device)
            figures[f"net3d_train_step_s_{n}_{backend}"] = _median_s(step, device, repeats)
            if device.startswith("cuda"):
                figures[f"net3d_train_peak_mem_mb_{n}_{backend}"] = _peak_mb(device)
            del step
            print(
                f"  net3d {backend}: forward {figures[f'net3d_forward_s_{n}_{backend}']:.3f} s"
                f", train step {figures[f'net3d_train_step_s_{n}_{backend}']:.3f} s",
                flush=True,
            )
        except Exception as exc:
            figures[f"net3d_{backend}_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        gc.collect()
    if f"net3d_forward_s_{n}_spconv" in figures and f"net3d_forward_s_{n}_reference" in figures:
        figures["net3d_forward_reference_over_spconv_ratio"] = (
            figures[f"net3d_forward_s_{n}_reference"] / figures[f"net3d_forward_s_{n}_spconv"]
        )


def _network_call(net: Any, coords: np.ndarray, colors: np.ndarray) -> Callable[[], None]:
    """The network alone (inputs already on the device, outputs left there)."""
    from diff2scene.net3d.data import colors_to_features
    from diff2scene.net3d.sparse import make_sparse_tensor

    c = torch.from_numpy(coords)
    batch = torch.cat([torch.zeros((len(c), 1), dtype=torch.int32), c], 1).to(net.device)
    feats = colors_to_features(colors).to(net.device)

    def call() -> None:
        with torch.inference_mode():
            net.model(make_sparse_tensor(batch, feats, backend=net.backend))

    return call


def _train_step(scene: Any, backend: str, device: str) -> Callable[[], None]:
    """One Adam step of the distillation loss over the scene's views, on ``device``."""
    from diff2scene.net3d.data import colors_to_features
    from diff2scene.net3d.loss import ViewBatch, distillation_loss
    from diff2scene.net3d.model import MinkUNet
    from diff2scene.net3d.sparse import make_sparse_tensor

    dev = torch.device(device)
    torch.manual_seed(0)
    model = MinkUNet().to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    c = torch.from_numpy(scene.coords)
    coords = torch.cat([torch.zeros((len(c), 1), dtype=torch.int32), c], 1).to(dev)
    feats = colors_to_features(scene.colors).to(dev)
    views = [
        ViewBatch(
            torch.from_numpy(v.voxel_index).to(dev),
            torch.from_numpy(v.weights.astype(np.float32)).to(dev),
            {k: torch.from_numpy(e).to(dev) for k, e in v.embeddings.items()},
        )
        for v in scene.views
    ]

    def step() -> None:
        out = model(make_sparse_tensor(coords, feats, backend=backend))
        loss = distillation_loss(out, views)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _open3d_placeholder_if_absent(figures: Figures) -> None:
    """Let ``diff2scene.query`` import where Open3D is not installed (a bare GPU machine).

    The query path never calls Open3D, but ``diff2scene.query`` imports ``diff2scene.mapping``,
    whose package imports Open3D at module level. The placeholder raises on any use, so a
    query figure can only come from code that really ran without Open3D.
    """
    if importlib.util.find_spec("open3d") is not None:
        return

    def missing(name: str) -> Any:
        # AttributeError, so probes such as hasattr(module, "__file__") see a bare module.
        raise AttributeError(f"open3d is not installed here (open3d.{name} was used)")

    placeholder = types.ModuleType("open3d")
    placeholder.__getattr__ = missing  # type: ignore[method-assign]
    sys.modules["open3d"] = placeholder
    figures["query_open3d"] = "not installed: import satisfied by a placeholder that raises on use"


def run_query(device: str, sizes: Sizes, repeats: int, figures: Figures) -> None:
    _open3d_placeholder_if_absent(figures)
    from bench.query import build_map
    from diff2scene.mapping.snapshot import MapSnapshot
    from diff2scene.query.engine import QueryConfig, QueryEngine
    from diff2scene.query.ensemble import EnsembleConfig, EnsembleScorer, GeometricIndex
    from diff2scene.segmentation.clip import ClipConfig, build_clip
    from diff2scene.segmentation.oracle import OracleSegmenter
    from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig

    if sizes is SMOKE:
        clip_cfg = ClipConfig.tiny_profile()
        clip_cfg.device = device
    else:
        clip_cfg = ClipConfig(model_name="ViT-L-14-336", pretrained=None, device=device)
    text_cfg = TextEncoderConfig(clip=clip_cfg)
    encoder = ClipTextEncoder(build_clip(text_cfg.clip), text_cfg)
    oracle = OracleSegmenter({}, encoder)
    t0 = time.perf_counter()
    data = build_map(
        encoder, oracle, objects=sizes.query_objects, keyframes=sizes.query_keyframes, seed=0
    )
    figures["query_make_map_s"] = time.perf_counter() - t0
    coords, emb, feats = data["coords"], data["embeddings"], data["features_3d"]
    assert isinstance(coords, np.ndarray) and isinstance(emb, dict) and isinstance(feats, dict)
    cfg = EnsembleConfig()
    t0 = time.perf_counter()
    index = GeometricIndex.build(feats, emb, cfg)
    figures["query_geometric_index_build_s"] = time.perf_counter() - t0
    scorer = EnsembleScorer(
        data["member_ids"],
        data["member_weights"],
        int(emb["clip"].shape[0]),
        geometric=index,
        config=cfg,
    )
    snapshot = MapSnapshot.from_arrays(
        voxel_size_m=0.02,
        coords=coords,
        member_ids=data["member_ids"],
        member_weights=data["member_weights"],
        bank_embeddings=emb,
        features_3d=feats,
    )
    engine = QueryEngine(snapshot, scorer, encoder=encoder, classifier=oracle, config=QueryConfig())
    words = ["chair", "table", "bookshelf", "door", "sofa"][: max(1, repeats)]
    cold, warm, found = [], [], []
    engine.query("cabinet")  # first call: lazy set-up, kernels
    for word in words:
        encoder.clear_cache()
        t0 = time.perf_counter()
        result = engine.query(word)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine.query(word)
        warm.append(time.perf_counter() - t0)
        found.append(len(result.instances))
    label = sizes.query_label
    figures["query_voxels"] = int(coords.shape[0])
    figures["query_masks"] = int(emb["clip"].shape[0])
    figures[f"query_ms_{label}"] = 1e3 * statistics.median(cold)
    figures[f"query_ms_warm_{label}"] = 1e3 * statistics.median(warm)
    figures["query_instances_found"] = found
    figures["query_text_tower_device"] = device
    # A query that matched nothing did not do all the work its figure names (the tiny smoke
    # text tower maps every word to nearly one vector, so only full runs are held to this).
    if not any(found) and sizes is not SMOKE:
        raise RuntimeError(f"no query found an instance: {found}")


RUNNERS: dict[str, Callable[[str, Sizes, int, Figures], None]] = {
    "keyframe": run_keyframe,
    "tsdf": run_tsdf,
    "net3d": run_net3d,
    "query": run_query,
}


def environment(device: str) -> Figures:
    import importlib.metadata as md

    env: Figures = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch_version": torch.__version__,
        "cuda_runtime": str(torch.version.cuda),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    for dist in ("diffusers", "open_clip_torch", "numpy"):
        try:
            env[f"{dist}_version"] = md.version(dist)
        except md.PackageNotFoundError:
            env[f"{dist}_version"] = "absent"
    return env


NOTES = """Conditions: random weights of the real architectures (nothing downloaded); one
warm-up, then the median of the repeats. keyframe_s_* is the wall time of
`DiffusionSegmenter.segment` on one RGB image (upload, SD VAE encoder + UNet at t=0 + VAE
decoder features and projections, implicit captioner with CLIP ViT-L/14-336, MSDeformAttn pixel
decoder, 9-layer transformer decoder, MaskCLIP pooling, masks and embeddings back to NumPy);
its _diffusion/_head/_clip parts come from the segmenter's own timers (synchronised), and
_outside_model is the rest (upload, padding, upsampling 100 masks to the image size, sigmoid,
copies to the host). 1024² is four 512² diffusion windows. fp32: PyTorch's defaults (TF32
matmul off). fp16: torch.autocast(float16) around the call, weights kept fp32 (each op casts
its weights). fp16w: the same autocast with the weights themselves converted to fp16.
net3d_forward_s = Net3D.infer (voxels up, MinkUNet18A with the 256-d and 768-d heads, fp16
features of every voxel down to NumPy); its _network figure is the network alone on inputs
already on the GPU;
net3d_train_step_s = forward + distillation loss over 8 views of 30 masks + backward + Adam
step, data on the GPU; the backend is named in the key (spconv = spconv 2.3.8 CUDA kernels,
spconv-cu126 wheel; reference = the project's pure-PyTorch sparse convolution). query_ms = one
text query, text not cached (ViT-L/14-336 text tower on the device named in
query_text_tower_device; classification of 10k masks, both ensemble branches over all voxels
and instance clustering in NumPy on the CPU); query_ms_warm = the same query again (text
cached); query_instances_found lists what each timed query returned. tsdf_* = Mapper.integrate
of a 640x480 synthetic frame at 2 cm voxels, when Open3D imports (see tsdf_status)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --smoke --device cpu to check the script)")
        return 2
    if not args.smoke and not args.device.startswith("cuda"):
        print("full sizes need a CUDA device; use --smoke on a CPU")
        return 2
    sizes = SMOKE if args.smoke else REAL
    name = "gpu_smoke" if args.smoke else "gpu"
    out = args.out or (RESULTS_DIR if not args.smoke else Path("/tmp/d2s_gpu_smoke"))
    figures = environment(args.device)
    figures["sections"] = ",".join(sections)
    title = f"GPU figures ({figures['device']}), random weights of the real architectures"
    started = time.perf_counter()
    failed = []
    for section in sections:
        t0 = time.perf_counter()
        print(f"[{time.perf_counter() - started:6.1f} s] {section} ...", flush=True)
        try:
            with _oom_note(figures, section):
                RUNNERS[section](args.device, sizes, args.repeats, figures)
        except Exception as exc:
            failed.append(section)
            figures[f"{section}_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        figures[f"{section}_section_s"] = time.perf_counter() - t0
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        write_results(name, figures, title=title, notes=NOTES, out_dir=out)
    print(f"[{time.perf_counter() - started:6.1f} s] done; results in {out / name}.json")
    for key, value in figures.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return 1 if failed else 0


@contextmanager
def _oom_note(figures: Figures, section: str) -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        figures[f"{section}_note"] = "CUDA out of memory"
        raise


if __name__ == "__main__":
    sys.exit(main())

"""Mapping benchmark: fusion overhead, unprojection speed, memory per voxel.

Run: ``PYTHONPATH=src:. .venv/bin/python -m bench.mapping`` (writes bench/results/mapping.*).

Frames: the synthetic generator's 7 × 6 m room (``diff2scene.synth``, seed 0) rendered along
its 300-frame camera loop at 640 × 480 with the sensor noise model, 2 cm voxels. Each frame
is rendered once and fed, in alternating order, to a bare Open3D ``VoxelBlockGrid`` (block
coordinates + integrate, with the same array → Open3D image conversions) and to the full path
(``Mapper.integrate`` with its checks, keyframe selection, and every 10th frame
``update_voxels`` + ``SemanticMap.apply_surface_update``); only those calls are timed.
Unprojection is timed separately: 100 soft masks from each of five keyframes into the final map.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import open3d as o3d

from bench.common import RESULTS_DIR, peak_rss_mb, timed, write_results
from diff2scene.mapping import (
    KeyframeConfig,
    KeyframeSelector,
    Mapper,
    MapperConfig,
    MaskUnprojector,
    SemanticMap,
    Unprojection,
    render_map,
)
from diff2scene.mapping import RenderConfig as MapRenderConfig
from diff2scene.synth.render import RenderConfig, render_frames
from diff2scene.synth.scene import SceneConfig, generate_scene
from diff2scene.types import SPACE_CLIP, SPACE_DIFFUSION, Frame, MaskSet

#: Frames between surface refreshes in the full path (about 3 Hz at 30 fps).
UPDATE_EVERY_FRAMES = 10
NUM_MASKS = 100


def bare_integrate(
    vbg: o3d.t.geometry.VoxelBlockGrid, frame: Frame, cfg: MapperConfig
) -> None:
    """What a caller of Open3D alone would do with a Frame."""
    depth = o3d.t.geometry.Image(o3d.core.Tensor.from_numpy(frame.depth_m))
    color = o3d.t.geometry.Image(
        o3d.core.Tensor.from_numpy(frame.rgb.astype(np.float32) * np.float32(1 / 255))
    )
    K = o3d.core.Tensor.from_numpy(frame.intrinsics.matrix())
    extrinsic = o3d.core.Tensor.from_numpy(np.linalg.inv(frame.T_world_camera))
    blocks = vbg.compute_unique_block_coordinates(
        depth, K, extrinsic, 1.0, cfg.depth_max_m, cfg.trunc_voxel_multiplier
    )
    vbg.integrate(blocks, depth, color, K, K, extrinsic, 1.0, cfg.depth_max_m,
                  cfg.trunc_voxel_multiplier)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()

    scene = generate_scene(
        0, SceneConfig(room_width_range_m=(7.0, 7.0), room_depth_range_m=(6.0, 6.0))
    )
    render_cfg = RenderConfig(n_frames=args.frames)
    intr = render_cfg.intrinsics()
    cfg = MapperConfig(voxel_size_m=0.02, device="CPU:0", depth_max_m=6.0)
    mapper = Mapper(cfg)
    selector = KeyframeSelector(KeyframeConfig())
    smap = SemanticMap(cfg.voxel_size_m)
    vbg = o3d.t.geometry.VoxelBlockGrid(
        ("tsdf", "weight", "color"),
        (o3d.core.float32, o3d.core.float32, o3d.core.float32),
        [o3d.core.SizeVector([c]) for c in (1, 1, 3)],
        cfg.voxel_size_m,
        cfg.block_resolution,
        cfg.block_count,
        o3d.core.Device("CPU:0"),
    )
    bare_s = 0.0
    full_s = 0.0
    refresh_s = 0.0
    keyframes: list[Frame] = []
    num_frames = 0
    for i, frame in enumerate(render_frames(scene, render_cfg)):
        num_frames += 1
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            t0 = time.perf_counter()
            if which == 0:
                bare_integrate(vbg, frame, cfg)
                bare_s += time.perf_counter() - t0
                continue
            if not mapper.integrate(frame):
                raise RuntimeError(f"frame {i} skipped: {mapper.stats.last_skip_detail}")
            is_keyframe = selector.is_keyframe(frame)
            if (i + 1) % UPDATE_EVERY_FRAMES == 0:
                t1 = time.perf_counter()
                smap.apply_surface_update(mapper.update_voxels())
                refresh_s += time.perf_counter() - t1
            full_s += time.perf_counter() - t0
            if is_keyframe:
                keyframes.append(frame)
    smap.apply_surface_update(mapper.update_voxels())

    # Unprojection: 100 soft masks from each of five keyframes spread over the loop.
    rng = np.random.default_rng(0)
    masks = rng.random((NUM_MASKS, intr.height, intr.width), dtype=np.float32)
    points = smap.points_m
    unprojector = MaskUnprojector()
    picks = [keyframes[j] for j in np.linspace(0, len(keyframes) - 1, 5).round().astype(int)]
    unproject_s = []
    accumulate_s = []
    visible = []
    for kf_id, kf in enumerate(picks):

        def unproject(kf: Frame = kf) -> Unprojection:
            return unprojector.unproject(masks, kf.depth_m, intr, kf.T_world_camera, points)

        unproject_s.append(timed(unproject, repeats=3))
        un = unproject(kf)
        visible.append(un.num_visible)
        mask_set = MaskSet(
            masks=masks,
            embeddings={
                SPACE_DIFFUSION: rng.standard_normal((NUM_MASKS, 256)).astype(np.float32),
                SPACE_CLIP: rng.standard_normal((NUM_MASKS, 768)).astype(np.float32),
            },
        )
        t0 = time.perf_counter()
        unprojector.accumulate(smap, un, mask_set, kf_id)
        accumulate_s.append(time.perf_counter() - t0)

    m = smap.num_voxels
    frames_timed = num_frames
    figures: dict[str, float | int | str] = {
        "frames": frames_timed,
        "image_size": f"{intr.width}x{intr.height}",
        "voxel_size_m": cfg.voxel_size_m,
        "fusion_ms_per_frame_open3d": 1000 * bare_s / frames_timed,
        "fusion_ms_per_frame_full": 1000 * full_s / frames_timed,
        "fusion_overhead_ratio": full_s / bare_s,
        "surface_refresh_ms_per_frame_amortised": 1000 * refresh_s / frames_timed,
        "surface_refresh_ms_each": 1000 * refresh_s / (frames_timed // UPDATE_EVERY_FRAMES),
        "unproject_ms_per_keyframe": 1000 * float(np.median(unproject_s)),
        "unproject_ms_per_keyframe_max": 1000 * max(unproject_s),
        "unproject_visible_voxels_mean": float(np.mean(visible)),
        "accumulate_ms_per_keyframe": 1000 * float(np.median(accumulate_s)),
        "map_voxels": m,
        "tsdf_blocks": mapper.num_blocks,
        "bytes_per_voxel_geometry": mapper.geometry_nbytes / m,
        "bytes_per_voxel_semantic": smap.semantic_nbytes / m,
        "bytes_per_voxel_features_3d_fp16": 2 * (256 + 768),
        "mask_bank_bytes_per_mask": smap.mask_bank.nbytes / max(1, smap.mask_bank.num_masks),
        "keyframes": selector.stats.keyframes,
        "peak_rss_mb": peak_rss_mb(),
    }
    render_map(
        smap.points_m,
        RESULTS_DIR / "mapping_map.png",
        colors=smap.colors,
        title=f"synthetic room (seed 0), {m} voxels at {cfg.voxel_size_m * 100:.0f} cm",
        config=MapRenderConfig(top_down_max_z_m=float(scene.room_size_m[2]) - 0.1),
    )
    notes = (
        "Fusion: same frames, same run, alternating order. `full` = Mapper.integrate (input "
        "checks, pose-jump/bounds/depth filtering, Open3D integration, dirty-block bookkeeping) "
        f"+ keyframe selection + a surface refresh (update_voxels + SemanticMap update) every "
        f"{UPDATE_EVERY_FRAMES} frames, amortised. The 2D model and unprojection run on "
        "keyframes in a worker and are timed separately (`unproject_ms_per_keyframe`: 100 "
        "soft 640x480 masks into the fused map; `accumulate_ms_per_keyframe`: bank + top-8 "
        "merge). Geometry bytes = allocated TSDF blocks (tsdf, weight, RGB as float32 = 20 B "
        "per TSDF voxel) + voxel index + colours, per surface voxel. Semantic bytes = top-8 "
        "memberships (int32 id + float32 weight) + view count; 3D features, if filled by the "
        "3D branch, add `bytes_per_voxel_features_3d_fp16`. Unprojection/accumulate: median over "
        "five keyframes."
    )
    path = write_results("mapping", figures, title="Mapping benchmark", notes=notes)
    for key, value in figures.items():
        print(f"{key}: {value}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

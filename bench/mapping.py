"""Mapping benchmark: fusion overhead with and without the semantic bookkeeping, accumulate,
snapshots and the incremental geometric index at 1M voxels, memory per voxel.

Run: ``PYTHONPATH=src:. .venv/bin/python -m bench.mapping`` (writes bench/results/mapping.*).

Frames: the synthetic generator's 7 × 6 m room (``diff2scene.synth``, seed 0) rendered along
its 300-frame camera loop at 640 × 480 with the sensor noise model, 2 cm voxels. Each frame
is rendered once and fed, in alternating order, to a bare Open3D ``VoxelBlockGrid`` (block
coordinates + integrate, with the same array → Open3D image conversions) and to the full path
(``Mapper.integrate`` with its checks and keyframe selection: what ``Pipeline.add_frame``
does for every frame); only those calls are timed. On every keyframe the full path also does
what the pipeline's worker does with the 2D model's output — surface refresh
(``update_voxels`` + ``SemanticMap.apply_surface_update``; the pipeline refreshes the surface
only there and on flush/save), unprojection of 100 soft 640 × 480 masks, ``accumulate`` — and a
``snapshot()`` as a query session takes one per map version (so the copy-on-write cost of the
next keyframe is in the figure); that work is timed separately and amortised over the frames:
unprojection + ``accumulate`` (the semantic bookkeeping) give
``fusion_overhead_ratio_with_semantics``, with the refresh and snapshot
``fusion_overhead_ratio_with_semantics_and_surface_refresh``, and with the geometric index a
query session updates per keyframe (3D branch on) too, every piece of semantic work,
``fusion_overhead_ratio_all_semantic_work``. The 2D model itself is not timed (it runs in its
own worker at its own rate).

The 1M-voxel part builds a semantic map of 1M voxels with a 10k-mask bank and fp16 3D
features at the real widths (256 + 768), times a snapshot, the copy-on-write of the next
keyframe's membership write, and ``GeometricIndex.update`` for keyframes of 100 new masks and
10k new voxels after one full build.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import open3d as o3d
from numpy.typing import NDArray

from bench.common import RESULTS_DIR, peak_rss_mb, timed, write_results
from diff2scene.mapping import (
    KeyframeConfig,
    KeyframeSelector,
    Mapper,
    MapperConfig,
    MaskUnprojector,
    SemanticMap,
    SurfaceUpdate,
    Unprojection,
    render_map,
)
from diff2scene.mapping import RenderConfig as MapRenderConfig
from diff2scene.query.ensemble import EnsembleConfig, GeometricIndex
from diff2scene.synth.render import RenderConfig, render_frames
from diff2scene.synth.scene import SceneConfig, generate_scene
from diff2scene.types import SPACE_CLIP, SPACE_DIFFUSION, Frame, MaskSet

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


def _object_bank(
    rng: np.random.Generator, objects: int, masks: int, dims: dict[str, int]
) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float32]], dict[str, NDArray[np.float32]]]:
    """Masks of ``objects`` objects: (K,) owner, per space (K, D) unit embeddings (the object's
    direction + noise, around a shared direction as text-derived embeddings are) and (objects,
    D) the 3D feature each object's voxels get (logit ≈ +5 with its own masks, ≈ -8 with
    other objects')."""
    owner = rng.integers(0, objects, masks)
    emb: dict[str, NDArray[np.float32]] = {}
    feat: dict[str, NDArray[np.float32]] = {}
    for space, d in dims.items():
        common = rng.standard_normal(d)
        common /= np.linalg.norm(common)
        centres = common + 0.5 * rng.standard_normal((objects, d)) / np.sqrt(d)
        e = centres[owner] + 0.05 * rng.standard_normal((masks, d)) / np.sqrt(d)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        emb[space] = e.astype(np.float32)
        direction = centres - centres.mean(axis=0)
        direction -= np.outer(direction @ common, common)
        scale = 12.0 / np.einsum("jd,jd->j", direction, direction)
        feat[space] = (scale[:, None] * direction - 8.0 * common).astype(np.float32)
    return owner, emb, feat


def million_voxels(figures: dict[str, float | int | str], *, keyframes: int) -> None:
    """Snapshot, copy-on-write and the incremental geometric index at 1M voxels / 10k masks."""
    rng = np.random.default_rng(1)
    objects, per_object, dims = 100, 10_000, {SPACE_DIFFUSION: 256, SPACE_CLIP: 768}
    cube = np.stack(np.meshgrid(np.arange(25), np.arange(20), np.arange(20), indexing="ij"), -1)
    cube = cube.reshape(-1, 3).astype(np.int32)
    side = 10
    coords = np.concatenate(
        [cube + np.array([30 * (j % side), 30 * (j // side), 0], np.int32) for j in range(objects)]
    )
    voxel_owner = np.repeat(np.arange(objects), per_object)
    m = coords.shape[0]
    smap = SemanticMap(0.02)
    smap.apply_surface_update(
        SurfaceUpdate.appending(0.02, coords, np.zeros_like(coords, np.uint8))
    )
    mask_owner, emb, feat = _object_bank(rng, objects, 10_000, dims)
    for kf in range(100):
        sl = slice(100 * kf, 100 * kf + 100)
        smap.mask_bank.append(
            MaskSet(masks=np.zeros((100, 1, 1), np.float32),
                    embeddings={s: e[sl] for s, e in emb.items()}),
            kf,
        )
    by_obj = [np.flatnonzero(mask_owner == j) for j in range(objects)]
    ids = np.stack([rng.choice(by_obj[j], size=(per_object, 8)) for j in range(objects)])
    smap.member_ids = ids.reshape(m, 8).astype(np.int32)
    smap.member_weights = rng.uniform(0.3, 1.0, (m, 8)).astype(np.float32)
    features = {s: f[voxel_owner].astype(np.float16) for s, f in feat.items()}
    smap.features_3d = features

    snap_s = []
    for _ in range(5):
        smap.mark_changed()  # a new version: snapshot() freezes again instead of reusing
        t0 = time.perf_counter()
        snap = smap.snapshot()
        snap_s.append(time.perf_counter() - t0)
    figures["snapshot_ms_1m"] = 1000 * float(np.median(snap_s))
    t0, c0 = time.perf_counter(), time.thread_time()
    _ = snap.member_ids, snap.member_weights, snap.view_counts
    figures["snapshot_assemble_memberships_ms_1m"] = 1000 * (time.perf_counter() - t0)
    figures["snapshot_assemble_memberships_cpu_ms_1m"] = 1000 * (time.thread_time() - c0)
    # A keyframe's membership write (93k voxels) with no snapshot holding the blocks, then with
    # one: scattered voxels (worst case, every block touched) and a contiguous run (best case).
    visible = 93_000
    for name, vox in (
        ("scattered", np.sort(rng.choice(m, visible, replace=False))),
        ("contiguous", np.arange(m - visible, m, dtype=np.int64)),
    ):
        new_ids, new_w = smap.gather_memberships(vox)
        smap.write_memberships(vox, new_ids, new_w)  # unshares what earlier snapshots held
        t0 = time.perf_counter()
        smap.write_memberships(vox, new_ids, new_w)
        plain = time.perf_counter() - t0
        smap.snapshot()
        before = smap.copy_on_write_blocks
        t0 = time.perf_counter()
        smap.write_memberships(vox, new_ids, new_w)
        shared = time.perf_counter() - t0
        figures[f"copy_on_write_ms_per_keyframe_1m_{name}"] = 1000 * (shared - plain)
        figures[f"copy_on_write_blocks_per_keyframe_1m_{name}"] = (
            smap.copy_on_write_blocks - before
        )

    cfg = EnsembleConfig()
    bank = smap.mask_bank.embeddings
    t0, c0 = time.perf_counter(), time.thread_time()
    index = GeometricIndex.build(features, bank, cfg)
    figures["geometric_index_build_s_1m"] = time.perf_counter() - t0
    figures["geometric_index_build_cpu_s_1m"] = time.thread_time() - c0
    # Keyframes: 100 new masks (views of the same objects) and 10k new voxels (1 %) with
    # features, the worst case (live, new voxels have zero features until the 3D refresh).
    update_s = []
    update_cpu_s = []
    for kf in range(keyframes):
        owner_new, emb_new, _ = _object_bank(np.random.default_rng(100 + kf), objects, 100, dims)
        for space in emb_new:  # the same objects: their directions, fresh noise
            centre = emb[space][np.array([by_obj[j][0] for j in owner_new])]
            emb_new[space] = (centre + 0.01 * emb_new[space]).astype(np.float32)
        grown_owner = rng.integers(0, objects, 10_000)
        features = {
            s: np.concatenate([f, feat[s][grown_owner].astype(np.float16)])
            for s, f in features.items()
        }
        bank = {s: np.concatenate([e, emb_new[s]]) for s, e in bank.items()}
        t0, c0 = time.perf_counter(), time.thread_time()
        index = index.update(features, bank, cfg)
        update_s.append(time.perf_counter() - t0)
        update_cpu_s.append(time.thread_time() - c0)
    figures["geometric_index_update_s_per_keyframe"] = float(np.median(update_s))
    figures["geometric_index_update_s_per_keyframe_max"] = max(update_s)
    figures["geometric_index_update_cpu_s_per_keyframe"] = float(np.median(update_cpu_s))
    figures["geometric_index_refit_due_after_keyframes"] = int(
        np.ceil(cfg.geometric_refit_growth * 10_000 / 100)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--index-keyframes", type=int, default=3,
                        help="keyframes of the 1M-voxel geometric index update")
    args = parser.parse_args()
    load_start = os.getloadavg()

    scene = generate_scene(
        0, SceneConfig(room_width_range_m=(7.0, 7.0), room_depth_range_m=(6.0, 6.0))
    )
    render_cfg = RenderConfig(n_frames=args.frames)
    intr = render_cfg.intrinsics()
    cfg = MapperConfig(voxel_size_m=0.02, device="CPU:0", depth_max_m=6.0)
    mapper = Mapper(cfg)
    selector = KeyframeSelector(KeyframeConfig())
    smap = SemanticMap(cfg.voxel_size_m)
    attr = o3d.core.uint16 if cfg.compact_tsdf else o3d.core.float32  # the mapper's layout
    vbg = o3d.t.geometry.VoxelBlockGrid(
        ("tsdf", "weight", "color"),
        (o3d.core.float32, attr, attr),
        [o3d.core.SizeVector([c]) for c in (1, 1, 3)],
        cfg.voxel_size_m,
        cfg.block_resolution,
        cfg.max_tsdf_blocks,
        o3d.core.Device("CPU:0"),
    )
    rng = np.random.default_rng(0)
    masks = rng.random((NUM_MASKS, intr.height, intr.width), dtype=np.float32)
    unprojector = MaskUnprojector()

    def mask_set() -> MaskSet:
        return MaskSet(
            masks=masks,
            embeddings={
                SPACE_DIFFUSION: rng.standard_normal((NUM_MASKS, 256)).astype(np.float32),
                SPACE_CLIP: rng.standard_normal((NUM_MASKS, 768)).astype(np.float32),
            },
        )

    bare_s = 0.0
    full_s = 0.0
    semantic_s = 0.0
    live: dict[str, list[float]] = {"refresh": [], "unproject": [], "accumulate": [], "snap": []}
    live_cpu: dict[str, list[float]] = {"unproject": [], "accumulate": []}
    keyframes: list[Frame] = []
    # The geometric index as a query session keeps it with the 3D branch on: updated per map
    # version, rebuilt when the bank outgrew its fit. The voxels' 3D features are random here
    # (the 3D network's own cost is bench/net3d's); growing the feature arrays is not timed.
    index_cfg = EnsembleConfig()
    live_features = {SPACE_DIFFUSION: np.zeros((0, 256), np.float16),
                     SPACE_CLIP: np.zeros((0, 768), np.float16)}
    live_index: GeometricIndex | None = None
    index_s: list[float] = []
    index_rebuilds = 0
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
            full_s += time.perf_counter() - t0
            if not is_keyframe:
                continue
            # What the pipeline's worker does with the 2D model's output for this keyframe.
            keyframes.append(frame)
            masks_kf = mask_set()
            t1 = time.perf_counter()
            smap.apply_surface_update(mapper.update_voxels())
            t2, c2 = time.perf_counter(), time.thread_time()
            un = unprojector.unproject(
                masks, frame.depth_m, intr, frame.T_world_camera, smap.points_m,
                boxes=smap.chunk_boxes(),  # as the pipeline: only runs of voxels in view
            )
            t3, c3 = time.perf_counter(), time.thread_time()
            unprojector.accumulate(smap, un, masks_kf, len(keyframes) - 1)
            t4, c4 = time.perf_counter(), time.thread_time()
            live_cpu["unproject"].append(c3 - c2)
            live_cpu["accumulate"].append(c4 - c3)
            smap.snapshot()  # a query session's, once per map version
            t5 = time.perf_counter()
            semantic_s += t5 - t1
            for key, dt in zip(live, (t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                live[key].append(dt)
            for space, feats in live_features.items():
                grow = smap.num_voxels - feats.shape[0]
                live_features[space] = np.concatenate(
                    [feats, rng.standard_normal((grow, feats.shape[1])).astype(np.float16)])
            bank = smap.mask_bank.embeddings
            t6 = time.perf_counter()
            if live_index is None or live_index.needs_refit(smap.mask_bank.num_masks, index_cfg):
                live_index = GeometricIndex.build(live_features, bank, index_cfg)
                index_rebuilds += 1
            else:
                live_index = live_index.update(live_features, bank, index_cfg)
            index_s.append(time.perf_counter() - t6)
    smap.apply_surface_update(mapper.update_voxels())

    # Unprojection and accumulate at the final map: five keyframes spread over the loop, dense
    # random masks (every pixel in ~95 of 100 masks: the worst case) and sparse ones (each
    # pixel in ~3 masks, faint elsewhere, like a real segmenter's).
    sparse = rng.uniform(0.0, 0.03, masks.shape).astype(np.float32)
    for _ in range(3):
        pick = rng.integers(0, NUM_MASKS, (intr.height, intr.width))
        sparse[pick, np.arange(intr.height)[:, None], np.arange(intr.width)[None, :]] = (
            rng.uniform(0.2, 1.0, (intr.height, intr.width))
        )
    points = smap.points_m
    boxes = smap.chunk_boxes()
    picks = [keyframes[j] for j in np.linspace(0, len(keyframes) - 1, 5).round().astype(int)]
    unproject_s = []
    accumulate_s = []
    accumulate_cpu_s = []
    accumulate_sparse_s = []
    accumulate_sparse_cpu_s = []
    visible = []
    for kf in picks:

        def unproject(kf: Frame = kf) -> Unprojection:
            return unprojector.unproject(masks, kf.depth_m, intr, kf.T_world_camera, points,
                                         boxes=boxes)

        unproject_s.append(timed(unproject, repeats=3))
        un = unproject(kf)
        visible.append(un.num_visible)
        t0, c0 = time.perf_counter(), time.thread_time()
        unprojector.accumulate(smap, un, mask_set(), len(keyframes))
        accumulate_s.append(time.perf_counter() - t0)
        accumulate_cpu_s.append(time.thread_time() - c0)
        un_sparse = unprojector.unproject(sparse, kf.depth_m, intr, kf.T_world_camera, points,
                                          boxes=boxes)
        t0, c0 = time.perf_counter(), time.thread_time()
        unprojector.accumulate(smap, un_sparse, mask_set(), len(keyframes))
        accumulate_sparse_s.append(time.perf_counter() - t0)
        accumulate_sparse_cpu_s.append(time.thread_time() - c0)

    m = smap.num_voxels
    frames_timed = num_frames
    tsdf_block_bytes = cfg.block_resolution**3 * (12 if cfg.compact_tsdf else 20)
    figures: dict[str, float | int | str] = {
        "frames": frames_timed,
        "image_size": f"{intr.width}x{intr.height}",
        "voxel_size_m": cfg.voxel_size_m,
        "fusion_ms_per_frame_open3d": 1000 * bare_s / frames_timed,
        "fusion_ms_per_frame_full": 1000 * full_s / frames_timed,
        "fusion_overhead_ratio": full_s / bare_s,
        "fusion_overhead_ratio_with_semantics": (
            full_s + sum(live["unproject"]) + sum(live["accumulate"])
        ) / bare_s,
        "fusion_overhead_ratio_with_semantics_and_surface_refresh": (full_s + semantic_s) / bare_s,
        "fusion_overhead_ratio_all_semantic_work": (full_s + semantic_s + sum(index_s)) / bare_s,
        "live_index_update_ms_per_keyframe": 1000 * float(np.median(index_s)),
        "live_index_update_ms_amortised_per_keyframe": 1000 * float(np.mean(index_s)),
        "live_index_rebuilds": index_rebuilds,
        "semantic_ms_per_frame_amortised": 1000 * semantic_s / frames_timed,
        "keyframes_with_semantics": len(keyframes),
        "live_refresh_ms_per_keyframe": 1000 * float(np.median(live["refresh"])),
        "live_unproject_ms_per_keyframe": 1000 * float(np.median(live["unproject"])),
        "live_accumulate_ms_per_keyframe": 1000 * float(np.median(live["accumulate"])),
        "live_accumulate_ms_per_keyframe_max": 1000 * max(live["accumulate"]),
        "live_snapshot_ms_per_keyframe": 1000 * float(np.median(live["snap"])),
        "copy_on_write_blocks_total": smap.copy_on_write_blocks,
        "unproject_ms_per_keyframe": 1000 * float(np.median(unproject_s)),
        "unproject_ms_per_keyframe_max": 1000 * max(unproject_s),
        "unproject_visible_voxels_mean": float(np.mean(visible)),
        "accumulate_ms_per_keyframe": 1000 * float(np.median(accumulate_s)),
        "accumulate_ms_per_keyframe_sparse_masks": 1000 * float(np.median(accumulate_sparse_s)),
        "accumulate_cpu_ms_per_keyframe": 1000 * float(np.median(accumulate_cpu_s)),
        "accumulate_cpu_ms_per_keyframe_sparse_masks": 1000
        * float(np.median(accumulate_sparse_cpu_s)),
        "live_unproject_cpu_ms_per_keyframe": 1000 * float(np.median(live_cpu["unproject"])),
        "live_accumulate_cpu_ms_per_keyframe": 1000 * float(np.median(live_cpu["accumulate"])),
        "map_voxels": m,
        "tsdf_blocks": mapper.num_blocks,
        # allocated TSDF blocks at their layout's bytes + voxel index + colours, per voxel (the
        # hash map itself is allocated whole at max_tsdf_blocks: a fixed cost, not per voxel)
        "bytes_per_voxel_geometry_allocated_blocks": (
            mapper.geometry_nbytes - (cfg.max_tsdf_blocks - mapper.num_blocks) * tsdf_block_bytes
        ) / m,
        "tsdf_working_set_mb": cfg.max_tsdf_blocks * tsdf_block_bytes / 2**20,
        "bytes_per_voxel_semantic": smap.semantic_nbytes / m,
        "bytes_per_voxel_features_3d_fp16": 2 * (256 + 768),
        "mask_bank_bytes_per_mask": smap.mask_bank.nbytes / max(1, smap.mask_bank.num_masks),
        "keyframes": selector.stats.keyframes,
    }
    million_voxels(figures, keyframes=args.index_keyframes)
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["load_average_1min_start"] = round(load_start[0], 2)
    figures["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    figures["cpu_count"] = os.cpu_count() or 0
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
        "+ keyframe selection, i.e. what Pipeline.add_frame does per frame. "
        "`fusion_overhead_ratio_with_semantics` adds the semantic bookkeeping of every "
        "keyframe of the run, as the pipeline's worker does it with the 2D model's output: "
        "unprojection of 100 dense random 640x480 masks and accumulate (bank + top-8 merge). "
        "`fusion_overhead_ratio_with_semantics_and_surface_refresh` also adds the surface "
        "refresh (update_voxels + SemanticMap update, which the pipeline does only at keyframes "
        "and on flush/save; a geometry-only map would pay it whenever it publishes or saves) "
        "and a snapshot as a query session takes one per map version (`live_*` medians; the 2D "
        "model itself runs in its worker and is not counted). "
        "`unproject_ms_per_keyframe` / `accumulate_ms_per_keyframe`: median over five "
        "keyframes into the final map with dense random masks (every pixel in ~95 of 100 masks, "
        "the worst case for the merge); `_sparse_masks`: each pixel in ~3 masks, faint noise "
        "elsewhere. 1M-voxel part: a 1M-voxel map with 10k masks and fp16 3D features (256 + "
        "768); `snapshot_ms_1m` = SemanticMap.snapshot(); `snapshot_assemble_memberships_ms_1m` "
        "= the snapshot's (M, 8) tables assembled from their blocks (once, in the reader); "
        "`copy_on_write_ms_per_keyframe_1m_*` = extra time of a 93k-voxel membership write when "
        "a snapshot holds the blocks (scattered voxels: every 64k-row block copied; contiguous: "
        "two); `geometric_index_update_s_per_keyframe` = GeometricIndex.update for 100 new masks "
        "+ 10k new voxels with features (median of the keyframes) after one full build "
        "(`geometric_index_build_s_1m`); the bank is refitted by a full build once it grew by "
        "geometric_refit_growth (25 %: every ~25 keyframes at 10k masks), in the query "
        "session's background thread. `*_cpu_*` figures are the thread's CPU time for the same "
        "work: on this shared 2-core machine (load averages below) wall times include waiting "
        "for a core, CPU time is the better estimate of the wall time on an idle machine "
        "(numpy/scipy here run single-threaded). `bytes_per_voxel_geometry_allocated_blocks` = "
        "allocated TSDF blocks (8^3 voxels of float32 tsdf + uint16 weight and RGB = 12 B) + "
        "voxel index + colours, per surface voxel; the block hash map is allocated whole "
        "(`tsdf_working_set_mb`) and its least recently integrated blocks are evicted beyond it. "
        "`fusion_overhead_ratio_all_semantic_work` adds to the previous ratio the geometric "
        "index a query session keeps with the 3D branch on (update per keyframe, full rebuild "
        "when the bank outgrew its fit; `live_index_*`), over random fp16 features of the "
        "live map's voxels: every piece of semantic work on the mapping path, amortised over "
        "the run. Semantic bytes = top-8 memberships (int32 id + float32 weight) + view count; "
        "3D features, if filled by the 3D branch, add `bytes_per_voxel_features_3d_fp16`. The "
        "CPU (2 cores) is shared with other jobs: load averages at start and end are recorded."
    )
    path = write_results("mapping", figures, title="Mapping benchmark", notes=notes)
    for key, value in figures.items():
        print(f"{key}: {value}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

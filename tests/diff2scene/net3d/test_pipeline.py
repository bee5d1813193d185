"""End to end on rendered RGB-D: fuse, oracle-segment keyframes once, cache, distil, evaluate.

The scene (a floor and three boxes) is ray cast with Open3D, so depth, colour and ground-truth
instance ids are exact; the oracle segmenter degrades the masks (soft, shifted boundaries,
noisy embeddings) and the trained 3D masks must agree with held-out keyframes' masks better
than the untrained network's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from diff2scene.config import from_dict, to_dict
from diff2scene.mapping import KeyframeConfig, MapperConfig, UnprojectConfig
from diff2scene.net3d.data import SceneData, build_scene
from diff2scene.net3d.model import MinkUNetConfig
from diff2scene.net3d.train import TrainConfig, train
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.oracle import OracleConfig, OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig
from diff2scene.types import CameraIntrinsics, Frame

CLASSES = {1: "floor", 2: "chair", 3: "table", 4: "cabinet"}
COLORS = {1: (150, 140, 130), 2: (200, 40, 40), 3: (40, 180, 60), 4: (50, 60, 200)}


def _boxes() -> list[tuple[int, o3d.geometry.TriangleMesh]]:
    specs = [
        (1, (2.0, 2.0, 0.04), (0.0, 0.0, -0.04)),
        (2, (0.4, 0.4, 0.5), (0.3, 0.3, 0.0)),
        (3, (0.6, 0.4, 0.35), (1.1, 0.4, 0.0)),
        (4, (0.4, 0.6, 0.7), (0.6, 1.2, 0.0)),
    ]
    out = []
    for inst, size, origin in specs:
        mesh = o3d.geometry.TriangleMesh.create_box(*size)
        mesh.translate(origin)
        out.append((inst, mesh))
    return out


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def render_frames(num: int = 24) -> list[Frame]:
    scene = o3d.t.geometry.RaycastingScene()
    geom_to_inst = {}
    for inst, mesh in _boxes():
        gid = scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        geom_to_inst[int(gid)] = inst
    K = CameraIntrinsics(width=80, height=60, fx=55.0, fy=55.0, cx=39.5, cy=29.5)
    frames = []
    centre = np.array([1.0, 1.0, 0.2])
    for i in range(num):
        a = 2 * math.pi * i / num
        eye = centre + np.array([1.7 * math.cos(a), 1.7 * math.sin(a), 0.9])
        T_wc = _look_at(eye, centre)
        rays = scene.create_rays_pinhole(
            o3d.core.Tensor(K.matrix()), o3d.core.Tensor(np.linalg.inv(T_wc)), K.width, K.height
        )
        ans = scene.cast_rays(rays)
        r = rays.numpy()
        t = ans["t_hit"].numpy()
        hit = np.isfinite(t)
        pts = r[..., :3] + r[..., 3:] * np.where(hit, t, 0.0)[..., None]
        depth = np.where(hit, (pts - eye) @ T_wc[:3, 2], 0.0).astype(np.float32)
        gids = ans["geometry_ids"].numpy().astype(np.int64)
        inst = np.zeros(gids.shape, np.int32)
        rgb = np.zeros((*gids.shape, 3), np.uint8)
        for gid, iid in geom_to_inst.items():
            sel = hit & (gids == gid)
            inst[sel] = iid
            rgb[sel] = COLORS[iid]
        frames.append(
            Frame(
                stamp_ns=i * 100_000_000,
                rgb=rgb,
                depth_m=depth,
                intrinsics=K,
                T_world_camera=T_wc,
                index=i,
                instance_ids=inst,
            )
        )
    return frames


@pytest.fixture(scope="module")
def encoder() -> ClipTextEncoder:
    cfg = TextEncoderConfig(clip=ClipConfig.tiny_profile())
    return ClipTextEncoder(build_clip(cfg.clip), cfg)


def test_oracle_distillation_end_to_end(tmp_path: Path, encoder: ClipTextEncoder) -> None:
    oracle = OracleSegmenter(
        CLASSES,
        encoder,
        OracleConfig.exact(boundary_px=1, edge_softness_px=1.5, embedding_noise=0.2, seed=3),
    )
    scene = build_scene(
        render_frames(),
        oracle,
        # the short test path circles the room far faster than a camera moves: no speed gate
        mapper_config=MapperConfig(voxel_size_m=0.04, device="CPU:0", max_speed_m_s=100.0,
                                   max_angular_speed_deg_s=10_000.0),
        keyframe_config=KeyframeConfig(min_translation_m=0.05, min_rotation_deg=5.0),
        unproject_config=UnprojectConfig(border_px=4),
        segmenter_name="oracle",
    )
    assert scene.num_voxels > 500 and len(scene.views) >= 12
    cache = scene.save(tmp_path / "scene.safetensors")
    assert len(SceneData.load(cache).views) == len(scene.views)

    model = MinkUNetConfig(
        init_dim=8,
        stem_kernel=3,
        planes=(8, 16, 16, 16, 16, 16, 16, 16),
        layers=(1,) * 8,
        head_dims=oracle.embedding_dims,
    )
    cfg = from_dict(
        TrainConfig,
        {
            "scenes": [str(cache)],
            "out_dir": str(tmp_path / "run"),
            "model": to_dict(model),
            "epochs": 30,
            "batch_size": 1,
            "lr": 1e-2,
            "holdout_every": 4,
            "max_views_per_step": 6,
            "checkpoint_every_epochs": 30,
        },
    )
    result = train(cfg, progress=False)
    first = sum(result.losses[:3]) / 3
    last = sum(result.losses[-3:]) / 3
    before = result.metrics["heldout_iou_initial"]
    after = result.metrics["heldout_iou_final"]
    print(f"loss {first:.3f} -> {last:.3f}; held-out mean IoU before {before} after {after}")
    assert last <= 0.5 * first
    for space in oracle.embedding_dims:
        assert after[space] > before[space] + 0.2


def test_training_from_a_synthetic_dataset_builds_the_cache_once(
    tmp_path: Path, encoder: ClipTextEncoder
) -> None:
    from diff2scene.net3d.train import prepare_scene
    from diff2scene.synth.dataset import SynthConfig, synthesize

    synth = from_dict(
        SynthConfig,
        {
            "render": {"width": 96, "height": 72, "n_frames": 24, "rate_hz": 4.0},
            "scene": {"max_objects": 4},
        },
    )
    synthesize(tmp_path / "room", seed=1, config=synth)
    model = MinkUNetConfig(
        init_dim=4,
        stem_kernel=3,
        planes=(4, 8, 8, 8, 8, 8, 8, 8),
        layers=(1,) * 8,
        head_dims={"diffusion": encoder.dim, "clip": encoder.dim},
    )
    cfg = from_dict(
        TrainConfig,
        {
            "scenes": [str(tmp_path / "room")],
            "out_dir": str(tmp_path / "run"),
            "cache_dir": str(tmp_path / "cache"),
            "model": to_dict(model),
            "epochs": 2,
            "batch_size": 1,
            "segmenter": {
                "kind": "oracle",
                "oracle": {"boundary_px": 1},
                "text_space": "clip",  # the tiny tower's 64-d space keeps the heads small
                "text": {"clip": to_dict(ClipConfig.tiny_profile())},
            },
            "mapper": {"voxel_size_m": 0.05, "device": "CPU:0"},
            "keyframes": {"min_translation_m": 0.05, "min_rotation_deg": 5.0},
            "unproject": {"border_px": 4},
        },
    )
    result = train(cfg, progress=False)
    assert result.step == 2 and all(math.isfinite(v) for v in result.losses)
    (cache,) = (tmp_path / "cache").glob("room-*.safetensors")
    scene = SceneData.load(cache)
    assert scene.segmenter == "oracle" and scene.num_voxels > 100 and scene.views
    stamp = cache.stat().st_mtime_ns
    assert prepare_scene(cfg, tmp_path / "room") == cache
    assert cache.stat().st_mtime_ns == stamp

"""End-to-end correctness on a generated room (diff2scene.synth) with sensor-like depth noise.

Fusion must put surface voxels on the ground-truth surface, and unprojecting the ground-truth
instance masks of the keyframes must label the voxels with the right instance.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from diff2scene.mapping import (
    KeyframeConfig,
    KeyframeSelector,
    Mapper,
    MapperConfig,
    MaskUnprojector,
    SemanticMap,
    UnprojectConfig,
)
from diff2scene.synth.render import RenderConfig, render_frames
from diff2scene.synth.scene import SceneConfig, generate_scene
from diff2scene.types import SPACE_CLIP, MaskSet

VOXEL_M = 0.05


@pytest.fixture(scope="module")
def synth_run():
    scene = generate_scene(3, SceneConfig(max_objects=8))
    frames = list(
        render_frames(scene, RenderConfig(width=160, height=120, n_frames=60, depth_noise=True))
    )
    mapper = Mapper(
        MapperConfig(
            voxel_size_m=VOXEL_M, block_resolution=8, trunc_voxel_multiplier=3.0, device="CPU:0",
            depth_max_m=6.0,
        )
    )
    selector = KeyframeSelector(KeyframeConfig(min_translation_m=0.5, min_rotation_deg=20.0))
    keyframes = []
    for frame in frames:
        assert mapper.integrate(frame), mapper.stats.last_skip_detail
        if selector.is_keyframe(frame):
            keyframes.append(frame)
    smap = SemanticMap(VOXEL_M, members_per_voxel=4)
    smap.apply_surface_update(mapper.update_voxels())
    unprojector = MaskUnprojector(UnprojectConfig(border_px=3))
    mask_instance: list[int] = []  # global mask id -> instance id
    for kf_id, frame in enumerate(keyframes):
        assert frame.instance_ids is not None
        ids = np.unique(frame.instance_ids)
        ids = ids[ids > 0]
        masks = (frame.instance_ids[None] == ids[:, None, None]).astype(np.float32)
        un = unprojector.unproject(
            masks, frame.depth_m, frame.intrinsics, frame.T_world_camera, smap.points_m
        )
        embeddings = {SPACE_CLIP: np.zeros((len(ids), 4), np.float32)}
        mask_set = MaskSet(masks=masks, embeddings=embeddings)
        unprojector.accumulate(smap, un, mask_set, kf_id)
        mask_instance.extend(ids.tolist())
    raycast = o3d.t.geometry.RaycastingScene()
    geometry_instance = []
    for inst in scene.instances:
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(inst.vertices.astype(np.float32))
        mesh.triangle.indices = o3d.core.Tensor(inst.triangles.astype(np.int32))
        raycast.add_triangles(mesh)
        geometry_instance.append(inst.instance_id)
    return smap, keyframes, np.array(mask_instance), raycast, np.array(geometry_instance)


def test_surface_within_one_voxel_of_ground_truth(synth_run):
    smap, _, _, raycast, _ = synth_run
    assert smap.num_voxels > 2000
    dist = raycast.compute_distance(o3d.core.Tensor(smap.points_m)).numpy()
    within = float(np.mean(dist <= VOXEL_M + 1e-4))
    assert within >= 0.95, f"{within:.3f} of {smap.num_voxels} voxels within one voxel"


def test_ground_truth_masks_give_ground_truth_labels(synth_run):
    smap, keyframes, mask_instance, raycast, geometry_instance = synth_run
    assert len(keyframes) >= 4
    strongest = smap.strongest_mask()
    seen = strongest >= 0
    unseen = int(np.sum(~seen))
    assert seen.mean() > 0.6, f"{unseen} of {smap.num_voxels} voxels in no keyframe mask"
    closest = raycast.compute_closest_points(o3d.core.Tensor(smap.points_m[seen]))
    truth = geometry_instance[closest["geometry_ids"].numpy().astype(np.int64)]
    predicted = mask_instance[strongest[seen]]
    accuracy = float(np.mean(predicted == truth))
    assert accuracy >= 0.9, f"label accuracy {accuracy:.3f} over {int(seen.sum())} seen voxels"

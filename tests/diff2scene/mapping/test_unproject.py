"""Mask unprojection: visibility rule, ground-truth masks reproduce ground-truth labels, top-k."""

from __future__ import annotations

import numpy as np
import pytest

from diff2scene.config import from_dict
from diff2scene.errors import ConfigError, InputError
from diff2scene.mapping import (
    KeyframeConfig,
    KeyframeSelector,
    Mapper,
    MapperConfig,
    MaskUnprojector,
    SemanticMap,
    UnprojectConfig,
)
from diff2scene.mapping.chunks import CHUNK_VOXELS, ChunkBounds
from diff2scene.mapping.unproject import (
    merge_memberships,
    merge_memberships_into,
    voxel_runs_in_view,
)
from diff2scene.types import SPACE_CLIP, CameraIntrinsics, MaskSet

VOXEL_M = 0.05
NUM_INSTANCES = 5


def instance_masks(instance_ids: np.ndarray) -> np.ndarray:
    """(NUM_INSTANCES, H, W) float32 hard masks, mask j = instance j + 1."""
    ids = np.arange(1, NUM_INSTANCES + 1)[:, None, None]
    return (instance_ids[None] == ids).astype(np.float32)


def mask_set_for(masks: np.ndarray) -> MaskSet:
    n = masks.shape[0]
    return MaskSet(
        masks=masks,
        embeddings={SPACE_CLIP: np.eye(n, 8, dtype=np.float32)},
        class_probs=np.eye(n, dtype=np.float32),
    )


@pytest.fixture(scope="module")
def labelled_map(orbit_frames):
    mapper = Mapper(
        from_dict(
            MapperConfig,
            {"voxel_size_m": VOXEL_M, "block_resolution": 8, "trunc_voxel_multiplier": 3.0,
             "device": "CPU:0"},
        )
    )
    selector = KeyframeSelector(KeyframeConfig(min_rotation_deg=10.0, min_translation_m=0.4))
    keyframes = []
    for frame in orbit_frames:
        assert mapper.integrate(frame)
        if selector.is_keyframe(frame):
            keyframes.append(frame)
    smap = SemanticMap(VOXEL_M, members_per_voxel=4)
    smap.apply_surface_update(mapper.update_voxels())
    unprojector = MaskUnprojector(UnprojectConfig(border_px=4))
    points = smap.points_m
    for kf_id, frame in enumerate(keyframes):
        masks = instance_masks(frame.instance_ids)
        un = unprojector.unproject(
            masks, frame.depth_m, frame.intrinsics, frame.T_world_camera, points
        )
        unprojector.accumulate(smap, un, mask_set_for(masks), kf_id)
    return smap, keyframes


def test_ground_truth_masks_reproduce_ground_truth_labels(labelled_map, ray_scene):
    smap, keyframes = labelled_map
    assert 3 <= len(keyframes) < 40
    strongest = smap.strongest_mask()
    seen = strongest >= 0
    # Every unseen voxel is reported, not hidden: voxels never visible in a keyframe vs voxels
    # visible but outside every mask.
    never_visible = int(np.sum(smap.view_counts == 0))
    visible_no_mask = int(np.sum((smap.view_counts > 0) & ~seen))
    assert never_visible + visible_no_mask + int(seen.sum()) == smap.num_voxels
    assert seen.mean() > 0.7, (never_visible, visible_no_mask)
    # Mask id → instance: each keyframe added NUM_INSTANCES masks in instance order.
    bank = smap.mask_bank
    assert bank.num_masks == NUM_INSTANCES * len(keyframes)
    np.testing.assert_array_equal(
        bank.keyframe_ids, np.repeat(np.arange(len(keyframes)), NUM_INSTANCES)
    )
    predicted = strongest[seen] % NUM_INSTANCES + 1
    truth = ray_scene.closest_instance(smap.points_m[seen])
    accuracy = float(np.mean(predicted == truth))
    assert accuracy >= 0.9, f"label accuracy {accuracy:.3f} on {int(seen.sum())} seen voxels"
    # Memberships are sorted strongest first and empty slots are (-1, 0).
    w = smap.member_weights
    assert np.all(np.diff(w, axis=1) <= 0)
    assert np.all(w[smap.member_ids < 0] == 0)


def test_visibility_rule_border_and_occlusion():
    intr = CameraIntrinsics(40, 30, 30.0, 30.0, 19.5, 14.5)
    depth = np.full((30, 40), 2.0, dtype=np.float32)
    points = np.array(
        [
            [0.0, 0.0, 2.0],  # on the surface, image centre: visible
            [0.0, 0.0, 2.4],  # 0.4 m behind the surface (tolerance 0.25 * 2 m = 0.5 m): visible
            [0.0, 0.0, 3.0],  # occluded
            [0.0, 0.0, -2.0],  # behind the camera
            [1.25, 0.0, 2.0],  # projects to u = 38.25: inside the image, inside the 2 px border
            [5.0, 0.0, 2.0],  # outside the image
        ],
        dtype=np.float32,
    )
    un = MaskUnprojector(UnprojectConfig(border_px=2))
    idx, pix = un.visible_voxels(depth, intr, np.eye(4), points)
    np.testing.assert_array_equal(idx, [0, 1])
    np.testing.assert_array_equal(pix, [15 * 40 + 20, 15 * 40 + 20])
    idx, _ = MaskUnprojector(UnprojectConfig(border_px=0)).visible_voxels(
        depth, intr, np.eye(4), points
    )
    np.testing.assert_array_equal(idx, [0, 1, 4])
    tight = MaskUnprojector(UnprojectConfig(depth_tolerance_ratio=0.1, border_px=2))
    idx, _ = tight.visible_voxels(depth, intr, np.eye(4), points)
    np.testing.assert_array_equal(idx, [0])
    with pytest.raises(InputError):
        un.visible_voxels(depth[:, :-1], intr, np.eye(4), points)


def test_visible_voxels_come_in_pixel_then_voxel_order_and_follow_the_rule_everywhere():
    # Many random points over a noisy depth image: the compiled pass must agree with the rule
    # evaluated directly (float32, as documented), and order its answer by pixel, then voxel.
    rng = np.random.default_rng(7)
    intr = CameraIntrinsics(64, 48, 50.0, 52.0, 31.3, 23.9)
    depth = rng.uniform(1.0, 3.0, (48, 64)).astype(np.float32)
    depth[rng.random((48, 64)) < 0.1] = 0.0  # holes
    T = np.eye(4)  # no rotation: the float32 sums below are exact in any order
    T[:3, 3] = [0.1, -0.2, 0.3]
    points = rng.uniform([-2.0, -2.0, -0.5], [2.0, 2.0, 4.0], (20000, 3)).astype(np.float32)
    cfg = UnprojectConfig(border_px=3)
    idx, pix = MaskUnprojector(cfg).visible_voxels(depth, intr, T, points)
    R_cw = T[:3, :3].T.astype(np.float32)
    t_cw = (-T[:3, :3].T @ T[:3, 3]).astype(np.float32)
    p = points @ R_cw.T + t_cw  # float32 camera coordinates
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.floor(p[:, 0] * (np.float32(intr.fx) / z) + np.float32(intr.cx + 0.5))
        v = np.floor(p[:, 1] * (np.float32(intr.fy) / z) + np.float32(intr.cy + 0.5))
    inside = (z > 1e-6) & (u >= 3) & (u <= 60) & (v >= 3) & (v <= 44)
    want, edge = [], set()
    for i in np.flatnonzero(inside):
        q = int(v[i]) * 64 + int(u[i])
        d = depth.reshape(-1)[q]
        margin = abs(abs(d - z[i]) - 0.25 * d)
        if margin < 1e-4:  # on the tolerance edge: either answer is the rule within rounding
            edge.add(int(i))
        elif d > 0 and abs(d - z[i]) <= 0.25 * d:
            want.append((q, int(i)))
    keep = np.array([i not in edge for i in idx.tolist()], dtype=bool)
    idx, pix = idx[keep], pix[keep]
    want.sort()
    assert len(want) > 100
    np.testing.assert_array_equal(pix, [q for q, _ in want])
    np.testing.assert_array_equal(idx, [i for _, i in want])


def look_from(eye: np.ndarray, forward: np.ndarray, up_hint: np.ndarray) -> np.ndarray:
    """T_world_camera of an optical-frame camera at ``eye`` looking along ``forward``."""
    z = forward / np.linalg.norm(forward)
    x = np.cross(z, up_hint)
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = eye
    return T


def boxes_of(coords: np.ndarray, chunk_voxels: int, voxel_m: float):
    bounds = ChunkBounds(voxel_m, chunk_voxels)
    for part in np.array_split(coords, 7):  # appends that start and end inside runs
        bounds.append(part)
    return bounds.frozen()


def test_chunk_boxes_bound_their_runs_exactly():
    rng = np.random.default_rng(2)
    coords = rng.integers(-300, 300, (5000, 3)).astype(np.int32)
    boxes = boxes_of(coords, 64, 0.02)
    assert boxes.num_voxels == 5000 and boxes.lo.shape == (-(-5000 // 64), 3)
    for j in range(boxes.lo.shape[0]):
        run = coords[64 * j : 64 * (j + 1)]
        np.testing.assert_array_equal(boxes.lo[j], run.min(axis=0))
        np.testing.assert_array_equal(boxes.hi[j], run.max(axis=0))


@pytest.mark.parametrize("chunk_voxels", [1, 16, 1024])
def test_boxes_leave_out_no_visible_voxel(chunk_voxels):
    """Random clouds around random cameras, depth with holes, NaN and inf, small runs whose
    boxes straddle every edge of the view: the answer with boxes is the answer without."""
    rng = np.random.default_rng(chunk_voxels)
    intr = CameraIntrinsics(64, 48, 50.0, 52.0, 31.3, 23.9)
    un = MaskUnprojector(UnprojectConfig(border_px=3))
    voxel_m = 0.05
    checked = 0
    for trial in range(30):
        eye = rng.uniform(-3, 3, 3)
        T = look_from(eye, rng.standard_normal(3), rng.standard_normal(3))
        # voxels in a slab of space around the camera, in spatially coherent runs
        coords = np.unique(rng.integers(-80, 80, (30000, 3)), axis=0).astype(np.int32)
        coords += np.round(eye / voxel_m).astype(np.int32)
        if trial % 2:
            coords = coords[rng.permutation(len(coords))]  # incoherent runs, big boxes
        points = (coords.astype(np.float64) * voxel_m).astype(np.float32)
        depth = rng.uniform(0.5, 4.5, (48, 64)).astype(np.float32)
        depth[rng.random((48, 64)) < 0.1] = 0.0
        if trial % 3 == 0:
            depth[rng.random((48, 64)) < 0.01] = np.nan
        if trial % 5 == 0:
            depth[5, 7] = np.inf  # the rule then has no far limit
        boxes = boxes_of(coords, chunk_voxels, voxel_m)
        want = un.visible_voxels(depth, intr, T, points)
        got = un.visible_voxels(depth, intr, T, points, boxes=boxes)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        checked += want[0].size
    assert checked > 3000
    # a camera that sees nothing (no valid depth) tests no voxel at all
    none = voxel_runs_in_view(boxes, len(points), np.zeros((48, 64), np.float32), intr, T,
                              config=un.config)
    assert none.shape == (0, 2)


def test_unprojection_tests_only_the_voxels_in_view(labelled_map):
    """Copies of the scene placed far away (a larger map) add no voxel to a keyframe's test
    but those sharing a run with the scene's last voxels, and the answer stays the same."""
    smap, keyframes = labelled_map
    coords = smap.coords
    m = len(coords)
    cfg = UnprojectConfig(border_px=4)
    far = [coords + np.array([200 * (1 + j % 4), 200 * (1 + j // 4), 0], np.int32)
           for j in range(12)]
    big = SemanticMap(VOXEL_M)
    big.coords = np.concatenate([coords, *far])
    boxes, big_boxes = smap.chunk_boxes(), big.chunk_boxes()
    un = MaskUnprojector(cfg)
    for frame in keyframes:
        args = (frame.depth_m, frame.intrinsics, frame.T_world_camera)
        runs = voxel_runs_in_view(boxes, m, *args, config=cfg)
        big_runs = voxel_runs_in_view(big_boxes, big.num_voxels, *args, config=cfg)
        tested = (runs[:, 1] - runs[:, 0]).sum()
        assert 0 < tested <= m
        assert (big_runs[:, 1] - big_runs[:, 0]).sum() <= tested + CHUNK_VOXELS
        assert big_runs.max() <= -(-m // CHUNK_VOXELS) * CHUNK_VOXELS
        want = un.visible_voxels(*args, smap.points_m)
        got = un.visible_voxels(*args, big.points_m, boxes=big_boxes)
        np.testing.assert_array_equal(got[0], want[0])
    # voxels that the boxes do not cover yet (appended after they were taken) are tested
    runs = voxel_runs_in_view(boxes, m + 10, *args, config=cfg)
    np.testing.assert_array_equal(runs[-1], [m, m + 10])


def test_logits_and_low_resolution_masks():
    intr = CameraIntrinsics(40, 30, 30.0, 30.0, 19.5, 14.5)
    depth = np.full((30, 40), 2.0, dtype=np.float32)
    xs = np.linspace(-1.0, 1.0, 9, dtype=np.float32)
    points = np.stack([xs, np.zeros_like(xs), np.full_like(xs, 2.0)], axis=1)
    probs = np.zeros((2, 30, 40), dtype=np.float32)
    probs[0, :, :20] = 0.9  # left half
    probs[1, :, 20:] = 0.8  # right half
    un = MaskUnprojector(UnprojectConfig(border_px=0))
    ref = un.unproject(probs, depth, intr, np.eye(4), points)
    assert ref.weights.shape == (2, ref.num_visible)
    logits = np.log(np.clip(probs, 1e-6, 1 - 1e-6) / np.clip(1 - probs, 1e-6, 1))
    from_logits = MaskUnprojector(UnprojectConfig(border_px=0, masks_are_logits=True)).unproject(
        logits.astype(np.float32), depth, intr, np.eye(4), points
    )
    np.testing.assert_allclose(from_logits.weights, ref.weights, atol=1e-5)
    half = un.unproject(probs[:, ::2, ::2].copy(), depth, intr, np.eye(4), points)
    np.testing.assert_array_equal(half.voxel_index, ref.voxel_index)
    np.testing.assert_allclose(half.weights, ref.weights)
    left = points[ref.voxel_index, 0] < -0.1
    assert np.all(ref.weights[0, left] == pytest.approx(0.9))
    assert np.all(ref.weights[1, left] == 0.0)


def test_accumulate_keeps_the_k_strongest_across_keyframes():
    smap = SemanticMap(0.1, members_per_voxel=2)
    coords = np.zeros((3, 3), dtype=np.int32)
    coords[:, 0] = [0, 1, 2]
    smap.coords = coords
    smap.colors = np.zeros((3, 3), dtype=np.uint8)
    smap.member_ids = np.full((3, 2), -1, dtype=np.int32)
    smap.member_weights = np.zeros((3, 2), dtype=np.float32)
    smap.view_counts = np.zeros(3, dtype=np.int32)
    un = MaskUnprojector(UnprojectConfig(min_weight=0.1))
    from diff2scene.mapping import Unprojection

    first = Unprojection(
        voxel_index=np.array([0, 1]),
        weights=np.array([[0.5, 0.05], [0.3, 0.2], [0.9, 0.0]], dtype=np.float32),
        pixel_index=np.array([0, 1]),
    )
    ids = un.accumulate(smap, first, mask_set_for(np.zeros((3, 1, 1), np.float32)), 0)
    np.testing.assert_array_equal(ids, [0, 1, 2])
    np.testing.assert_array_equal(smap.member_ids[0], [2, 0])
    np.testing.assert_allclose(smap.member_weights[0], [0.9, 0.5])
    np.testing.assert_array_equal(smap.member_ids[1], [1, -1])  # 0.05 < min_weight dropped
    second = Unprojection(
        voxel_index=np.array([0, 2]),
        weights=np.array([[0.7, 0.4], [0.95, 0.0], [0.0, 0.0]], dtype=np.float32),
        pixel_index=np.array([0, 1]),
    )
    un.accumulate(smap, second, mask_set_for(np.zeros((3, 1, 1), np.float32)), 1)
    np.testing.assert_array_equal(smap.member_ids[0], [4, 2])
    np.testing.assert_allclose(smap.member_weights[0], [0.95, 0.9])
    np.testing.assert_array_equal(smap.member_ids[2], [3, -1])
    np.testing.assert_array_equal(smap.view_counts, [2, 1, 1])
    np.testing.assert_array_equal(smap.mask_bank.keyframe_ids, [0, 0, 0, 1, 1, 1])
    bad = Unprojection(np.array([5]), np.ones((3, 1), np.float32), np.array([0]))
    with pytest.raises(InputError):
        un.accumulate(smap, bad, mask_set_for(np.zeros((3, 1, 1), np.float32)), 2)


def test_config_is_validated():
    with pytest.raises(ConfigError):
        from_dict(UnprojectConfig, {"depth_tolerance_ratio": 0.0})
    with pytest.raises(ConfigError):
        from_dict(UnprojectConfig, {"border_px": -1})


def reference_merge(
    stored_ids: np.ndarray,
    stored_w: np.ndarray,
    new_w: np.ndarray,
    new_ids: np.ndarray,
    min_weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The merge as it was first written (a full per-voxel top-k, then a sort of 2k
    candidates), kept here as the reference the fast merge must reproduce exactly."""
    import torch

    k, n = stored_ids.shape[1], new_w.shape[0]
    top_w, top_i = torch.topk(torch.from_numpy(new_w).T.contiguous(), min(k, n), dim=1)
    w = top_w.numpy()
    ids = new_ids[top_i.numpy()].astype(np.int32)
    weak = w < min_weight
    w = np.where(weak, np.float32(0.0), w)
    ids = np.where(weak, np.int32(-1), ids)
    cand_w = np.concatenate([stored_w, w], axis=1)
    cand_id = np.concatenate([stored_ids, ids], axis=1)
    key = np.where(cand_id < 0, np.float32(-1.0), cand_w)
    order = np.argsort(-key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_id, order, axis=1), np.take_along_axis(cand_w, order, axis=1)


@pytest.mark.parametrize("kind", ["dense", "sparse", "few_masks"])
def test_fast_merge_reproduces_the_reference(kind: str) -> None:
    rng = np.random.default_rng({"dense": 0, "sparse": 1, "few_masks": 2}[kind])
    v, k = 9000, 8  # > MERGE_CHUNK_VOXELS: several chunks
    n = 5 if kind == "few_masks" else 100
    stored_ids = np.full((v, k), -1, np.int32)
    stored_w = np.zeros((v, k), np.float32)
    next_id = 0
    for _ in range(3):  # keyframes: the stored state is what earlier merges left
        if kind == "sparse":  # each pixel in ~3 masks with some weight, faint noise elsewhere
            w = rng.uniform(0.0, 0.03, (n, v)).astype(np.float32)
            for _ in range(3):
                w[rng.integers(0, n, v), np.arange(v)] = rng.uniform(0.2, 1.0, v)
        else:
            w = rng.random((n, v), dtype=np.float32)
        seen = rng.random(v) < 0.7
        vox = np.flatnonzero(seen)
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        want = reference_merge(stored_ids[vox], stored_w[vox], w[:, vox].copy(), ids, 0.05)
        got = merge_memberships(stored_ids[vox], stored_w[vox], w[:, vox].copy(), ids,
                                min_weight=0.05)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        stored_ids[vox], stored_w[vox] = got
    assert (stored_ids >= 0).any(axis=1).mean() > 0.9


def _merge_by_definition(
    stored_ids: np.ndarray, stored_w: np.ndarray, new_w: np.ndarray, new_ids: np.ndarray,
    min_weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel: stored memberships, then the new masks in order (>= min_weight, not NaN),
    stably sorted strongest first, the first k kept."""
    v, k = stored_ids.shape
    out_ids = np.full((v, k), -1, np.int32)
    out_w = np.zeros((v, k), np.float32)
    for x in range(v):
        cands = [(float(w), int(i)) for i, w in zip(stored_ids[x], stored_w[x], strict=True)
                 if i >= 0]
        cands += [(float(w) + 0.0, int(i)) for i, w in zip(new_ids, new_w[:, x], strict=True)
                  if w >= min_weight]  # NaN fails the test
        cands.sort(key=lambda c: -c[0])  # stable: earlier candidates stay ahead on ties
        for j, (w, i) in enumerate(cands[:k]):
            out_ids[x, j], out_w[x, j] = i, w
    return out_ids, out_w


def test_merge_keeps_ties_in_order_and_ignores_nan() -> None:
    rng = np.random.default_rng(5)
    v, k, n = 1500, 4, 12  # several steps of the kernel, many more masks than slots
    stored_ids = np.full((v, k), -1, np.int32)
    stored_w = np.zeros((v, k), np.float32)
    next_id = 0
    for _ in range(4):
        w = (rng.integers(0, 5, (n, v)) / 4).astype(np.float32)  # 0, .25, .5, .75, 1: ties
        w[rng.random((n, v)) < 0.05] = np.nan
        w[rng.random((n, v)) < 0.05] = -0.0
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        want = _merge_by_definition(stored_ids, stored_w, w, ids, 0.25)
        got = merge_memberships(stored_ids, stored_w, w, ids, min_weight=0.25)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        in_place = (stored_ids.copy(), stored_w.copy())
        merge_memberships_into(*in_place, w, ids, min_weight=0.25)
        np.testing.assert_array_equal(in_place[0], want[0])
        np.testing.assert_array_equal(in_place[1], want[1])
        stored_ids, stored_w = got
    with pytest.raises(InputError, match="C-contiguous"):
        merge_memberships_into(stored_ids.T.copy().T, stored_w, w, ids, min_weight=0.25)

"""2D masks → 3D voxel memberships (B3d) by pixel↔voxel correspondence.

A voxel is visible in a keyframe if its centre projects inside the image (minus a border) onto
a pixel whose depth agrees with the voxel's depth: |D(u, v) − z| ≤ ratio · D(u, v) (OpenScene's
rule; ratio 0.25 and a 10 px border by default). Its membership in mask i is then the mask's
probability at that pixel, ``B3d_i(v) = B2d_i(u, v)``.

:meth:`MaskUnprojector.unproject` is a pure function of its inputs so the 3D branch's trainer
can call it per keyframe; :meth:`MaskUnprojector.accumulate` adds a keyframe to a
:class:`~diff2scene.mapping.semantic_map.SemanticMap`.

How views combine: a mask id belongs to exactly one keyframe, so each (voxel, mask) pair is
written once; a voxel seen from several keyframes collects memberships of masks from all of
them side by side and keeps its k strongest. Weights are not averaged across views because
different keyframes' masks are different masks (their ids differ even for the same object);
the 3D branch and the query ensemble sum over masks, which is where views are combined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
from numpy.typing import NDArray

from diff2scene.errors import ConfigError, InputError
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.types import CameraIntrinsics, MaskSet

#: Voxels merged per step of :func:`_merge_kernel`: the step's top-k state (512 x 8 ids and
#: weights, 32 KiB) stays in the L1/L2 cache while every mask's weights stream past it.
_MERGE_STEP_VOXELS = 512


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _merge_kernel(
    out_ids: NDArray[np.int32],
    out_w: NDArray[np.float32],
    weights: NDArray[np.float32],
    new_ids: NDArray[np.int32],
    below_min: np.float32,
) -> None:  # pragma: no cover - compiled; tested through merge_memberships
    """Insert every new weight into its voxel's sorted top-k (``out_*`` hold the stored
    state on entry). A weight enters only above the voxel's current k-th weight, so on equal
    weights what came first (stored, then masks in order) stays ahead. ``below_min`` is the
    float32 just below ``min_weight``: one ``>`` against ``max(k-th, below_min)`` is both tests
    (and false for NaN)."""
    v_count, k = out_ids.shape
    n = weights.shape[0]
    step = _MERGE_STEP_VOXELS
    gate = np.empty(step, dtype=np.float32)
    for lo in range(0, v_count, step):
        hi = min(v_count, lo + step)
        for v in range(lo, hi):  # an empty k-th slot takes any weight >= min_weight
            kth = out_w[v, k - 1] if out_ids[v, k - 1] >= 0 else below_min
            gate[v - lo] = max(kth, below_min)
        for i in range(n):
            mask_id = new_ids[i]
            row = weights[i, lo:hi]
            for u in range(hi - lo):
                w = row[u]
                if not w > gate[u]:
                    continue
                v = lo + u
                w = w + np.float32(0.0)  # -0.0 -> 0.0
                j = k - 1
                while j > 0 and (out_ids[v, j - 1] < 0 or out_w[v, j - 1] < w):
                    out_ids[v, j] = out_ids[v, j - 1]
                    out_w[v, j] = out_w[v, j - 1]
                    j -= 1
                out_ids[v, j] = mask_id
                out_w[v, j] = w
                kth = out_w[v, k - 1] if out_ids[v, k - 1] >= 0 else below_min
                gate[u] = max(kth, below_min)


def merge_memberships(
    stored_ids: NDArray[np.int32],
    stored_weights: NDArray[np.float32],
    new_weights: NDArray[np.float32],
    new_ids: NDArray[np.int64],
    *,
    min_weight: float,
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Per voxel, the k strongest of its stored memberships and the new masks' weights.

    ``stored_ids``/``stored_weights`` (V, k): a voxel's current top-k, strongest first (-1 / 0
    in empty slots). ``new_weights`` (N, V) float32 in [0, 1]: the N new masks' B3d on the V
    voxels; ``new_ids`` (N,) their global ids. New weights below ``min_weight`` are not
    stored. Returns the merged (V, k) int32 ids and float32 weights, strongest first; on
    equal weights a stored membership comes before a new one, and new ones in mask order.

    Why compiled: the merge looks at every one of the N x V weights once (9.3 M for 100 masks
    on 93k visible voxels), and almost all of them lose against the voxel's k-th weight at
    once; a compiled loop over voxel steps does that in one cache-friendly pass, where numpy
    needed several passes plus a sort of the survivors (3-4x slower). It runs without the
    GIL, so fusion and queries keep running while a keyframe is merged.
    """
    v_count, k = stored_ids.shape
    n = new_weights.shape[0]
    if new_weights.shape != (n, v_count) or stored_weights.shape != (v_count, k):
        raise InputError(
            "membership shapes",
            f"stored {stored_ids.shape}/{stored_weights.shape}, new {new_weights.shape}",
        )
    if np.asarray(new_ids).shape != (n,):
        raise InputError("membership shapes", f"{np.shape(new_ids)} ids for {n} masks")
    out_ids = np.array(stored_ids, dtype=np.int32, order="C")
    out_w = np.array(stored_weights, dtype=np.float32, order="C")
    weights = np.ascontiguousarray(new_weights, dtype=np.float32)
    ids32 = np.ascontiguousarray(new_ids, dtype=np.int32)
    below_min = np.nextafter(np.float32(min_weight), np.float32(-np.inf))
    _merge_kernel(out_ids, out_w, weights, ids32, below_min)
    return out_ids, out_w


@dataclass
class UnprojectConfig:
    """Visibility rule and sparsification of mask memberships."""

    #: A voxel is visible if |D(u, v) − z| ≤ ratio · D(u, v) (OpenScene: 0.25).
    depth_tolerance_ratio: float = 0.25
    #: Pixels this close to the image edge are ignored (masks are unreliable there), in pixels.
    border_px: int = 10
    #: True if masks are logits (sigmoid is applied), False if they are probabilities in [0, 1].
    masks_are_logits: bool = False
    #: Memberships below this are not stored in the per-voxel top-k (they carry no evidence).
    min_weight: float = 0.05

    def __post_init__(self) -> None:
        if self.depth_tolerance_ratio <= 0 or self.border_px < 0:
            raise ConfigError("UnprojectConfig: depth_tolerance_ratio > 0, border_px >= 0")
        if not 0 <= self.min_weight < 1:
            raise ConfigError("UnprojectConfig.min_weight must be in [0, 1)")


@dataclass
class Unprojection:
    """Memberships of the voxels visible in one view."""

    #: (V,) int64 indices into the map's voxels that are visible in the view.
    voxel_index: NDArray[np.int64]
    #: (N, V) float32 B3d_i(v) in [0, 1] for each mask i and visible voxel v.
    weights: NDArray[np.float32]
    #: (V,) int64 flat pixel index (row * width + col) in the depth image each voxel maps to.
    pixel_index: NDArray[np.int64]

    @property
    def num_visible(self) -> int:
        return int(self.voxel_index.shape[0])


class MaskUnprojector:
    """Projects map voxels into keyframes and turns 2D masks into voxel memberships."""

    def __init__(self, config: UnprojectConfig | None = None) -> None:
        self.config = config or UnprojectConfig()

    def visible_voxels(
        self,
        depth_m: NDArray[np.float32],
        intrinsics: CameraIntrinsics,
        T_world_camera: NDArray[np.float64],
        points_m: NDArray[np.float32],
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(V,) int64 visible voxel indices and (V,) int64 flat pixel index of each.

        Voxels come sorted by pixel index, not by voxel index.
        """
        cfg = self.config
        h, w = intrinsics.height, intrinsics.width
        if depth_m.shape != (h, w):
            raise InputError("size_mismatch", f"depth {depth_m.shape} vs intrinsics {(h, w)}")
        T = np.asarray(T_world_camera, dtype=np.float64)
        R = T[:3, :3]
        # Camera-from-world, written out per coordinate: numpy's (M, 3) @ (3, 3) goes through
        # BLAS with a tiny inner dimension and is ~20x slower than these column operations.
        # float32 error (~1e-7 relative) is far below a pixel.
        R_cw = R.T.astype(np.float32)
        t_cw = (-R.T @ T[:3, 3]).astype(np.float32)
        # One transposed copy makes every column operation below contiguous.
        x, y, z = np.ascontiguousarray(np.asarray(points_m, dtype=np.float32).T)
        zc = R_cw[2, 0] * x + R_cw[2, 1] * y + R_cw[2, 2] * z + t_cw[2]
        front = np.flatnonzero(zc > 1e-6)
        x, y, z, zc = x[front], y[front], z[front], zc[front]
        inv_z = np.float32(1.0) / zc
        # Nearest pixel, pixel centres at integer coordinates (ties go right/down).
        u = np.floor(
            (R_cw[0, 0] * x + R_cw[0, 1] * y + R_cw[0, 2] * z + t_cw[0])
            * (np.float32(intrinsics.fx) * inv_z)
            + np.float32(intrinsics.cx + 0.5)
        )
        v = np.floor(
            (R_cw[1, 0] * x + R_cw[1, 1] * y + R_cw[1, 2] * z + t_cw[1])
            * (np.float32(intrinsics.fy) * inv_z)
            + np.float32(intrinsics.cy + 0.5)
        )
        b = cfg.border_px
        inside = np.flatnonzero((u >= b) & (u <= w - 1 - b) & (v >= b) & (v <= h - 1 - b))
        pix = v[inside].astype(np.int64) * w + u[inside].astype(np.int64)
        d = depth_m.reshape(-1)[pix]
        zi = zc[inside]
        with np.errstate(invalid="ignore"):
            ok = np.flatnonzero((d > 0) & (np.abs(d - zi) <= cfg.depth_tolerance_ratio * d))
        idx = front[inside[ok]]
        pix = pix[ok]
        # Pixel order makes the later (N, V) gather from the masks sweep memory forwards.
        order = np.argsort(pix, kind="stable")
        return idx[order].astype(np.int64), pix[order]

    def unproject(
        self,
        masks: NDArray[np.float32],
        depth_m: NDArray[np.float32],
        intrinsics: CameraIntrinsics,
        T_world_camera: NDArray[np.float64],
        points_m: NDArray[np.float32],
    ) -> Unprojection:
        """Memberships ``B3d`` of every voxel visible in this view, for each of the N masks.

        ``masks`` is (N, H', W') probabilities (or logits, per config); it may be at a lower
        resolution than ``depth_m`` (H, W), in which case pixels map onto it by scaling.
        ``points_m`` (M, 3) float32 are the map's voxel centres in the world frame.
        """
        if masks.ndim != 3:
            raise InputError("mask_shape", f"masks must be (N, H, W), got {masks.shape}")
        voxel_index, pix = self.visible_voxels(depth_m, intrinsics, T_world_camera, points_m)
        n, mh, mw = masks.shape
        h, w = intrinsics.height, intrinsics.width
        if (mh, mw) == (h, w):
            mpix = pix
        else:
            row = ((pix // w) * mh) // h
            col = ((pix % w) * mw) // w
            mpix = row * mw + col
        flat = np.ascontiguousarray(masks, dtype=np.float32).reshape(n, -1)
        weights = np.take(flat, mpix, axis=1)  # faster than torch.index_select here
        if self.config.masks_are_logits:
            torch.sigmoid_(torch.from_numpy(weights))
        else:
            np.clip(weights, 0.0, 1.0, out=weights)
        return Unprojection(voxel_index=voxel_index, weights=weights, pixel_index=pix)

    def accumulate(
        self,
        smap: SemanticMap,
        unprojection: Unprojection,
        mask_set: MaskSet,
        keyframe_id: int,
    ) -> NDArray[np.int64]:
        """Add the keyframe's masks to the bank and merge their memberships into the top-k store.

        Returns the (N,) int64 global ids given to the masks. Per visible voxel, the new masks'
        memberships (≥ ``min_weight``) compete with the voxel's current k and the strongest k
        are kept, sorted strongest first (:func:`merge_memberships`). Visible voxels' view
        counts go up by one. The (V, k) rows written are copied first where a snapshot of the
        map still holds them.
        """
        n = mask_set.num_masks
        if unprojection.weights.shape != (n, unprojection.num_visible):
            raise InputError(
                "unprojection_mismatch",
                f"weights {unprojection.weights.shape} for {n} masks and "
                f"{unprojection.num_visible} voxels",
            )
        if unprojection.num_visible and unprojection.voxel_index.max() >= smap.num_voxels:
            raise InputError("unprojection_mismatch", "voxel index beyond the map")
        ids = smap.mask_bank.append(mask_set, keyframe_id)
        vox = smap.plan_rows(unprojection.voxel_index)
        smap.count_views(vox)
        if n == 0 or vox.num_rows == 0:
            return ids
        old_id, old_w = smap.gather_memberships(vox)
        merged_id, merged_w = merge_memberships(
            old_id, old_w, unprojection.weights, ids, min_weight=self.config.min_weight
        )
        smap.write_memberships(vox, merged_id, merged_w)
        return ids

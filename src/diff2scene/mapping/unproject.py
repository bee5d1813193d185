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

import numpy as np
import torch
from numpy.typing import NDArray

from diff2scene.errors import ConfigError, InputError
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.types import CameraIntrinsics, MaskSet

#: Voxels merged per step of :func:`merge_memberships` (a power of two: voxel and mask of a
#: flat position are a mask and a shift). 100 masks x 4096 voxels of float32 are 1.6 MB, so
#: every pass over a step stays in the CPU cache.
_MERGE_CHUNK_BITS = 12
_MERGE_CHUNK = 1 << _MERGE_CHUNK_BITS
_MASK31 = np.int64(0x7FFFFFFF)


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

    Why it is fast (2-3x a per-voxel top-k over all N masks, same result): only weights that
    can still enter the top-k are looked at — those at or above the k-th stored weight, at or
    above ``min_weight``, and at or above the smallest of the maxima of k groups of masks
    (k distinct masks reach that value, so the k-th largest does too). The survivors (about
    20 of 100 for dense random masks, fewer for real ones) are packed into one int64 key
    (voxel | inverted weight bits | tie-break), sorted once, and each voxel's first k keys
    are its answer.
    """
    v_count, k = stored_ids.shape
    n = new_weights.shape[0]
    if new_weights.shape != (n, v_count) or stored_weights.shape != (v_count, k):
        raise InputError(
            "membership shapes",
            f"stored {stored_ids.shape}/{stored_weights.shape}, new {new_weights.shape}",
        )
    code_bits = max(1, int(k + n - 1).bit_length())
    shift_v = 31 + code_bits
    if shift_v + _MERGE_CHUNK_BITS > 63:
        raise InputError("too many masks in one keyframe", f"{n} masks")
    out_ids = np.empty((v_count, k), dtype=np.int32)
    out_w = np.empty((v_count, k), dtype=np.float32)
    weights = np.asarray(new_weights, dtype=np.float32)
    bounds = np.linspace(0, n, k + 1).round().astype(np.int64)
    slot = np.arange(k, dtype=np.int64)
    chunk = _MERGE_CHUNK
    # Weights of one step, padded with -1 (never a candidate) to the full step width.
    buf = np.full((n, chunk), -1.0, dtype=np.float32)
    # Ids a key's tie-break code points at: the step's stored ids, then the new masks' ids.
    table = np.empty(chunk * k + n, dtype=np.int32)
    table[chunk * k :] = np.asarray(new_ids, dtype=np.int32)
    row_base = np.arange(chunk, dtype=np.int64)[:, None] * k
    for lo in range(0, v_count, chunk):
        hi = min(v_count, lo + chunk)
        vc = hi - lo
        if vc < chunk:
            buf[:, vc:] = -1.0
        buf[:, :vc] = weights[:, lo:hi]
        ids_s, w_s = stored_ids[lo:hi], stored_weights[lo:hi]
        thr = np.full(chunk, np.inf, dtype=np.float32)
        thr[:vc] = np.where(ids_s[:, k - 1] >= 0, w_s[:, k - 1], np.float32(0.0))
        np.maximum(thr, np.float32(min_weight), out=thr)
        if n > k:
            group_min = buf[bounds[0] : bounds[1]].max(axis=0)
            for j in range(1, k):
                np.minimum(group_min, buf[bounds[j] : bounds[j + 1]].max(axis=0), out=group_min)
            np.maximum(thr, group_min, out=thr)
        pos = np.flatnonzero(buf >= thr)
        # Non-negative float32 order = order of their bit patterns (-0.0 folded onto 0.0).
        bits = buf.reshape(-1)[pos].view(np.int32) & np.int32(0x7FFFFFFF)
        s_pos = np.flatnonzero(ids_s >= 0)
        s_bits = w_s.reshape(-1)[s_pos].view(np.int32) & np.int32(0x7FFFFFFF)
        s_vox, s_slot = np.divmod(s_pos, k)
        keys = np.empty(s_pos.size + pos.size, dtype=np.int64)
        ks, kn = keys[: s_pos.size], keys[s_pos.size :]
        np.left_shift(s_vox, shift_v, out=ks)
        ks |= (_MASK31 - s_bits) << code_bits
        ks |= s_slot
        np.bitwise_and(pos, chunk - 1, out=kn)
        kn <<= shift_v
        kn |= (_MASK31 - bits) << code_bits
        kn |= (pos >> _MERGE_CHUNK_BITS) + k
        keys.sort()
        if keys.size == 0:
            out_ids[lo:hi], out_w[lo:hi] = -1, 0.0
            continue
        starts = np.searchsorted(keys, np.arange(vc + 1, dtype=np.int64) << shift_v)
        invalid = slot[None, :] >= np.diff(starts)[:, None]
        sel = keys[np.minimum(starts[:-1, None] + slot, keys.size - 1)]
        code = sel & ((1 << code_bits) - 1)
        weight_bits = (_MASK31 - ((sel >> code_bits) & _MASK31)).astype(np.int32)
        weight_bits[invalid] = 0
        out_w[lo:hi] = weight_bits.view(np.float32)
        table[: vc * k] = ids_s.reshape(-1)
        merged = table[np.where(code < k, row_base[:vc] + code, chunk * k - k + code)]
        merged[invalid] = -1
        out_ids[lo:hi] = merged
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
        vox = unprojection.voxel_index
        smap.count_views(vox)
        if n == 0 or vox.size == 0:
            return ids
        old_id, old_w = smap.gather_memberships(vox)
        merged_id, merged_w = merge_memberships(
            old_id, old_w, unprojection.weights, ids, min_weight=self.config.min_weight
        )
        smap.write_memberships(vox, merged_id, merged_w)
        return ids

"""Mask distillation loss and the mask-agreement metric (Diff2Scene's).

For a keyframe with masks i = 1..N, embeddings ``f_i`` and unprojected memberships ``B3d_i``,
the 3D network's features ``F3d`` give predicted masks ``B'3d_i = sigmoid(<F3d, f_i>)`` and

    L_view = Σ_i (1 − cos(B'3d_i, B3d_i)).

**Support**: both vectors are restricted to the voxels *visible in that keyframe* (the
unprojection's ``voxel_index``): inside it a zero in ``B3d_i`` is evidence that the voxel is not
in mask i, outside it the keyframe says nothing. This covers the voxels each mask covers and
the rest of its view. Masks whose ``B3d_i`` is all zero on the support (cosine undefined) are
left out. The batch loss is the mean over views of Σ over embedding spaces of L_view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

#: Masks whose total membership is below this carry no target (cosine undefined).
_EMPTY_MASK = 1e-6


@dataclass
class ViewBatch:
    """One view's targets as tensors, indices already in the batch's voxel numbering."""

    voxel_index: torch.Tensor  # (V,) int64 rows of the batch's feature matrix
    weights: torch.Tensor  # (N, V) float32 B3d
    embeddings: Mapping[str, torch.Tensor]  # space -> (N, D) float32


def predicted_masks(feats: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """B'3d (N, V) = sigmoid(f (N, D) · F3d (V, D)ᵀ)."""
    return torch.sigmoid(embeddings @ feats.T)


def view_loss(feats: torch.Tensor, embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i 1 − cos(B'3d_i, B3d_i) for one view and space; ``feats`` is (V, D) on its support."""
    pred = predicted_masks(feats, embeddings)
    valid = weights.sum(dim=1) > _EMPTY_MASK
    if not bool(valid.any()):
        return feats.sum() * 0.0
    cos = torch.nn.functional.cosine_similarity(pred[valid], weights[valid], dim=1, eps=1e-8)
    return (1.0 - cos).sum()


def distillation_loss(
    feats: Mapping[str, torch.Tensor], views: Sequence[ViewBatch]
) -> torch.Tensor:
    """Mean over views of Σ_spaces L_view; ``feats`` maps space -> (M, D) batch features.

    Spaces a view has no embeddings for (or the network has no head for) are skipped.
    """
    if not views:
        raise ValueError("distillation_loss needs at least one view")
    total = next(iter(feats.values())).new_zeros(())
    for view in views:
        for space, emb in view.embeddings.items():
            if space not in feats:
                continue
            total = total + view_loss(feats[space][view.voxel_index], emb, view.weights)
    return total / len(views)


def mask_iou(
    feats: Mapping[str, torch.Tensor],
    views: Sequence[ViewBatch],
    *,
    space: str,
    threshold: float = 0.5,
) -> float:
    """Mean IoU of the voxel → mask assignments that B'3d and B3d give, over ``views``.

    The cosine loss is blind to the scale of B'3d (B'3d = 0.3·B3d is perfect), so a fixed
    threshold on B'3d would not measure what is learnt. What the query ensemble uses is how
    masks compare on a voxel, so each voxel the view covers (max_i B3d_i > ``threshold``) is
    given to its strongest mask under each, and the IoU of the two assignments is averaged
    over the masks that own a voxel in the target. NaN if no view covers any voxel.
    """
    ious: list[torch.Tensor] = []
    with torch.no_grad():
        for view in views:
            if space not in view.embeddings:
                continue
            target_max, target = view.weights.max(dim=0)
            covered = target_max > threshold
            if not bool(covered.any()):
                continue
            pred = predicted_masks(feats[space][view.voxel_index], view.embeddings[space])
            p = pred.argmax(dim=0)[covered]
            t = target[covered]
            n = view.weights.shape[0]
            masks = torch.arange(n, device=t.device)[:, None]
            pm, tm = p[None, :] == masks, t[None, :] == masks
            inter = (pm & tm).sum(dim=1).to(torch.float64)
            union = (pm | tm).sum(dim=1).to(torch.float64)
            ious.append((inter / union.clamp(min=1))[tm.any(dim=1)])
    if not ious:
        return float("nan")
    return float(torch.cat(ious).mean())

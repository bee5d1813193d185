"""ODISE's fusion of the diffusion head's and CLIP's class distributions.

``p = softmax_C((1 − a)·log p_diff + a·log p_clip) · (1 − p_null)``: the geometric mean of the
two distributions, renormalised, scaled by the probability that the mask is an object at all.
``a`` is α for classes the head was trained on ("seen") and β for novel ones, so CLIP weighs more
where the head never saw the class. One implementation serves every segmenter.
"""

from __future__ import annotations

import torch


def fuse_logits(
    *,
    diffusion_logits: torch.Tensor,
    null_logits: torch.Tensor,
    clip_logits: torch.Tensor,
    seen: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """(N, C) class probabilities; rows sum to 1 − p(no object).

    ``diffusion_logits`` (N, C) and ``null_logits`` (N, 1) are the head's class and no-object
    logits, ``clip_logits`` (N, C) CLIP's, ``seen`` (C,) bool.
    """
    if diffusion_logits.shape[1] == 0:
        return diffusion_logits.new_zeros(diffusion_logits.shape)
    p_null = torch.cat([diffusion_logits, null_logits], dim=-1).softmax(-1)[:, -1:]
    a = torch.where(seen, alpha, beta).to(diffusion_logits.dtype)[None, :]
    fused = (1.0 - a) * diffusion_logits.log_softmax(-1) + a * clip_logits.log_softmax(-1)
    return fused.softmax(-1) * (1.0 - p_null)

"""Dense CLIP image features for the implicit captioner and MaskCLIP pooling.

One pass of the CLIP vision tower gives both what the implicit captioner needs (the projected
class token, ``(B, D)``) and what MaskCLIP pools inside each mask (every patch token through the
same final LayerNorm and projection, ``(B, D, h, w)``), so the two never cost two passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diff2scene.segmentation.clip import ClipBundle


class ClipImageFeatures(nn.Module):
    """Image (B, 3, H, W) in [0, 1] → class embedding (B, D) and patch embeddings (B, D, g, g).

    The image is resized (bicubic, aspect not kept, as ODISE's MaskCLIP does) to the tower's
    native resolution; g = image_size / patch_size (24 for ViT-L/14-336).
    """

    def __init__(self, bundle: ClipBundle) -> None:
        super().__init__()
        self.visual = bundle.model.visual.eval().requires_grad_(False)
        self.image_size = bundle.image_size
        self.patch_size = bundle.patch_size
        self.embed_dim = bundle.embed_dim
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.logit_scale: torch.Tensor
        self.register_buffer(
            "mean", torch.tensor(bundle.image_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(bundle.image_std).view(1, 3, 1, 1), persistent=False
        )
        scale = bundle.model.logit_scale.detach().clone().reshape(())
        self.register_buffer("logit_scale", scale, persistent=False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = (self.image_size, self.image_size)
        x = image
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
        x = (x - self.mean) / self.std
        dtype = next(self.visual.parameters()).dtype
        # output_tokens is a plain attribute of open_clip's VisionTransformer; the model may be
        # shared with the text encoder, so it is restored at once.
        previous = self.visual.output_tokens
        self.visual.output_tokens = True
        try:
            pooled, tokens = self.visual(x.to(dtype))
        finally:
            self.visual.output_tokens = previous
        if self.visual.proj is not None:
            tokens = tokens @ self.visual.proj
        g = self.image_size // self.patch_size
        dense = tokens.reshape(tokens.shape[0], g, g, -1).permute(0, 3, 1, 2)
        return pooled.float(), dense.float().contiguous()

"""Mask2Former's multi-scale deformable-attention pixel decoder, in plain PyTorch.

The deformable attention samples values with :func:`torch.nn.functional.grid_sample` instead of
the custom CUDA op of Deformable DETR, so the head runs on any device torch runs on. Module and
parameter names follow Mask2Former's ``MSDeformAttnPixelDecoder`` so a released checkpoint maps
onto this module by a prefix rename (see :mod:`diff2scene.segmentation.convert_odise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PixelDecoderConfig:
    """Widths and depth of the pixel decoder (defaults: ODISE / Mask2Former)."""

    #: Channels of every decoder feature map.
    conv_dim: int = 256
    #: Channels of the per-pixel mask features the queries are dotted with.
    mask_dim: int = 256
    #: Deformable-attention encoder layers.
    num_layers: int = 6
    #: Attention heads of each deformable-attention layer.
    num_heads: int = 8
    #: Sampling points per head and level.
    num_points: int = 4
    #: Hidden width of each encoder layer's feed-forward block.
    dim_feedforward: int = 1024
    #: Backbone strides (px) fed to the deformable encoder, finest first.
    transformer_in_strides: tuple[int, ...] = (8, 16, 32)
    #: Stride (px) of the mask features; finer backbone levels join through an FPN.
    common_stride: int = 4
    #: Groups of every GroupNorm (detectron2's "GN" uses 32).
    norm_groups: int = 32


class ConvNorm(nn.Conv2d):
    """A convolution followed by an optional GroupNorm and ReLU, named like detectron2's Conv2d.

    The norm is a child called ``norm`` so checkpoint keys read ``<conv>.weight`` and
    ``<conv>.norm.weight`` exactly as in detectron2 checkpoints.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        norm_groups: int | None,
        relu: bool = False,
        bias: bool | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            bias=(norm_groups is None) if bias is None else bias,
        )
        self.norm: nn.Module | None = (
            nn.GroupNorm(norm_groups, out_channels) if norm_groups is not None else None
        )
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def sine_position_embedding(x: torch.Tensor, num_pos_feats: int) -> torch.Tensor:
    """DETR's normalised sine position embedding: (B, C, H, W) map → (B, 2·num_pos_feats, H, W)."""
    b, _, h, w = x.shape
    eps = 1e-6
    scale = 2 * math.pi
    y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)[:, None].expand(h, w)
    x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)[None, :].expand(h, w)
    y_embed = y_embed / (y_embed[-1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = 10000.0 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x = x_embed[:, :, None] / dim_t
    pos_y = y_embed[:, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
    pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
    return pos.unsqueeze(0).expand(b, -1, -1, -1).to(x.dtype)


def ms_deform_attn_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention by bilinear sampling.

    ``value`` (B, S, heads, head_dim) for S = Σ H_l·W_l tokens; ``sampling_locations``
    (B, Q, heads, levels, points, 2) as normalised (x, y) in [0, 1]; ``attention_weights``
    (B, Q, heads, levels, points) summing to 1 over levels×points. Returns (B, Q, heads·head_dim).
    """
    b, _, heads, head_dim = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # (B, HW, heads, hd) -> (B*heads, hd, H, W)
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * heads, head_dim, h, w)
        # (B, Q, heads, P, 2) -> (B*heads, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (B*heads, hd, Q, levels*P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (stacked * weights).sum(-1).view(b, heads * head_dim, q)
    return out.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Deformable attention over several feature levels (Deformable DETR, Zhu et al. 2021)."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start on a ring of directions, one per head, growing with the point index,
        # so an untrained layer already looks around each reference point.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_in: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """``query`` (B, Q, C), ``reference_points`` (B, Q, levels, 2) in [0, 1],
        ``value_in`` (B, S, C) → (B, Q, C)."""
        b, q, _ = query.shape
        value = self.value_proj(value_in).view(b, value_in.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).view(
            b, q, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            b, q, self.n_heads, self.n_levels * self.n_points
        )
        weights = weights.softmax(-1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        out: torch.Tensor = self.output_proj(
            ms_deform_attn_sample(value, spatial_shapes, locations, weights)
        )
        return out


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + feed-forward block."""

    def __init__(self, cfg: PixelDecoderConfig, n_levels: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(cfg.conv_dim, n_levels, cfg.num_heads, cfg.num_points)
        self.norm1 = nn.LayerNorm(cfg.conv_dim)
        self.linear1 = nn.Linear(cfg.conv_dim, cfg.dim_feedforward)
        self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.conv_dim)
        self.norm2 = nn.LayerNorm(cfg.conv_dim)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        out: torch.Tensor = self.norm2(src + self.linear2(F.relu(self.linear1(src))))
        return out


class MSDeformAttnEncoder(nn.Module):
    def __init__(self, cfg: PixelDecoderConfig, n_levels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(cfg, n_levels) for _ in range(cfg.num_layers)
        )

    @staticmethod
    def reference_points(
        spatial_shapes: list[tuple[int, int]], batch: int, device: torch.device
    ) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1]: (B, S, levels, 2)."""
        refs = []
        for h, w in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h,
                (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w,
                indexing="ij",
            )
            refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        ref = torch.cat(refs, 0)
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        ref = self.reference_points(spatial_shapes, src.shape[0], src.device)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes)
        return src


class MSDeformAttnTransformer(nn.Module):
    """Encoder-only deformable transformer over flattened multi-level features."""

    def __init__(self, cfg: PixelDecoderConfig, n_levels: int) -> None:
        super().__init__()
        self.encoder = MSDeformAttnEncoder(cfg, n_levels)
        self.level_embed = nn.Parameter(torch.randn(n_levels, cfg.conv_dim))


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features by stride → mask features (stride 4) and 3 multi-scale maps.

    ``forward`` takes {stride_px: (B, C_in, H/stride, W/stride)} and returns
    ``(mask_features (B, mask_dim, H/4, W/4), [3 maps (B, conv_dim, ·, ·) coarse→fine])``.
    """

    def __init__(self, cfg: PixelDecoderConfig, in_channels: dict[int, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_strides = sorted(in_channels)
        self.transformer_strides = sorted(cfg.transformer_in_strides)
        missing = set(self.transformer_strides) - set(self.in_strides)
        if missing:
            raise ValueError(f"pixel decoder needs backbone strides {sorted(missing)}")
        n_levels = len(self.transformer_strides)
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels[s], cfg.conv_dim, kernel_size=1),
                nn.GroupNorm(cfg.norm_groups, cfg.conv_dim),
            )
            for s in reversed(self.transformer_strides)
        )
        for proj in self.input_proj.modules():
            if isinstance(proj, nn.Conv2d) and proj.bias is not None:
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)
        self.transformer = MSDeformAttnTransformer(cfg, n_levels)
        self.mask_features = nn.Conv2d(cfg.conv_dim, cfg.mask_dim, kernel_size=1)
        self.num_fpn_levels = int(
            math.log2(min(self.transformer_strides)) - math.log2(cfg.common_stride)
        )
        self.fpn_strides = self.in_strides[: self.num_fpn_levels]
        for idx, stride in enumerate(self.fpn_strides):
            self.add_module(
                f"adapter_{idx + 1}",
                ConvNorm(in_channels[stride], cfg.conv_dim, 1, norm_groups=cfg.norm_groups),
            )
            self.add_module(
                f"layer_{idx + 1}",
                ConvNorm(cfg.conv_dim, cfg.conv_dim, 3, norm_groups=cfg.norm_groups, relu=True),
            )

    def forward(
        self, features: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs, pos, shapes = [], [], []
        for lvl, stride in enumerate(reversed(self.transformer_strides)):
            x = features[stride].float()
            src = self.input_proj[lvl](x)
            _, c, h, w = src.shape
            shapes.append((h, w))
            srcs.append(src.flatten(2).transpose(1, 2))
            p = sine_position_embedding(x, c // 2).flatten(2).transpose(1, 2)
            pos.append(p + self.transformer.level_embed[lvl].view(1, 1, -1))
        memory = self.transformer.encoder(torch.cat(srcs, 1), torch.cat(pos, 1), shapes)
        outs = [
            z.transpose(1, 2).reshape(memory.shape[0], -1, h, w)
            for z, (h, w) in zip(memory.split([h * w for h, w in shapes], 1), shapes, strict=True)
        ]
        for idx in reversed(range(self.num_fpn_levels)):
            stride = self.fpn_strides[idx]
            lateral = getattr(self, f"adapter_{idx + 1}")(features[stride].float())
            y = lateral + F.interpolate(
                outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            outs.append(getattr(self, f"layer_{idx + 1}")(y))
        return self.mask_features(outs[-1]), outs[:3]

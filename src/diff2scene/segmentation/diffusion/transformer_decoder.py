"""Mask2Former's masked-attention transformer decoder with ODISE's pooled mask embedding.

Each of the N learned queries ends as a mask (a dot product with the per-pixel mask features)
and a ``mask_dim``-d embedding: the query's output plus the mask-pooled pixel features, through
an MLP (ODISE's ``PooledMaskEmbed``). That embedding is what the mask is classified with — and
what Diff2Scene uses as a classifier for 3D features. Names follow Mask2Former/ODISE
(``MultiScaleMaskedTransformerDecoder``) so the released checkpoint maps by a prefix rename.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diff2scene.segmentation.diffusion.pixel_decoder import sine_position_embedding


@dataclass
class TransformerDecoderConfig:
    """Depth and widths of the query decoder (defaults: ODISE ``odise_label_coco_50e``)."""

    #: Width of the queries and attention layers.
    hidden_dim: int = 256
    #: Number of queries, i.e. masks per image (N).
    num_queries: int = 100
    #: Attention heads.
    num_heads: int = 8
    #: Hidden width of each feed-forward block.
    dim_feedforward: int = 2048
    #: Decoder layers (cross-attention, self-attention, FFN each), cycling over 3 scales.
    num_layers: int = 9
    #: Width of the mask embedding (the "diffusion" embedding space).
    mask_dim: int = 256
    #: Initial temperature of the learned logit scale (exp(scale) = 1/temperature).
    temperature: float = 0.07
    #: Threshold on the sigmoid mask below which a pixel is outside the mask when pooling.
    mask_threshold: float = 0.5


class MLP(nn.Module):
    """Linear layers with ReLU in between; keys ``layers.{i}.weight`` as in Mask2Former."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        out: torch.Tensor = self.norm(tgt + self.self_attn(q, k, value=tgt, need_weights=False)[0])
        return out


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        out = self.multihead_attn(
            tgt + query_pos, memory + pos, value=memory, attn_mask=memory_mask, need_weights=False
        )[0]
        result: torch.Tensor = self.norm(tgt + out)
        return result


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))
        return out


def mask_pool(
    features: torch.Tensor, mask_logits: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Average ``features`` (B, C, H, W) inside each hard mask (B, Q, H, W) → (B, Q, C).

    A mask with no pixel above ``threshold`` pools to zeros (ODISE's ``MaskPooling``).
    """
    mask = (mask_logits.detach().sigmoid() > threshold).to(features.dtype)
    denom = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return torch.einsum("bchw,bqhw->bqc", features, mask / denom)


class PooledMaskEmbed(nn.Module):
    """ODISE's mask embedding: query output + projected mask-pooled pixel features → MLP."""

    def __init__(self, cfg: TransformerDecoderConfig) -> None:
        super().__init__()
        self.pool_proj = nn.Sequential(
            nn.LayerNorm(cfg.hidden_dim), nn.Linear(cfg.hidden_dim, cfg.hidden_dim)
        )
        self.mask_embed = nn.Sequential(
            nn.LayerNorm(cfg.mask_dim), MLP(cfg.mask_dim, cfg.hidden_dim, cfg.mask_dim, 3)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))
        self.threshold = cfg.mask_threshold

    def forward(
        self, decoder_output: torch.Tensor, mask_features: torch.Tensor, mask_logits: torch.Tensor
    ) -> torch.Tensor:
        pooled = self.pool_proj(mask_pool(mask_features, mask_logits, self.threshold))
        out: torch.Tensor = self.mask_embed(pooled + decoder_output)
        return out


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Queries attend to one scale per layer, restricted to their current mask's foreground.

    ``forward`` takes 3 maps (B, hidden_dim, ·, ·) coarse→fine and mask features
    (B, mask_dim, H/4, W/4); returns mask logits (B, N, H/4, W/4) and embeddings (B, N, mask_dim).
    """

    num_feature_levels = 3

    def __init__(self, cfg: TransformerDecoderConfig, in_channels: int) -> None:
        super().__init__()
        if in_channels != cfg.hidden_dim:
            raise ValueError(
                f"pixel decoder width {in_channels} must equal hidden_dim {cfg.hidden_dim} "
                "(ODISE builds no input projection)"
            )
        self.cfg = cfg
        self.num_heads = cfg.num_heads
        self.num_layers = cfg.num_layers
        d = cfg.hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d, cfg.num_heads) for _ in range(cfg.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d, cfg.num_heads) for _ in range(cfg.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d, cfg.dim_feedforward) for _ in range(cfg.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.query_feat = nn.Embedding(cfg.num_queries, d)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.level_embed = nn.Embedding(self.num_feature_levels, d)
        self.mask_embed = MLP(d, d, cfg.mask_dim, 3)
        self.post_mask_embed = PooledMaskEmbed(cfg)

    def _predict(
        self, output: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # (B, Q, C)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoder_output), mask_features)
        attn = F.interpolate(mask_logits, size=target_size, mode="bilinear", align_corners=False)
        blocked = attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1)
        blocked = (blocked.flatten(0, 1) < 0.5).detach()
        return decoder_output, mask_logits, blocked

    def forward(
        self, x: list[torch.Tensor], mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature maps, got {len(x)}")
        src, pos, sizes = [], [], []
        for i, feat in enumerate(x):
            sizes.append((int(feat.shape[-2]), int(feat.shape[-1])))
            pe = sine_position_embedding(feat, feat.shape[1] // 2)
            pos.append(pe.flatten(2).permute(2, 0, 1))
            src.append(
                (feat.flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1)
            )
        bs = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)
        decoder_output, mask_logits, blocked = self._predict(output, mask_features, sizes[0])
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            # A query whose mask is empty at this scale would attend to nothing (NaN): let it
            # attend everywhere instead, as Mask2Former does.
            blocked[torch.where(blocked.sum(-1) == blocked.shape[-1])] = False
            output = self.transformer_cross_attention_layers[i](
                output, src[level], blocked, pos[level], query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)
            decoder_output, mask_logits, blocked = self._predict(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels]
            )
        embeddings = self.post_mask_embed(decoder_output, mask_features, mask_logits)
        return mask_logits, embeddings

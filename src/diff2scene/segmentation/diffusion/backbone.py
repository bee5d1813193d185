"""Frozen Stable Diffusion as a feature backbone, conditioned by ODISE's implicit captioner.

The image is encoded by the SD VAE, the latent goes once through the UNet at timestep 0 and
back through the VAE decoder; inputs of chosen VAE-encoder, UNet-decoder and VAE-decoder blocks
are collected with forward pre-hooks on the real ``diffusers`` modules. Instead of a text
caption, the UNet is conditioned on a CLIP image embedding mapped to the 77 text tokens (and to
the time embedding) through learned projections gated by ``tanh(α)`` — ODISE's "implicit
captioner". Features are grouped by stride (4/8/16/32), projected to ``projection_dim`` by one
ResNet bottleneck each, and summed per stride. Parameter names follow ODISE's
``LdmImplicitCaptionerExtractor`` / ``FeatureExtractorBackbone`` so the released head
checkpoint maps by a prefix rename.

Block indices are ODISE's flat indices: VAE encoder blocks in order (``layers_per_block`` per
level), UNet decoder blocks (``layers_per_block + 1`` per level, coarsest first) and VAE decoder
blocks (``layers_per_block + 1`` per level, coarsest first).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from diff2scene.segmentation.diffusion.pixel_decoder import ConvNorm

#: Maps a (B, 3, S, S) image in [0, 1] to its (B, D) CLIP image embedding.
ClipEmbedFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BackboneConfig:
    """Which diffusion features are taken and how (defaults: ODISE ``odise_label_coco_50e``)."""

    #: Side (px) of the square window the diffusion model sees (SD v1.x: 512).
    window_size_px: int = 512
    #: Step (px) between sliding windows; 0 = one window side (ODISE), the last one is clamped.
    window_stride_px: int = 0
    #: Images are zero-padded to a multiple of this (px) before windowing.
    size_divisibility: int = 64
    #: Flat indices of VAE-encoder blocks whose inputs are features.
    encoder_block_indices: tuple[int, ...] = (5, 7)
    #: Flat indices of UNet up-blocks (resnets) whose inputs are features.
    unet_block_indices: tuple[int, ...] = (2, 5, 8, 11)
    #: Flat indices of VAE-decoder blocks whose inputs are features.
    decoder_block_indices: tuple[int, ...] = (2, 5)
    #: Diffusion timestep of the UNet pass (ODISE: 0, i.e. almost no noise).
    timestep: int = 0
    #: Seed of the fixed noise added at ``timestep`` (ODISE: 42).
    noise_seed: int = 42
    #: First β of SD's "scaled linear" noise schedule.
    beta_start: float = 0.00085
    #: Last β of SD's noise schedule.
    beta_end: float = 0.012
    #: Length of SD's noise schedule.
    num_train_timesteps: int = 1000
    #: Channels every feature is projected to before summing per stride.
    projection_dim: int = 512
    #: Feature strides (px) are clamped to [min_stride_px, max_stride_px].
    min_stride_px: int = 4
    #: See ``min_stride_px``.
    max_stride_px: int = 32
    #: Also add a projected CLIP embedding to the UNet time embedding (ODISE: true).
    learnable_time_embed: bool = True
    #: Groups of every GroupNorm in the projections (detectron2's "GN" uses 32).
    norm_groups: int = 32


class PositionalLinear(nn.Module):
    """Linear map of one vector to ``seq_len`` tokens: (B, D_in) → (B, seq_len, D_out)."""

    def __init__(self, in_features: int, out_features: int, seq_len: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.positional_embedding = nn.Parameter(torch.zeros(1, seq_len, out_features))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x).unsqueeze(1) + self.positional_embedding
        return out


class ImplicitCaptioner(nn.Module):
    """CLIP image embedding → UNet text conditioning (and time-embedding offset).

    ``alpha_cond`` starts at zero so an untrained captioner conditions on the empty caption.
    """

    def __init__(
        self, clip_dim: int, text_tokens: int, text_dim: int, time_dim: int, *, time_embed: bool
    ) -> None:
        super().__init__()
        self.clip_project = PositionalLinear(clip_dim, text_dim, text_tokens)
        self.alpha_cond = nn.Parameter(torch.zeros(1, text_tokens, text_dim))
        self.time_embed_project: PositionalLinear | None = None
        self.alpha_cond_time_embed: nn.Parameter | None = None
        if time_embed:
            self.time_embed_project = PositionalLinear(clip_dim, time_dim, 1)
            self.alpha_cond_time_embed = nn.Parameter(torch.zeros(time_dim))

    def forward(
        self, clip_embed: torch.Tensor, uncond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``clip_embed`` (B, D_clip), ``uncond`` (1, T, D_text) → (B, T, D_text), (B, D_time)."""
        cond = uncond + torch.tanh(self.alpha_cond) * self.clip_project(clip_embed)
        if self.time_embed_project is None or self.alpha_cond_time_embed is None:
            return cond, None
        temb = torch.tanh(self.alpha_cond_time_embed) * self.time_embed_project(clip_embed)
        return cond, temb[:, 0]


class BottleneckBlock(nn.Module):
    """detectron2's ResNet bottleneck (1×1 → 3×3 → 1×1, GroupNorm, projection shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.shortcut: ConvNorm | None = (
            ConvNorm(in_channels, out_channels, 1, norm_groups=norm_groups)
            if in_channels != out_channels
            else None
        )
        self.conv1 = ConvNorm(in_channels, mid, 1, norm_groups=norm_groups, relu=True)
        self.conv2 = ConvNorm(mid, mid, 3, norm_groups=norm_groups, relu=True)
        self.conv3 = ConvNorm(mid, out_channels, 1, norm_groups=norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class _EarlyExit(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a hook once the last needed feature of a network has been captured."""


@dataclass(frozen=True)
class _Tap:
    network: str  # "encoder" | "unet" | "decoder"
    module: nn.Module
    channels: int
    stride_px: int


def _resnet(blocks: Any, flat_index: int, per_level: int, what: str) -> Any:
    level, j = divmod(flat_index, per_level)
    if level >= len(blocks) or j >= len(blocks[level].resnets):
        raise ValueError(f"{what} block index {flat_index} does not exist in this model")
    return blocks[level].resnets[j]


class DiffusionBackbone(nn.Module):
    """Image (B, 3, H, W) in [0, 1] → {stride_px: (B, projection_dim, H/stride, W/stride)}.

    ``unet`` and ``vae`` are frozen and kept out of :meth:`head_state_dict`; the captioner and the
    projections are the trainable part that ODISE's checkpoint holds.
    """

    def __init__(
        self,
        cfg: BackboneConfig,
        *,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        clip_dim: int,
        uncond_embedding: torch.Tensor,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # diffusers' type information does not describe the submodules used here.
        unet_any: Any = unet
        vae_any: Any = vae
        self.unet: Any = unet_any.eval().requires_grad_(False)
        self.vae: Any = vae_any.eval().requires_grad_(False)
        if uncond_embedding.ndim != 3 or uncond_embedding.shape[0] != 1:
            raise ValueError(
                f"uncond_embedding must be (1, T, D), got {tuple(uncond_embedding.shape)}"
            )
        self.uncond_embedding: torch.Tensor
        self.register_buffer("uncond_embedding", uncond_embedding.detach().clone())
        time_dim = int(self.unet.time_embedding.linear_2.out_features)
        self.captioner = ImplicitCaptioner(
            clip_dim,
            int(uncond_embedding.shape[1]),
            int(uncond_embedding.shape[2]),
            time_dim,
            time_embed=cfg.learnable_time_embed,
        )
        self.vae_factor = 2 ** (len(self.vae.encoder.down_blocks) - 1)
        if cfg.window_size_px % (self.vae_factor * 2 ** (len(self.unet.up_blocks) - 1)):
            raise ValueError(
                f"window_size_px {cfg.window_size_px} must be a multiple of the UNet's stride"
            )
        self.taps = self._make_taps()
        self.feature_projections = nn.ModuleList(
            nn.Sequential(BottleneckBlock(t.channels, cfg.projection_dim, cfg.norm_groups))
            for t in self.taps
        )
        groups: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(self.taps):
            groups[min(max(t.stride_px, cfg.min_stride_px), cfg.max_stride_px)].append(i)
        #: Output stride (px) → indices of the taps summed into it, finest first.
        self.stride_groups: dict[int, list[int]] = dict(sorted(groups.items()))
        self._captured: dict[int, torch.Tensor] = {}
        self._last_tap: dict[str, int] = {}
        self._temb_offset: torch.Tensor | None = None
        for i, t in enumerate(self.taps):
            self._last_tap[t.network] = i
            t.module.register_forward_pre_hook(self._make_hook(i, t.network))
        self.unet.time_embedding.register_forward_hook(self._add_time_offset)
        latent = cfg.window_size_px // self.vae_factor
        gen = torch.Generator().manual_seed(cfg.noise_seed)
        self.shared_noise: torch.Tensor
        self.register_buffer(
            "shared_noise",
            torch.randn(
                1, self.vae.config.latent_channels, latent, latent, generator=gen, device="cpu"
            ),
            persistent=False,
        )
        betas = torch.linspace(
            cfg.beta_start**0.5,
            cfg.beta_end**0.5,
            cfg.num_train_timesteps,
            dtype=torch.float64,
            device="cpu",
        ) ** 2
        self.alpha_bar = float(torch.cumprod(1.0 - betas, 0)[cfg.timestep])

    @property
    def out_strides(self) -> list[int]:
        return list(self.stride_groups)

    def _make_taps(self) -> list[_Tap]:
        cfg, vae, unet = self.cfg, self.vae, self.unet
        m: Any
        enc_per = len(vae.encoder.down_blocks[0].resnets)
        dec_per = len(vae.decoder.up_blocks[0].resnets)
        unet_per = len(unet.up_blocks[0].resnets)
        n_unet = len(unet.up_blocks)
        taps = []
        for idx in cfg.encoder_block_indices:
            m = _resnet(vae.encoder.down_blocks, idx, enc_per, "VAE encoder")
            taps.append(_Tap("encoder", m, int(m.in_channels), 2 ** (idx // enc_per)))
        for idx in cfg.unet_block_indices:
            m = _resnet(unet.up_blocks, idx, unet_per, "UNet")
            stride = self.vae_factor * 2 ** (n_unet - 1 - idx // unet_per)
            taps.append(_Tap("unet", m, int(m.in_channels), stride))
        for idx in cfg.decoder_block_indices:
            m = _resnet(vae.decoder.up_blocks, idx, dec_per, "VAE decoder")
            stride = self.vae_factor // 2 ** (idx // dec_per)
            taps.append(_Tap("decoder", m, int(m.in_channels), stride))
        return taps

    def _make_hook(self, index: int, network: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            self._captured[index] = args[0]
            # Everything after the last feature of the UNet and VAE decoder is never used:
            # stop there (the VAE decoder's full-resolution levels are its costliest part).
            if network != "encoder" and self._last_tap[network] == index:
                raise _EarlyExit

        return hook

    def _add_time_offset(
        self, _module: nn.Module, _args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if self._temb_offset is None:
            return None
        return output + self._temb_offset.to(output.dtype)

    @torch.no_grad()
    def raw_features(
        self, image: torch.Tensor, clip_embed: torch.Tensor
    ) -> list[torch.Tensor]:
        """Frozen features of a (B, 3, S, S) window in [0, 1], S = window size, in tap order."""
        self._captured = {}
        x = image * 2.0 - 1.0
        latent = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        cond, temb = self.captioner(clip_embed.to(latent.dtype), self.uncond_embedding)
        noise = self.shared_noise
        if noise.shape[-2:] != latent.shape[-2:]:
            noise = F.interpolate(
                noise, size=latent.shape[-2:], mode="bicubic", align_corners=False
            )
        noisy = self.alpha_bar**0.5 * latent + (1.0 - self.alpha_bar) ** 0.5 * noise
        t = torch.full(
            (latent.shape[0],), self.cfg.timestep, device=latent.device, dtype=torch.long
        )
        self._temb_offset = temb
        try:
            if "unet" in self._last_tap:
                self.unet(noisy, t, encoder_hidden_states=cond)
        except _EarlyExit:
            pass
        finally:
            self._temb_offset = None
        try:
            if "decoder" in self._last_tap:
                self.vae.decode(latent / self.vae.config.scaling_factor)
        except _EarlyExit:
            pass
        feats = [self._captured[i] for i in range(len(self.taps))]
        self._captured = {}
        return feats

    def window_forward(
        self, image: torch.Tensor, clip_embed_fn: ClipEmbedFn
    ) -> dict[int, torch.Tensor]:
        """Projected features of one square crop (B, 3, s, s), resized to the window size."""
        size = image.shape[-2:]
        win = self.cfg.window_size_px
        resized = image
        if tuple(size) != (win, win):
            resized = F.interpolate(image, size=(win, win), mode="bicubic", align_corners=False)
        feats = self.raw_features(resized, clip_embed_fn(resized))
        out: dict[int, torch.Tensor] = {}
        for stride, indices in self.stride_groups.items():
            total: torch.Tensor | None = None
            for i in indices:
                f = F.interpolate(feats[i], size=(size[0] // stride, size[1] // stride))
                p = self.feature_projections[i](f)
                total = p if total is None else total + p
            assert total is not None
            out[stride] = total
        return out

    def windows(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """Square crops (y, x, side) covering a padded H×W image, ODISE's slide_forward layout."""
        side = min(self.cfg.window_size_px, height, width)
        step = self.cfg.window_stride_px or side
        step = min(step, side)

        def starts(n: int) -> list[int]:
            count = max(n - side + step - 1, 0) // step + 1
            return sorted({max(min(i * step + side, n) - side, 0) for i in range(count)})

        return [(y, x, side) for y in starts(height) for x in starts(width)]

    def forward(
        self, image: torch.Tensor, clip_embed_fn: ClipEmbedFn
    ) -> dict[int, torch.Tensor]:
        """Sliding-window features of a padded image; overlapping windows are averaged."""
        b, _, h, w = image.shape
        wins = self.windows(h, w)
        out = {
            s: image.new_zeros(b, self.cfg.projection_dim, h // s, w // s)
            for s in self.stride_groups
        }
        count = {s: image.new_zeros(1, 1, h // s, w // s) for s in self.stride_groups}
        for y, x, side in wins:
            feats = self.window_forward(image[:, :, y : y + side, x : x + side], clip_embed_fn)
            for s, f in feats.items():
                ys, xs = y // s, x // s
                out[s][:, :, ys : ys + f.shape[-2], xs : xs + f.shape[-1]] += f
                count[s][:, :, ys : ys + f.shape[-2], xs : xs + f.shape[-1]] += 1
        return {s: out[s] / count[s].clamp(min=1) for s in out}

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (captioner, projections) plus the empty-caption embedding."""
        return {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith(("unet.", "vae."))
        }

"""MinkUNet18A (OpenScene's 3D backbone) with one output head per embedding space.

Layout (OpenScene's): a k=5 stem to ``init_dim`` channels, four stages each opened by a kernel-2
stride-2 convolution and made of BasicBlocks (planes[0:4]), then four kernel-2 stride-2
transposed convolutions (planes[4:8]) each followed by concatenation with the encoder tensor of
the same stride and BasicBlocks. Convolutions carry no bias (MinkowskiEngine's default), batch
norm follows each one. The heads are per-voxel linear maps from planes[7] to each space's width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from diff2scene.errors import ConfigError
from diff2scene.net3d.sparse import (
    BatchNorm,
    DownConv3d,
    Linear,
    ReLU,
    SparseTensor,
    SubMConv3d,
    UpConv3d,
    cat,
)
from diff2scene.types import SPACE_DIMS


@dataclass
class MinkUNetConfig:
    """Shape of the 3D network; the defaults are MinkUNet18A."""

    #: Input feature channels per voxel (RGB in [0, 1] shifted to [-0.5, 0.5] by default).
    in_channels: int = 3
    #: Channels of the stem convolution (MinkowskiEngine's INIT_DIM).
    init_dim: int = 32
    #: Kernel size of the stem convolution.
    stem_kernel: int = 5
    #: Output channels of the 4 encoder and 4 decoder stages.
    planes: tuple[int, ...] = (32, 64, 128, 256, 128, 128, 96, 96)
    #: BasicBlocks per stage (two per stage for the "18" variant).
    layers: tuple[int, ...] = (2, 2, 2, 2, 2, 2, 2, 2)
    #: Width of each output head, keyed by embedding space (see diff2scene.types.SPACE_DIMS).
    head_dims: dict[str, int] = field(default_factory=lambda: dict(SPACE_DIMS))
    #: Add a bias to the heads (OpenScene's final 1×1 convolution has none).
    head_bias: bool = False

    @classmethod
    def narrow(cls, head_dims: dict[str, int]) -> MinkUNetConfig:
        """MinkUNet18A's layout at 8-16 channels and one block per stage (~1/50 of the compute).

        For CPU-only demos and benchmarks: the full network takes about a minute per training
        step on a 2-core CPU (bench/results/net3d.md).
        """
        return cls(
            init_dim=8, stem_kernel=3, planes=(8, 16, 16, 16, 16, 16, 16, 16),
            layers=(1,) * 8, head_dims=dict(head_dims),
        )

    def __post_init__(self) -> None:
        if len(self.planes) != 8 or len(self.layers) != 8:
            raise ConfigError("planes and layers need 8 entries (4 down + 4 up stages)")
        if any(p <= 0 for p in self.planes) or any(n < 1 for n in self.layers):
            raise ConfigError("planes must be positive and every stage needs >= 1 block")
        if self.stem_kernel % 2 != 1 or self.stem_kernel < 1:
            raise ConfigError(f"stem_kernel must be odd, got {self.stem_kernel}")
        if not self.head_dims or any(d <= 0 for d in self.head_dims.values()):
            raise ConfigError("head_dims needs at least one space with a positive width")


class BasicBlock(nn.Module):
    """Two 3³ submanifold convolutions with a residual (1×1 projection when widths differ)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(in_channels, channels, 3)
        self.norm1 = BatchNorm(channels)
        self.conv2 = SubMConv3d(channels, channels, 3)
        self.norm2 = BatchNorm(channels)
        self.relu = ReLU()
        self.downsample: nn.Sequential | None = None
        if in_channels != channels:
            self.downsample = nn.Sequential(
                SubMConv3d(in_channels, channels, 1), BatchNorm(channels)
            )

    def forward(self, x: SparseTensor) -> SparseTensor:
        out: SparseTensor = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual: SparseTensor = self.downsample(x) if self.downsample is not None else x
        return out.replace_feats(torch.relu(out.feats + residual.feats))


def _stage(in_channels: int, channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(
        *(BasicBlock(in_channels if i == 0 else channels, channels) for i in range(blocks))
    )


class MinkUNet(nn.Module):
    """Sparse U-Net: (M, in_channels) voxel features → per-space (M, D) features.

    Outputs are on the input voxels in input order, whatever the backend.
    """

    def __init__(self, config: MinkUNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MinkUNetConfig()
        p, n = cfg.planes, cfg.layers
        self.relu = ReLU()
        self.stem = SubMConv3d(cfg.in_channels, cfg.init_dim, cfg.stem_kernel)
        self.stem_norm = BatchNorm(cfg.init_dim)
        self.downs = nn.ModuleList()
        self.down_norms = nn.ModuleList()
        self.encoders = nn.ModuleList()
        width = cfg.init_dim
        skip_widths = [width]
        for i in range(4):
            self.downs.append(DownConv3d(width, width))
            self.down_norms.append(BatchNorm(width))
            self.encoders.append(_stage(width, p[i], n[i]))
            width = p[i]
            skip_widths.append(width)
        self.ups = nn.ModuleList()
        self.up_norms = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for j in range(4):
            self.ups.append(UpConv3d(width, p[4 + j]))
            self.up_norms.append(BatchNorm(p[4 + j]))
            self.decoders.append(_stage(p[4 + j] + skip_widths[3 - j], p[4 + j], n[4 + j]))
            width = p[4 + j]
        self.heads = nn.ModuleDict(
            {space: Linear(width, dim, bias=cfg.head_bias) for space, dim in cfg.head_dims.items()}
        )

    def backbone(self, x: SparseTensor) -> SparseTensor:
        """(M, planes[7]) features on the input voxels."""
        out = self.relu(self.stem_norm(self.stem(x)))
        skips = [out]
        for down, norm, enc in zip(self.downs, self.down_norms, self.encoders, strict=True):
            out = enc(self.relu(norm(down(out))))
            skips.append(out)
        skips.pop()  # the bottleneck output is not a skip
        for up, norm, dec in zip(self.ups, self.up_norms, self.decoders, strict=True):
            skip = skips.pop()
            out = self.relu(norm(up(out, skip)))
            out = dec(cat(out, skip))
        assert isinstance(out, SparseTensor)
        return out

    def forward(self, x: SparseTensor) -> dict[str, torch.Tensor]:
        """Per-space (M, D) features of the input voxels."""
        feats = self.backbone(x).feats
        return {space: head(feats) for space, head in self.heads.items()}


def count_parameters(module: nn.Module) -> int:
    """Trainable parameter count (batch-norm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def reference_param_count(
    *,
    in_channels: int = 3,
    out_channels: int = 768,
    init_dim: int = 32,
    planes: tuple[int, ...] = (32, 64, 128, 256, 128, 128, 96, 96),
    layers: tuple[int, ...] = (2, 2, 2, 2, 2, 2, 2, 2),
) -> int:
    """Parameters of OpenScene's MinkUNet18A, derived from the architecture by hand.

    MinkowskiEngine convolutions have no bias (``k³·C_in·C_out`` weights each, the final 1×1
    included), batch norms have a weight and a bias per channel. Kept independent of the
    module code above so the test comparing the two checks the implementation.
    """

    def conv(k: int, c_in: int, c_out: int) -> int:
        return k**3 * c_in * c_out

    def bn(c: int) -> int:
        return 2 * c

    def block(c_in: int, c: int) -> int:
        total = conv(3, c_in, c) + bn(c) + conv(3, c, c) + bn(c)
        return total + (conv(1, c_in, c) + bn(c) if c_in != c else 0)

    def stage(c_in: int, c: int, count: int) -> int:
        return block(c_in, c) + (count - 1) * block(c, c)

    total = conv(5, in_channels, init_dim) + bn(init_dim)
    width = init_dim
    skips = [init_dim]
    for i in range(4):
        total += conv(2, width, width) + bn(width) + stage(width, planes[i], layers[i])
        width = planes[i]
        skips.append(width)
    for j in range(4):
        c = planes[4 + j]
        total += conv(2, width, c) + bn(c) + stage(c + skips[3 - j], c, layers[4 + j])
        width = c
    return total + conv(1, width, out_channels)

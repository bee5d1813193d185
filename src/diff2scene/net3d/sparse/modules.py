"""Sparse layers with one weight layout and two execution backends.

Every convolution owns a (K, C_in, C_out) weight and dispatches on the backend named by the
input's :class:`SparseContext`, so one state dict serves training on the reference backend and
inference on spconv. Batch norm and ReLU act on the feature rows and are backend-independent.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from diff2scene.net3d.sparse import reference
from diff2scene.net3d.sparse.tensor import SparseTensor

if TYPE_CHECKING:
    from diff2scene.net3d.sparse.spconv_backend import SpconvOps


def _init_weight(weight: torch.Tensor) -> None:
    """Kaiming-normal over the fan-out (K · C_out), as MinkowskiEngine networks initialise."""
    fan_out = weight.shape[0] * weight.shape[2]
    nn.init.normal_(weight, 0.0, math.sqrt(2.0 / fan_out))


class _SparseConvBase(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_offsets: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        #: (K, C_in, C_out): the layout shared by both backends.
        self.weight = nn.Parameter(torch.empty(num_offsets, in_channels, out_channels))
        _init_weight(self.weight)
        self._spconv: SpconvOps | None = None

    def _check(self, x: SparseTensor) -> None:
        if x.channels != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected {self.in_channels} channels, got {x.channels}"
            )

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, offsets={self.weight.shape[0]}"


class SubMConv3d(_SparseConvBase):
    """Submanifold convolution: outputs live on the input's voxels (no dilation of the set)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size**3)
        self.kernel_size = kernel_size

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check(x)
        if self.kernel_size == 1:
            # A 1×1×1 kernel is a plain matmul on the rows for either backend.
            return x.replace_feats(x.feats @ self.weight[0])
        ctx = x.context
        if ctx.backend == "spconv":
            if self._spconv is None:
                from diff2scene.net3d.sparse.spconv_backend import SpconvOps

                self._spconv = SpconvOps(
                    "subm",
                    self.in_channels,
                    self.out_channels,
                    self.kernel_size,
                    f"subm_s{x.stride}_k{self.kernel_size}",
                )
            _, native = self._spconv(x, self.weight, x.stride)
            return SparseTensor(x.coords, native.features, x.stride, ctx, native)
        map_key = ("subm", x.stride, self.kernel_size)
        kmap = ctx.maps.get(map_key)
        if kmap is None:
            kmap = reference.submanifold_map(x.coords, self.kernel_size)
            ctx.maps[map_key] = kmap
        return x.replace_feats(reference.apply_kernel_map(x.feats, self.weight, kmap))


class DownConv3d(_SparseConvBase):
    """Kernel-2 stride-2 convolution: voxel ``c`` feeds ``floor(c / 2)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 8)

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check(x)
        ctx = x.context
        out_stride = x.stride * 2
        if out_stride > ctx.max_stride:
            raise ValueError(
                f"stride {out_stride} exceeds the context's max_stride {ctx.max_stride}"
            )
        if ctx.backend == "spconv":
            if self._spconv is None:
                from diff2scene.net3d.sparse.spconv_backend import SpconvOps

                self._spconv = SpconvOps(
                    "down", self.in_channels, self.out_channels, 2, f"down_s{x.stride}"
                )
            coords, native = self._spconv(x, self.weight, out_stride)
            return SparseTensor(coords, native.features, out_stride, ctx, native)
        cached = ctx.maps.get(("down", x.stride))
        if cached is None:
            cached = reference.downsample_map(x.coords)
            ctx.maps[("down", x.stride)] = cached
        kmap, coords = cached
        feats = reference.apply_kernel_map(x.feats, self.weight, kmap)
        return SparseTensor(coords, feats, out_stride, ctx)


class UpConv3d(_SparseConvBase):
    """Kernel-2 stride-2 transposed convolution back onto the skip tensor's voxels.

    The output has exactly ``skip``'s coordinates in ``skip``'s order (MinkowskiEngine's
    non-generative transposed convolution), so it can be concatenated with ``skip`` directly.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 8)

    def forward(self, x: SparseTensor, skip: SparseTensor) -> SparseTensor:
        self._check(x)
        if skip.stride * 2 != x.stride:
            raise ValueError(f"skip stride {skip.stride} is not half of {x.stride}")
        ctx = x.context
        if ctx.backend == "spconv":
            if self._spconv is None:
                from diff2scene.net3d.sparse.spconv_backend import SpconvOps

                key = f"down_s{skip.stride}"
                self._spconv = SpconvOps("up", self.in_channels, self.out_channels, 2, key)
            _, native = self._spconv(x, self.weight, skip.stride)
            return SparseTensor(skip.coords, native.features, skip.stride, ctx, native)
        cached = ctx.maps.get(("down", skip.stride))
        if cached is None:
            raise ValueError(f"no stride-{skip.stride} downsampling in this context to invert")
        down_map, coarse_coords = cached
        if coarse_coords.shape[0] != x.num_voxels:
            raise ValueError("input is not the tensor produced by the matching DownConv3d")
        kmap = down_map.transposed(skip.num_voxels)
        feats = reference.apply_kernel_map(x.feats, self.weight, kmap)
        return SparseTensor(skip.coords, feats, skip.stride, ctx)


class Linear(nn.Module):
    """Per-voxel linear map (a 1×1×1 convolution), with the same (1, C_in, C_out) layout."""

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, in_channels, out_channels))
        _init_weight(self.weight)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(M, C_in) → (M, C_out)."""
        out = feats @ self.weight[0]
        return out + self.bias if self.bias is not None else out


class BatchNorm(nn.Module):
    """Batch norm over the voxel rows (all voxels of the batch are one population)."""

    def __init__(self, channels: int, *, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.training and x.num_voxels < 2:
            # One voxel at a coarse stride (a tiny scene) has no batch statistics; normalise it
            # with the running ones instead of failing the whole step.
            bn = self.bn
            feats = nn.functional.batch_norm(
                x.feats, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
            return x.replace_feats(feats)
        return x.replace_feats(self.bn(x.feats))


class ReLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feats(torch.relu(x.feats))


def cat(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Channel concatenation of two tensors on the same voxels in the same order."""
    if a.num_voxels != b.num_voxels or a.stride != b.stride:
        raise ValueError("cat needs tensors on the same voxels")
    return a.replace_feats(torch.cat([a.feats, b.feats], dim=1))

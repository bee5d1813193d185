"""The spconv backend: the same layers, executed by spconv's gather-GEMM kernels.

Weights stay in the reference layout (K, C_in, C_out) and are viewed as spconv's
(C_out, kx, ky, kz, C_in) at call time (spconv 2.3.8's default layout, checked empirically: a
weight at kernel index (a, b, c) reads the input at ``p + (a, b, c) − r`` for submanifold
kernels, ``2p + (a, b, c)`` for stride-2 kernels, and writes ``2p + (a, b, c)`` for the inverse
convolution — the reference backend's conventions). Autograd flows through the view, so the
same module trains on CUDA; on CPU spconv's backward calls into CUDA and fails, which is why
backend selection never picks it for CPU training.

spconv 2.3.8's CPU kernels are not safe under PyTorch intra-op parallelism: with 2 threads the
same submanifold convolution gives different, wrong sums from run to run once a few voxels
share neighbours (measured here against dense ``conv3d``; with 1 thread it is exact; reported
upstream as traveller59/spconv#679, "SubMConv3d output varies with the same input"). CPU calls
therefore run with one PyTorch thread, restored afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch

from diff2scene.net3d.sparse.tensor import SparseContext, SparseTensor


def available() -> bool:
    """Whether spconv is importable (it is an optional dependency)."""
    return importlib.util.find_spec("spconv") is not None


def to_spconv_weight(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(K, C_in, C_out) → (C_out, k, k, k, C_in)."""
    k = kernel_size
    c_in, c_out = weight.shape[1], weight.shape[2]
    return weight.reshape(k, k, k, c_in, c_out).permute(4, 0, 1, 2, 3).contiguous()


def wrap_input(coords: torch.Tensor, feats: torch.Tensor, ctx: SparseContext) -> Any:
    """spconv tensor of stride-1 voxels shifted to non-negative indices (see SparseContext)."""
    import spconv.pytorch as spconv_pt

    xyz = coords[:, 1:].to(torch.int64)
    s = ctx.max_stride
    origin = torch.div(xyz.min(dim=0).values, s, rounding_mode="floor") * s
    top = xyz.max(dim=0).values - origin + 1
    shape = (torch.div(top + s - 1, s, rounding_mode="floor") * s).tolist()
    ctx.origin = origin
    ctx.spatial_shape = [int(v) for v in shape]
    indices = torch.cat([coords[:, :1].to(torch.int64), xyz - origin], dim=1).to(torch.int32)
    return spconv_pt.SparseConvTensor(
        feats, indices.contiguous(), ctx.spatial_shape, ctx.batch_size
    )


def _coords_of(native: Any, ctx: SparseContext, stride: int) -> torch.Tensor:
    """(M, 4) int32 coordinates in the stride's grid, undoing the spconv shift."""
    assert ctx.origin is not None
    idx = native.indices.to(torch.int64)
    shift = torch.div(ctx.origin, stride, rounding_mode="floor").to(idx.device)
    return torch.cat([idx[:, :1], idx[:, 1:] + shift], dim=1).to(torch.int32)


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    previous = torch.get_num_threads()
    if device.type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SpconvOps:
    """spconv layer objects used only as executors (their own weights are never read)."""

    def __init__(self, kind: str, c_in: int, c_out: int, kernel_size: int, key: str) -> None:
        import spconv.pytorch as spconv_pt

        self.kind = kind
        self.kernel_size = kernel_size
        if kind == "subm":
            self.op = spconv_pt.SubMConv3d(c_in, c_out, kernel_size, bias=False, indice_key=key)
        elif kind == "down":
            self.op = spconv_pt.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key)
        elif kind == "up":
            self.op = spconv_pt.SparseInverseConv3d(c_in, c_out, 2, indice_key=key, bias=False)
        else:
            raise ValueError(kind)
        # The executor's own parameters would double the model's memory; they are never used.
        self.op.weight = torch.nn.Parameter(torch.empty(0))

    def __call__(
        self, x: SparseTensor, weight: torch.Tensor, out_stride: int
    ) -> tuple[torch.Tensor, Any]:
        """(coords (M', 4) int32, native output) of this layer applied to ``x``."""
        w = to_spconv_weight(weight, self.kernel_size)
        with _single_thread_on_cpu(w.device):
            out = self.op._conv_forward(self.op.training, x.native, w, None)
        return _coords_of(out, x.context, out_stride), out

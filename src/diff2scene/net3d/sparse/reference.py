"""Pure-PyTorch sparse convolution: sort-based kernel maps and gather–matmul–scatter.

It runs anywhere PyTorch does and has a hand-written backward, which is why training on CPU
uses it (spconv's CPU backward calls into CUDA). A *kernel map* lists, for each kernel offset
``k``, the pairs (input row, output row) it connects; a convolution is then
``out[o] += in[i] @ W[k]`` over all pairs. Weights are (K, C_in, C_out) with K = k³ offsets in
``itertools.product(range(-r, r + 1), repeat=3)`` order for submanifold kernels (the order of
``conv3d``'s (kx, ky, kz) weight axes) and ``(dx, dy, dz) ∈ {0, 1}³`` in the same order for the
stride-2 kernels, ``dx`` being the child's position inside its parent voxel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from diff2scene.net3d.sparse.tensor import key_frame, linear_keys


@dataclass(frozen=True)
class KernelMap:
    """Pairs (``in_idx[p]`` → ``out_idx[p]``) grouped by kernel offset.

    ``bounds`` (K + 1 ints) delimits the pairs of offset ``k``: ``bounds[k]:bounds[k + 1]``.
    """

    in_idx: torch.Tensor  # (P,) int64
    out_idx: torch.Tensor  # (P,) int64
    bounds: tuple[int, ...]
    num_out: int
    #: Offset whose pairs are exactly (i → i) for every row (a submanifold kernel's centre),
    #: run as a plain matmul without gather or scatter; -1 if none.
    identity_offset: int = -1
    _table: list[torch.Tensor] = field(default_factory=list, compare=False, repr=False)

    def transposed(self, num_out: int) -> KernelMap:
        """The same pairs read the other way (used by the transposed convolution)."""
        return KernelMap(self.out_idx, self.in_idx, self.bounds, num_out, self.identity_offset)

    def table(self, num_in: int) -> torch.Tensor:
        """(num_out, K) int64 input row feeding each output per offset, ``num_in`` if none.

        Every map here has at most one input per (output, offset) (submanifold neighbours,
        children of a parent, the parent of a child), so the table is well defined.
        """
        if not self._table:
            k = len(self.bounds) - 1
            table = torch.full((self.num_out, k), num_in, dtype=torch.int64)
            counts = torch.tensor(
                [b - a for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True)]
            )
            kidx = torch.repeat_interleave(torch.arange(k), counts).to(self.out_idx.device)
            table = table.to(self.out_idx.device)
            table[self.out_idx, kidx] = self.in_idx
            self._table.append(table)
        return self._table[0]


def cube_offsets(kernel_size: int) -> torch.Tensor:
    """(k³, 3) int64 offsets of an odd kernel, first axis slowest."""
    r = kernel_size // 2
    rng = range(-r, r + 1)
    return torch.tensor(list(itertools.product(rng, rng, rng)), dtype=torch.int64)


#: Coordinate boxes up to this many cells find neighbours through a dense int32 lookup volume
#: (at most 64 MiB, one gather per offset); larger ones through a sorted-key binary search.
DENSE_LOOKUP_MAX_CELLS = 1 << 24


def submanifold_map(coords: torch.Tensor, kernel_size: int) -> KernelMap:
    """Kernel map of a submanifold convolution: outputs are the inputs' own voxels.

    ``coords`` is (M, 4) ``[b, x, y, z]``. Keys are linear in the coordinates, so a neighbour's
    key is the voxel's key plus a constant per offset; it is looked up in a dense volume of row
    numbers when the box is small (a room at 2 cm: a few million cells), else by
    ``searchsorted`` in the sorted keys.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"submanifold kernels must be odd, got {kernel_size}")
    c64 = coords.to(torch.int64)
    r = kernel_size // 2
    lo, extent = key_frame(c64, pad=r)
    keys = linear_keys(c64, lo, extent)
    m = keys.numel()
    rows = torch.arange(m, dtype=torch.int64, device=coords.device)
    cells = (int(c64[:, 0].max()) + 1) * int(extent.prod())
    volume: torch.Tensor | None = None
    sorted_keys = order = None
    if cells <= DENSE_LOOKUP_MAX_CELLS:
        volume = torch.full((cells,), -1, dtype=torch.int32, device=coords.device)
        volume[keys] = rows.to(torch.int32)
    else:
        sorted_keys, order = torch.sort(keys)
    strides = torch.stack([extent[1] * extent[2], extent[2], torch.ones_like(extent[2])])
    deltas = (cube_offsets(kernel_size).to(coords.device) * strides).sum(dim=1)
    in_parts: list[torch.Tensor] = []
    out_parts: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    # Several offsets per vectorised step, bounded to ~8M queries (64 MiB of int64 keys).
    group = max(1, (1 << 23) // max(m, 1))
    for start in range(0, deltas.numel(), group):
        query = keys[None, :] + deltas[start : start + group, None]  # (G, M)
        if volume is not None:
            hit = volume[query]
            found = hit >= 0
            in_parts.append(hit[found].to(torch.int64))
        else:
            assert sorted_keys is not None and order is not None
            pos = torch.searchsorted(sorted_keys, query.reshape(-1)).clamp_(max=m - 1)
            pos = pos.reshape(query.shape)
            found = sorted_keys[pos] == query
            in_parts.append(order[pos[found]])
        out_parts.append(rows.expand(query.shape[0], m)[found])
        counts.append(found.sum(dim=1))
    bounds = tuple(itertools.accumulate([0, *torch.cat(counts).tolist()]))
    centre = deltas.numel() // 2  # offset (0, 0, 0): every voxel is its own neighbour
    return KernelMap(torch.cat(in_parts), torch.cat(out_parts), bounds, m, centre)


def downsample_map(coords: torch.Tensor) -> tuple[KernelMap, torch.Tensor]:
    """Kernel map of a kernel-2 stride-2 convolution and the (M', 4) int32 output coordinates.

    Each input voxel ``c`` feeds exactly one output ``floor(c / 2)`` through the offset
    ``c − 2·floor(c / 2)``; outputs are sorted by key (spconv orders them differently, which is
    why the network's outputs are compared on the stride-1 voxels, where both agree).
    """
    c64 = coords.to(torch.int64)
    parent = c64.clone()
    parent[:, 1:] = torch.div(c64[:, 1:], 2, rounding_mode="floor")
    child = c64[:, 1:] - 2 * parent[:, 1:]
    kidx = child[:, 0] * 4 + child[:, 1] * 2 + child[:, 2]
    lo, extent = key_frame(parent, pad=0)
    pkeys = linear_keys(parent, lo, extent)
    _, inverse = torch.unique(pkeys, return_inverse=True)
    num_out = int(inverse.max()) + 1
    out_coords = torch.empty((num_out, 4), dtype=torch.int64, device=coords.device)
    out_coords[inverse] = parent
    order = torch.argsort(kidx, stable=True)
    counts = torch.bincount(kidx, minlength=8).tolist()
    bounds = tuple(itertools.accumulate([0, *counts]))
    rows = torch.arange(c64.shape[0], dtype=torch.int64, device=coords.device)
    kmap = KernelMap(rows[order], inverse[order], bounds, num_out)
    return kmap, out_coords.to(torch.int32)


#: Below this many gathered elements (outputs × K × C_in) a convolution runs as one
#: gather + one matmul (im2col), above it offset by offset. Small tensors are dominated by
#: per-operation overhead (27–125 offsets × 3 ops), large ones by the wasted multiplications
#: and memory of im2col on empty neighbours (about 2/3 of them on a surface).
IM2COL_MAX_ELEMENTS = 2_000_000


class _PairConv(torch.autograd.Function):
    """``out[o] = Σ_k Σ_(i→o in k) in[i] @ W[k]`` with a backward that re-gathers.

    Only the inputs, the weights and the index pairs are kept for backward (never the gathered
    copies), so training memory grows with voxels × channels, not with voxels × K × channels.
    """

    @staticmethod
    def forward(  # type: ignore[override]  # noqa: PLR0917
        ctx: Any,
        feats: torch.Tensor,
        weight: torch.Tensor,
        in_idx: torch.Tensor,
        out_idx: torch.Tensor,
        bounds: tuple[int, ...],
        num_out: int,
        table: torch.Tensor | None,
        identity: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(feats, weight, in_idx, out_idx)
        ctx.bounds = bounds
        ctx.table = table
        ctx.identity = identity
        if table is not None:
            padded = torch.cat([feats, feats.new_zeros((1, feats.shape[1]))])
            cols = padded[table].reshape(num_out, -1)
            return cols @ weight.reshape(-1, weight.shape[2])
        if identity >= 0:
            out = feats @ weight[identity]
        else:
            out = feats.new_zeros((num_out, weight.shape[2]))
        for k in range(weight.shape[0]):
            a, b = bounds[k], bounds[k + 1]
            if a == b or k == identity:
                continue
            out.index_add_(0, out_idx[a:b], feats[in_idx[a:b]] @ weight[k])
        return out

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_out,) = grads
        feats, weight, in_idx, out_idx = ctx.saved_tensors
        bounds: tuple[int, ...] = ctx.bounds
        need_feats, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_feats = torch.zeros_like(feats) if need_feats else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_out = grad_out.contiguous()
        table: torch.Tensor | None = ctx.table
        if table is not None:
            k_all, c_in, c_out = weight.shape
            padded = torch.cat([feats, feats.new_zeros((1, c_in))])
            if grad_weight is not None:
                cols = padded[table].reshape(table.shape[0], -1)
                grad_weight = (cols.transpose(0, 1) @ grad_out).reshape(k_all, c_in, c_out)
            if grad_feats is not None:
                gcols = grad_out @ weight.reshape(-1, c_out).transpose(0, 1)
                grad_padded = torch.zeros_like(padded)
                grad_padded.index_add_(0, table.reshape(-1), gcols.reshape(-1, c_in))
                grad_feats = grad_padded[:-1]
            return grad_feats, grad_weight, None, None, None, None, None, None
        identity: int = ctx.identity
        if identity >= 0:
            if grad_feats is not None:
                grad_feats += grad_out @ weight[identity].transpose(0, 1)
            if grad_weight is not None:
                grad_weight[identity] = feats.transpose(0, 1) @ grad_out
        for k in range(weight.shape[0]):
            a, b = bounds[k], bounds[k + 1]
            if a == b or k == identity:
                continue
            g = grad_out[out_idx[a:b]]
            if grad_feats is not None:
                grad_feats.index_add_(0, in_idx[a:b], g @ weight[k].transpose(0, 1))
            if grad_weight is not None:
                grad_weight[k] = feats[in_idx[a:b]].transpose(0, 1) @ g
        return grad_feats, grad_weight, None, None, None, None, None, None


def apply_kernel_map(
    feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, *, im2col: bool | None = None
) -> torch.Tensor:
    """Sparse convolution of (M_in, C_in) ``feats`` with (K, C_in, C_out) ``weight``.

    Returns (``kmap.num_out``, C_out). ``im2col`` forces one of the two equivalent execution
    paths (None: by size, see ``IM2COL_MAX_ELEMENTS``).
    """
    k = weight.shape[0]
    if k != len(kmap.bounds) - 1:
        raise ValueError(f"weight has {k} offsets, map has {len(kmap.bounds) - 1}")
    if im2col is None:
        im2col = kmap.num_out * k * max(weight.shape[1], weight.shape[2]) <= IM2COL_MAX_ELEMENTS
    table = kmap.table(feats.shape[0]) if im2col else None
    out: torch.Tensor = _PairConv.apply(
        feats,
        weight,
        kmap.in_idx,
        kmap.out_idx,
        kmap.bounds,
        kmap.num_out,
        table,
        kmap.identity_offset,
    )
    return out

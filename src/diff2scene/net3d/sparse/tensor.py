"""The sparse tensor record shared by both convolution backends.

A :class:`SparseTensor` is a set of occupied voxels with one feature row each. Coordinates are
kept *in the grid of the tensor's own stride* (``floor(input_coord / stride)``), the convention
spconv uses, so a stride-2 convolution maps voxel ``c`` to ``floor(c / 2)`` on both backends and
both produce the same coordinate sets.

All tensors of one forward pass share a :class:`SparseContext`: it names the backend and caches
what is derived from coordinates only (reference kernel maps, spconv index pairs), so the
stride-2 map built on the way down is reused by the transposed convolution on the way up.

This module knows no backend (both import it): input voxels are wrapped by
:func:`diff2scene.net3d.sparse.make_sparse_tensor`, which does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

#: Backend that actually executes a forward pass (``auto`` is resolved before this point).
Backend = Literal["reference", "spconv"]


@dataclass
class SparseContext:
    """State shared by every tensor of one forward pass.

    ``origin`` is the integer offset subtracted from stride-1 coordinates to make them
    non-negative for spconv; it is a multiple of ``max_stride`` so that ``floor`` division by
    any stride commutes with the shift.
    """

    backend: Backend
    batch_size: int
    #: Largest stride any layer reaches (16 for four stride-2 downs).
    max_stride: int = 16
    #: (3,) int64 stride-1 coordinate that maps to spconv index 0.
    origin: torch.Tensor | None = None
    #: (3,) spconv spatial shape at stride 1, a multiple of ``max_stride`` per axis.
    spatial_shape: list[int] | None = None
    #: Reference kernel maps keyed by ("subm", stride, kernel) / ("down", stride).
    maps: dict[tuple[Any, ...], Any] = field(default_factory=dict)


@dataclass
class SparseTensor:
    """Occupied voxels and their features at one stride.

    ``coords`` is (M, 4) int32 ``[batch, x, y, z]`` in this stride's grid; ``feats`` is (M, C).
    ``native`` is the spconv ``SparseConvTensor`` carrying the same voxels when the context's
    backend is spconv (its index-pair cache lives there), else None.
    """

    coords: torch.Tensor
    feats: torch.Tensor
    stride: int
    context: SparseContext
    native: Any = None

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    @property
    def channels(self) -> int:
        return int(self.feats.shape[1])

    def replace_feats(self, feats: torch.Tensor) -> SparseTensor:
        """Same voxels, new (M, C') features (keeps the spconv tensor in step)."""
        if feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"expected {self.coords.shape[0]} feature rows, got {feats.shape[0]}")
        native = self.native.replace_feature(feats) if self.native is not None else None
        return SparseTensor(self.coords, feats, self.stride, self.context, native)


def key_frame(coords: torch.Tensor, *, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower corner (3,) and extent (3,) of a box holding ``coords`` grown by ``pad`` voxels."""
    xyz = coords[:, 1:]
    lo = xyz.min(dim=0).values - pad
    extent = xyz.max(dim=0).values - lo + 1 + pad
    return lo, extent


def linear_keys(coords: torch.Tensor, lo: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """(M,) int64 keys, one per ``[b, x, y, z]`` row, unique inside the box ``lo``+``extent``.

    The key is linear in the coordinates, so shifting a voxel by an offset shifts its key by a
    constant: neighbour look-ups need one addition and one ``searchsorted`` per offset.
    """
    rel = coords[:, 1:] - lo
    ey, ez = extent[1], extent[2]
    return ((coords[:, 0] * extent[0] + rel[:, 0]) * ey + rel[:, 1]) * ez + rel[:, 2]

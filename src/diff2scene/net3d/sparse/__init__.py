"""Sparse 3D convolutions behind one module API, on a reference or an spconv backend.

Pick a backend with :func:`resolve_backend`, wrap voxels with :func:`make_sparse_tensor`, and
run any network built from :mod:`~diff2scene.net3d.sparse.modules`. Both functions live here,
above the backends: the tensor record (:mod:`~diff2scene.net3d.sparse.tensor`) knows no
backend, and each backend imports the record, never the other way round.
"""

from __future__ import annotations

from typing import Literal

import torch

from diff2scene.errors import ConfigError, InputError
from diff2scene.net3d.sparse import spconv_backend
from diff2scene.net3d.sparse.modules import (
    BatchNorm,
    DownConv3d,
    Linear,
    ReLU,
    SubMConv3d,
    UpConv3d,
    cat,
)
from diff2scene.net3d.sparse.tensor import (
    Backend,
    SparseContext,
    SparseTensor,
    key_frame,
    linear_keys,
)

#: What a config may ask for; ``auto`` is resolved per use by :func:`resolve_backend`.
BackendChoice = Literal["auto", "reference", "spconv"]


def make_sparse_tensor(
    coords: torch.Tensor,
    feats: torch.Tensor,
    *,
    backend: Backend,
    max_stride: int = 16,
) -> SparseTensor:
    """Wrap stride-1 voxels (M, 4) int32 ``[batch, x, y, z]`` and (M, C) features.

    Coordinates must be unique per batch item (one row per voxel); duplicates would be summed
    twice by the convolutions, so they are rejected here rather than silently mis-weighted.
    """
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise InputError("bad sparse coordinates", f"expected (M, 4), got {tuple(coords.shape)}")
    if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
        raise InputError(
            "bad sparse features", f"expected ({coords.shape[0]}, C), got {tuple(feats.shape)}"
        )
    if coords.shape[0] == 0:
        raise InputError("empty sparse tensor", "at least one voxel is needed")
    coords = coords.to(torch.int32)
    if int(coords[:, 0].min()) < 0:
        raise InputError("bad sparse coordinates", "batch indices must be >= 0")
    batch_size = int(coords[:, 0].max()) + 1
    keys = linear_keys(coords.to(torch.int64), *key_frame(coords.to(torch.int64), pad=0))
    if torch.unique(keys).numel() != keys.numel():
        raise InputError("duplicate voxels", "each (batch, x, y, z) may appear only once")
    ctx = SparseContext(backend=backend, batch_size=batch_size, max_stride=max_stride)
    native = spconv_backend.wrap_input(coords, feats, ctx) if backend == "spconv" else None
    return SparseTensor(coords, feats, 1, ctx, native)


def resolve_backend(choice: str, *, training: bool, device: torch.device) -> Backend:
    """The backend to run, given what was asked for and what the run needs.

    ``auto`` takes spconv on CUDA and the reference backend on CPU: spconv cannot train on CPU,
    and its CPU kernels must run on one thread (they race with more), which made them slower
    than the reference backend at inference too (200k voxels on a quiet 2-core CPU: 6.4 s vs
    5.1 s, ``bench/results/net3d.json``).
    """
    if choice not in ("auto", "reference", "spconv"):
        raise ConfigError(f"unknown sparse backend {choice!r}; use auto, reference or spconv")
    spconv_ok = spconv_backend.available()
    spconv_trains = device.type == "cuda"
    if choice == "reference":
        return "reference"
    if choice == "spconv":
        if not spconv_ok:
            raise ConfigError("sparse backend 'spconv' requested but spconv is not installed")
        if training and not spconv_trains:
            raise ConfigError(
                "spconv cannot train on CPU (its backward calls CUDA); use 'reference' or 'auto'"
            )
        return "spconv"
    return "spconv" if spconv_ok and device.type == "cuda" else "reference"


__all__ = [
    "Backend",
    "BackendChoice",
    "BatchNorm",
    "DownConv3d",
    "Linear",
    "ReLU",
    "SparseContext",
    "SparseTensor",
    "SubMConv3d",
    "UpConv3d",
    "cat",
    "make_sparse_tensor",
    "resolve_backend",
]

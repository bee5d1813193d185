"""Sparse 3D convolutions behind one module API, on a reference or an spconv backend.

Pick a backend with :func:`resolve_backend`, wrap voxels with :func:`make_sparse_tensor`, and
run any network built from :mod:`~diff2scene.net3d.sparse.modules`.
"""

from __future__ import annotations

from typing import Literal

import torch

from diff2scene.errors import ConfigError
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
from diff2scene.net3d.sparse.tensor import Backend, SparseContext, SparseTensor, make_sparse_tensor

#: What a config may ask for; ``auto`` is resolved per use by :func:`resolve_backend`.
BackendChoice = Literal["auto", "reference", "spconv"]


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

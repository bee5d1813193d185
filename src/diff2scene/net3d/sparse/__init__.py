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

    ``auto`` takes spconv wherever it works (inference anywhere, training on CUDA: it is the
    faster one, see ``bench/net3d.py``) and the reference backend otherwise (CPU training, or
    spconv not installed).
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
    if spconv_ok and (not training or spconv_trains):
        return "spconv"
    return "reference"


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

"""Per-voxel 3D features of a growing map, whole or in changed blocks, stored in fp16.

:class:`Net3D` keeps one (M, D) float16 array per embedding space, row ``i`` for the map's
voxel ``i`` (the mapper's voxel numbering is append-only, so rows stay valid as the map grows).
:meth:`Net3D.update` recomputes either the whole map or only the blocks that changed, run
with a margin of surrounding voxels as context. The margin is a whole number of blocks and
blocks are a multiple of the network's largest stride (16 voxels), so every voxel in the crop
meets the same stride-2 grouping as in a whole-map pass; features of voxels whose receptive
field reaches beyond the margin can still differ slightly from a whole-map pass, which is why a
map that changed a lot is simply recomputed in full.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from diff2scene.config import from_dict
from diff2scene.errors import ConfigError, InputError
from diff2scene.net3d.checkpoint import load_checkpoint
from diff2scene.net3d.data import colors_to_features
from diff2scene.net3d.loss import predicted_masks
from diff2scene.net3d.model import MinkUNet, MinkUNetConfig
from diff2scene.net3d.sparse import make_sparse_tensor, resolve_backend

_LOG = logging.getLogger(__name__)
_MAX_STRIDE = 16


@dataclass
class Net3DConfig:
    """How the 3D network is run over the map."""

    #: Checkpoint with the trained network (training or weights-only); None = untrained.
    checkpoint: Path | None = None
    #: Sparse backend: auto (spconv on CUDA, reference on CPU), reference or spconv.
    backend: str = "auto"
    #: Torch device ("cpu", "cuda", ...).
    device: str = "cpu"
    #: Edge of an update block, in voxels (a multiple of 16, the network's largest stride).
    block_voxels: int = 32
    #: Blocks of context around changed blocks fed to the network (their features are kept).
    context_blocks: int = 1
    #: If more than this fraction of the map's voxels would be recomputed, run the whole map.
    full_rerun_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.block_voxels < _MAX_STRIDE or self.block_voxels % _MAX_STRIDE:
            raise ConfigError(f"block_voxels must be a positive multiple of {_MAX_STRIDE}")
        if self.context_blocks < 0 or not 0.0 < self.full_rerun_fraction <= 1.0:
            raise ConfigError("context_blocks >= 0 and 0 < full_rerun_fraction <= 1")


class Net3D:
    """Runs the 3D network over a map and keeps its per-voxel features (fp16)."""

    def __init__(self, model: MinkUNet, config: Net3DConfig | None = None) -> None:
        self.config = config or Net3DConfig()
        self.device = torch.device(self.config.device)
        self.backend = resolve_backend(self.config.backend, training=False, device=self.device)
        self.model = model.to(self.device).eval()
        self.features: dict[str, NDArray[np.float16]] = {
            space: np.zeros((0, dim), np.float16) for space, dim in model.config.head_dims.items()
        }
        #: Voxels computed by the last :meth:`update` and whether it was a whole-map pass.
        self.last_update_size = 0
        self.last_update_full = False

    @classmethod
    def from_config(cls, config: Net3DConfig) -> Net3D:
        """Build the network described by ``config.checkpoint`` (or a default untrained one)."""
        if config.checkpoint is None:
            return cls(MinkUNet(), config)
        ckpt = load_checkpoint(config.checkpoint)
        model_cfg = from_dict(MinkUNetConfig, ckpt.config.get("model", {}), where="checkpoint")
        model = MinkUNet(model_cfg)
        model.load_state_dict(ckpt.model_state)
        return cls(model, config)

    @property
    def num_voxels(self) -> int:
        return int(next(iter(self.features.values())).shape[0])

    @property
    def bytes_per_voxel(self) -> int:
        """Feature memory per voxel: 2 bytes × the sum of the spaces' widths."""
        return sum(2 * f.shape[1] for f in self.features.values())

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.features.values())

    def infer(
        self, coords: NDArray[np.int32], colors: NDArray[np.uint8]
    ) -> dict[str, NDArray[np.float16]]:
        """Per-space (M, D) float16 features of the voxels (M, 3) int32 with colours (M, 3)."""
        if coords.ndim != 2 or coords.shape[1] != 3 or colors.shape != coords.shape:
            raise InputError("bad voxels", f"coords {coords.shape}, colors {colors.shape}")
        if coords.shape[0] == 0:
            return {s: np.zeros((0, f.shape[1]), np.float16) for s, f in self.features.items()}
        c = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.int32))
        batch = torch.cat([torch.zeros((c.shape[0], 1), dtype=torch.int32), c], dim=1)
        feats = colors_to_features(colors)
        with torch.inference_mode():
            x = make_sparse_tensor(
                batch.to(self.device), feats.to(self.device), backend=self.backend
            )
            out = self.model(x)
        return {s: v.to(torch.float16).cpu().numpy() for s, v in out.items()}

    def update(
        self,
        coords: NDArray[np.int32],
        colors: NDArray[np.uint8],
        *,
        changed: NDArray[np.int64] | None = None,
    ) -> NDArray[np.int64]:
        """Bring the features in step with the map; returns the (U,) voxel rows recomputed.

        ``coords``/``colors`` are the whole map (M, 3); ``changed`` lists voxels that are new or
        whose colour changed since the last call (None: everything). New rows are appended.
        """
        m = int(coords.shape[0])
        if m < self.num_voxels:
            raise InputError("map shrank", f"{m} voxels < {self.num_voxels} already computed")
        grow = m - self.num_voxels
        if grow:
            for space, f in self.features.items():
                self.features[space] = np.concatenate([f, np.zeros((grow, f.shape[1]), f.dtype)])
        if changed is None or self.num_voxels == 0:
            return self._run_full(coords, colors)
        changed = np.asarray(changed, dtype=np.int64)
        if changed.size == 0:
            self.last_update_size, self.last_update_full = 0, False
            return changed
        cfg = self.config
        blocks = np.floor_divide(coords, cfg.block_voxels)
        dirty = np.unique(blocks[changed], axis=0)
        r = cfg.context_blocks
        offsets = np.stack(
            np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij"), axis=-1
        ).reshape(-1, 3)
        context = np.unique((dirty[:, None, :] + offsets[None]).reshape(-1, 3), axis=0)
        in_context = _rows_in(blocks, context)
        if in_context.sum() > cfg.full_rerun_fraction * m:
            return self._run_full(coords, colors)
        crop = np.flatnonzero(in_context)
        out = self.infer(coords[crop], colors[crop])
        keep = _rows_in(blocks[crop], dirty)
        rows = crop[keep]
        for space, f in out.items():
            self.features[space][rows] = f[keep]
        self.last_update_size, self.last_update_full = int(rows.size), False
        return rows

    def _run_full(self, coords: NDArray[np.int32], colors: NDArray[np.uint8]) -> NDArray[np.int64]:
        out = self.infer(coords, colors)
        for space, f in out.items():
            self.features[space][:] = f
        self.last_update_size, self.last_update_full = int(coords.shape[0]), True
        return np.arange(coords.shape[0], dtype=np.int64)

    def masks(
        self, voxel_index: NDArray[np.int64], embeddings: NDArray[np.float32], *, space: str
    ) -> NDArray[np.float32]:
        """B'3d (N, V) = sigmoid(<F3d, f_i>) of N mask embeddings on the given voxels."""
        feats = torch.from_numpy(self.features[space][voxel_index].astype(np.float32))
        return predicted_masks(feats, torch.from_numpy(embeddings)).numpy()


class FeatureMap(Protocol):
    """What :func:`refresh_map_features` needs of a map (``SemanticMap`` has it)."""

    @property
    def coords(self) -> NDArray[np.int32]: ...

    @property
    def colors(self) -> NDArray[np.uint8]: ...

    @property
    def num_voxels(self) -> int: ...

    @property
    def features_3d(self) -> dict[str, NDArray[np.float16]]: ...

    @features_3d.setter
    def features_3d(self, value: dict[str, NDArray[np.float16]]) -> None: ...


def refresh_map_features(
    net: Net3D,
    semantic_map: FeatureMap,
    *,
    lock: AbstractContextManager[object] | None = None,
    full: bool = False,
) -> int:
    """Run the 3D network over ``semantic_map`` and store its per-voxel features in the map.

    The one way every tool (the online pipeline, the demo, the benchmarks) turns a map into
    ``features_3d``, so all of them see the same features. Only voxels the network has not
    seen yet are computed (the map's voxel numbering is append-only), unless ``full`` — then
    ``net`` forgets earlier features first, e.g. when it is reused for another map. The map's
    arrays are copied under ``lock`` and the network runs outside it, so writers go on
    meanwhile; voxels added during the run get zero features until the next call. Returns the
    number of voxels computed.
    """
    guard: AbstractContextManager[object] = lock if lock is not None else nullcontext()
    with guard:
        coords, colors = semantic_map.coords.copy(), semantic_map.colors.copy()
    if full:
        net.features = {s: f[:0] for s, f in net.features.items()}
    done = net.num_voxels
    if coords.shape[0] < done:
        raise InputError(
            "the 3D features belong to another map",
            f"map has {coords.shape[0]} voxels, features {done}; pass full=True",
        )
    net.update(coords, colors, changed=np.arange(done, coords.shape[0]))
    computed = net.last_update_size
    with guard:
        m = semantic_map.num_voxels  # >= coords.shape[0]: voxels are only ever appended
        features = {}
        for space, f in net.features.items():
            pad = np.zeros((m - f.shape[0], f.shape[1]), dtype=f.dtype)
            features[space] = np.concatenate([f, pad]) if pad.size else f.copy()
        semantic_map.features_3d = features
    return computed


def _rows_in(keys: NDArray[np.int64], table: NDArray[np.int64]) -> NDArray[np.bool_]:
    """(M,) bool: whether each (M, 3) row of ``keys`` is one of the (T, 3) rows of ``table``."""
    if table.size == 0:
        return np.zeros(keys.shape[0], dtype=bool)
    both = np.concatenate([table, keys]).astype(np.int64)
    lo = both.min(axis=0)
    ext = both.max(axis=0) - lo + 1

    def flat(a: NDArray[np.int64]) -> NDArray[np.int64]:
        rel = a.astype(np.int64) - lo
        key: NDArray[np.int64] = (rel[:, 0] * ext[1] + rel[:, 1]) * ext[2] + rel[:, 2]
        return key

    return np.isin(flat(keys), flat(table))

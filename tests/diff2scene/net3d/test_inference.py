"""Net3D: whole-map and changed-block inference, fp16 storage, loading trained weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diff2scene.config import to_dict
from diff2scene.errors import ConfigError, InputError
from diff2scene.net3d.checkpoint import Checkpoint, save_checkpoint
from diff2scene.net3d.inference import Net3D, Net3DConfig
from diff2scene.net3d.model import MinkUNet, MinkUNetConfig

SMALL = MinkUNetConfig(
    init_dim=4,
    stem_kernel=3,
    planes=(4, 8, 8, 8, 8, 8, 4, 4),
    layers=(1,) * 8,
    head_dims={"diffusion": 6, "clip": 10},
)


def _map(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = np.array([(x, y) for x in range(96) for y in range(40)])
    coords = np.concatenate([xy, rng.integers(0, 2, (len(xy), 1))], axis=1).astype(np.int32)
    colors = rng.integers(0, 255, (len(coords), 3)).astype(np.uint8)
    return coords, colors


def _net(**kw: object) -> Net3D:
    torch.manual_seed(0)
    return Net3D(MinkUNet(SMALL), Net3DConfig(backend="reference", **kw))  # type: ignore[arg-type]


def test_whole_map_features_are_fp16_per_voxel() -> None:
    coords, colors = _map()
    net = _net()
    rows = net.update(coords, colors)
    assert rows.size == len(coords) and net.last_update_full
    assert net.features["clip"].shape == (len(coords), 10)
    assert net.features["clip"].dtype == np.float16
    assert net.bytes_per_voxel == 2 * (6 + 10)
    assert np.isfinite(net.features["diffusion"].astype(np.float32)).all()


def test_changed_blocks_only_recompute_their_blocks() -> None:
    coords, colors = _map()
    net = _net(block_voxels=16, context_blocks=1, full_rerun_fraction=0.9)
    net.update(coords, colors)
    before = {k: v.copy() for k, v in net.features.items()}
    changed = np.flatnonzero((coords[:, 0] < 4) & (coords[:, 1] < 4))
    colors2 = colors.copy()
    colors2[changed] = 255 - colors2[changed]
    rows = net.update(coords, colors2, changed=changed)
    assert not net.last_update_full
    in_block = np.flatnonzero((coords[:, 0] < 16) & (coords[:, 1] < 16))
    assert np.array_equal(np.sort(rows), in_block)
    untouched = np.setdiff1d(np.arange(len(coords)), rows)
    assert np.array_equal(net.features["clip"][untouched], before["clip"][untouched])
    assert not np.array_equal(net.features["clip"][changed], before["clip"][changed])


def test_changed_blocks_with_full_context_equal_a_whole_map_pass() -> None:
    coords, colors = _map(1)
    net = _net(block_voxels=16, context_blocks=8, full_rerun_fraction=1.0)
    net.update(coords[:2000], colors[:2000])
    rows = net.update(coords, colors, changed=np.arange(2000, len(coords)))
    assert not net.last_update_full and rows.size < len(coords)
    full = _net().infer(coords, colors)
    np.testing.assert_allclose(
        net.features["clip"][rows].astype(np.float32),
        full["clip"][rows].astype(np.float32),
        rtol=2e-3,
        atol=2e-3,
    )


def test_loads_trained_weights_and_rejects_bad_input(tmp_path) -> None:
    model = MinkUNet(SMALL)
    path = save_checkpoint(
        tmp_path / "w.safetensors",
        Checkpoint(model.state_dict(), None, {"model": to_dict(SMALL)}, step=5),
    )
    net = Net3D.from_config(Net3DConfig(checkpoint=path, backend="reference"))
    coords, colors = _map()
    with torch.no_grad():
        expected = Net3D(model.eval(), Net3DConfig(backend="reference")).infer(coords, colors)
    np.testing.assert_array_equal(net.infer(coords, colors)["clip"], expected["clip"])
    with pytest.raises(InputError):
        net.infer(coords[:, :2], colors)
    net.update(coords, colors)
    with pytest.raises(InputError, match="shrank"):
        net.update(coords[:10], colors[:10], changed=np.arange(3))
    with pytest.raises(ConfigError):
        Net3DConfig(block_voxels=20)
    b = net.masks(np.arange(5), np.ones((2, 10), np.float32), space="clip")
    assert b.shape == (2, 5) and ((b > 0) & (b < 1)).all()


class _GrowingMap:
    """The arrays of a SemanticMap that refresh_map_features reads and writes."""

    def __init__(self, coords: np.ndarray, colors: np.ndarray) -> None:
        self.coords, self.colors = coords, colors
        self.features_3d: dict[str, np.ndarray] = {}

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])


def test_refresh_map_features_fills_the_map_and_computes_only_new_voxels() -> None:
    import threading

    from diff2scene.net3d.inference import refresh_map_features

    coords, colors = _map()
    half = len(coords) // 2
    smap = _GrowingMap(coords[:half], colors[:half])
    net = _net()
    lock = threading.Lock()
    assert refresh_map_features(net, smap, lock=lock) == half
    assert smap.features_3d["clip"].shape == (half, 10)
    smap.coords, smap.colors = coords, colors  # the map grew
    computed = refresh_map_features(net, smap, lock=lock)
    assert 0 < computed <= len(coords)
    assert smap.features_3d["diffusion"].shape == (len(coords), 6)
    # The same features as one pass over the finished map (new voxels never change old rows
    # beyond the block context, and here the growth is computed with context).
    whole = _net()
    fresh = _GrowingMap(coords, colors)
    assert refresh_map_features(whole, fresh) == len(coords)
    # Reusing a network on a smaller, different map needs full=True.
    small = _GrowingMap(coords[:10], colors[:10])
    with pytest.raises(InputError, match="another map"):
        refresh_map_features(whole, small)
    assert refresh_map_features(whole, small, full=True) == 10
    np.testing.assert_array_equal(
        small.features_3d["clip"], whole.infer(coords[:10], colors[:10])["clip"]
    )

"""Reference sparse convolutions against dense conv3d, gradcheck, and spconv agreement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diff2scene.errors import ConfigError, InputError
from diff2scene.net3d.model import MinkUNet, MinkUNetConfig
from diff2scene.net3d.sparse import (
    DownConv3d,
    SubMConv3d,
    UpConv3d,
    make_sparse_tensor,
    resolve_backend,
    spconv_backend,
)
from diff2scene.net3d.sparse.reference import apply_kernel_map, submanifold_map

needs_spconv = pytest.mark.skipif(not spconv_backend.available(), reason="spconv not installed")


def _random_voxels(n: int, extent: int, seed: int, batches: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batches):
        flat = torch.randperm(extent**3, generator=g)[:n]
        xyz = torch.stack([flat // extent**2, (flat // extent) % extent, flat % extent], dim=1)
        rows.append(torch.cat([torch.full((n, 1), b), xyz - extent // 2], dim=1))
    return torch.cat(rows).to(torch.int32)


def _dense(coords: torch.Tensor, feats: torch.Tensor, extent: int, lo: int) -> torch.Tensor:
    grid = torch.zeros(1, feats.shape[1], extent, extent, extent, dtype=feats.dtype)
    x, y, z = (coords[:, 1:] - lo).long().unbind(1)
    grid[0, :, x, y, z] = feats.T
    return grid


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submanifold_conv_equals_dense_conv3d_on_occupied_voxels(kernel_size: int) -> None:
    extent = 6
    coords = _random_voxels(80, extent, seed=kernel_size)
    feats = torch.randn(coords.shape[0], 4, dtype=torch.float64)
    conv = SubMConv3d(4, 5, kernel_size).double()
    out = conv(make_sparse_tensor(coords, feats, backend="reference"))
    lo = -(extent // 2)
    dense_w = (
        conv.weight.detach()
        .reshape(kernel_size, kernel_size, kernel_size, 4, 5)
        .permute(4, 3, 0, 1, 2)
    )
    dense = F.conv3d(_dense(coords, feats, extent, lo), dense_w, padding=kernel_size // 2)
    x, y, z = (coords[:, 1:] - lo).long().unbind(1)
    torch.testing.assert_close(out.feats, dense[0, :, x, y, z].T)


def test_im2col_and_offset_loop_paths_agree() -> None:
    coords = _random_voxels(300, 10, seed=9)
    feats = torch.randn(coords.shape[0], 4, dtype=torch.float64)
    weight = torch.randn(125, 4, 3, dtype=torch.float64)
    kmap = submanifold_map(coords, 5)
    torch.testing.assert_close(
        apply_kernel_map(feats, weight, kmap, im2col=True),
        apply_kernel_map(feats, weight, kmap, im2col=False),
    )


def test_kernel_map_lists_exactly_the_occupied_neighbours() -> None:
    coords = torch.tensor(
        [[0, 0, 0, 0], [0, 1, 0, 0], [0, 5, 5, 5], [1, 1, 0, 0]], dtype=torch.int32
    )
    kmap = submanifold_map(coords, 3)
    pairs = set(zip(kmap.in_idx.tolist(), kmap.out_idx.tolist(), strict=True))
    # Self pairs for all 4 voxels, plus the two batch-0 neighbours; batch 1 stays separate.
    assert pairs == {(0, 0), (1, 1), (2, 2), (3, 3), (1, 0), (0, 1)}


def test_strided_and_transposed_conv_equal_dense_counterparts() -> None:
    extent = 8
    coords = _random_voxels(120, extent, seed=3)
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64)
    x = make_sparse_tensor(coords, feats, backend="reference")
    down = DownConv3d(3, 4).double()
    up = UpConv3d(4, 2).double()
    coarse = down(x)
    lo = -(extent // 2)
    w_down = down.weight.detach().reshape(2, 2, 2, 3, 4).permute(4, 3, 0, 1, 2)
    dense = F.conv3d(_dense(coords, feats, extent, lo), w_down, stride=2)
    cx, cy, cz = (coarse.coords[:, 1:] - lo // 2).long().unbind(1)
    torch.testing.assert_close(coarse.feats, dense[0, :, cx, cy, cz].T)
    # Every occupied coarse voxel has an occupied child and vice versa.
    occupied = torch.zeros(extent // 2, extent // 2, extent // 2, dtype=torch.bool)
    fx, fy, fz = (torch.div(coords[:, 1:] - lo, 2, rounding_mode="floor")).long().unbind(1)
    occupied[fx, fy, fz] = True
    assert int(occupied.sum()) == coarse.num_voxels

    fine = up(coarse, x)
    assert torch.equal(fine.coords, x.coords)
    w_up = up.weight.detach().reshape(2, 2, 2, 4, 2).permute(3, 4, 0, 1, 2)
    dense_up = F.conv_transpose3d(
        _dense(coarse.coords, coarse.feats, extent // 2, lo // 2), w_up, stride=2
    )
    x_, y_, z_ = (coords[:, 1:] - lo).long().unbind(1)
    torch.testing.assert_close(fine.feats, dense_up[0, :, x_, y_, z_].T)


@pytest.mark.parametrize("im2col", [False, True])
def test_gradcheck_of_the_reference_kernels(im2col: bool) -> None:
    coords = _random_voxels(14, 3, seed=5)
    feats = torch.randn(coords.shape[0], 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(27, 2, 3, dtype=torch.float64, requires_grad=True)
    kmap = submanifold_map(coords, 3)
    assert torch.autograd.gradcheck(
        lambda f, w: apply_kernel_map(f, w, kmap, im2col=im2col), (feats, weight)
    )

    conv_down = DownConv3d(2, 2).double()
    conv_up = UpConv3d(2, 2).double()

    def down_up(f: torch.Tensor) -> torch.Tensor:
        x = make_sparse_tensor(coords, f, backend="reference")
        return conv_up(conv_down(x), x).feats

    assert torch.autograd.gradcheck(down_up, (feats,))


def test_bad_sparse_input_is_rejected() -> None:
    coords = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.int32)
    with pytest.raises(InputError, match="duplicate"):
        make_sparse_tensor(coords, torch.zeros(2, 3), backend="reference")
    with pytest.raises(InputError):
        make_sparse_tensor(coords[:, :3], torch.zeros(2, 3), backend="reference")


def test_backend_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_backend("auto", training=True, device=cpu) == "reference"
    assert resolve_backend("reference", training=False, device=cpu) == "reference"
    with pytest.raises(ConfigError):
        resolve_backend("dense", training=False, device=cpu)
    assert resolve_backend("auto", training=False, device=cpu) == "reference"
    if spconv_backend.available():
        assert resolve_backend("spconv", training=False, device=cpu) == "spconv"
        with pytest.raises(ConfigError, match="CPU"):
            resolve_backend("spconv", training=True, device=cpu)


def _tiny_config() -> MinkUNetConfig:
    return MinkUNetConfig(
        init_dim=8,
        planes=(8, 16, 16, 24, 16, 16, 8, 8),
        layers=(1,) * 8,
        head_dims={"a": 5, "b": 3},
    )


@needs_spconv
def test_spconv_and_reference_give_the_same_network_output() -> None:
    torch.manual_seed(0)
    net = MinkUNet(_tiny_config()).eval()
    # Random BN statistics so that inference normalisation is exercised, not the identity.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    coords = _random_voxels(1500, 14, seed=1, batches=2)  # dense enough to share neighbours
    coords[:, 1:] += torch.tensor([-37, 5, 101], dtype=torch.int32)  # odd, negative origin
    feats = torch.rand(coords.shape[0], 3) - 0.5
    # spconv's CPU kernels race under 2 PyTorch threads; the backend must guard against it.
    torch.set_num_threads(2)
    with torch.no_grad():
        ref = net(make_sparse_tensor(coords, feats, backend="reference"))
        sp = net(make_sparse_tensor(coords, feats, backend="spconv"))
    for space in ("a", "b"):
        torch.testing.assert_close(sp[space], ref[space], rtol=1e-4, atol=1e-5)


@needs_spconv
def test_spconv_downsampling_gives_the_reference_coordinates() -> None:
    coords = _random_voxels(1500, 16, seed=2, batches=2)
    coords[:, 1:] -= 3
    feats = torch.randn(coords.shape[0], 2)
    down = DownConv3d(2, 4)
    torch.set_num_threads(2)
    with torch.no_grad():
        ref = down(make_sparse_tensor(coords, feats, backend="reference"))
        sp = down(make_sparse_tensor(coords, feats, backend="spconv"))

    def rows(t: torch.Tensor) -> dict[tuple[int, ...], int]:
        return {tuple(c): i for i, c in enumerate(t.tolist())}

    ref_rows, sp_rows = rows(ref.coords), rows(sp.coords)
    assert set(ref_rows) == set(sp_rows)
    order = torch.tensor([sp_rows[c] for c in ref_rows])
    torch.testing.assert_close(sp.feats[order], ref.feats, rtol=1e-4, atol=1e-5)

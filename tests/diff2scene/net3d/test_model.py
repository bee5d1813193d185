"""MinkUNet18A structure: parameter count against the hand-derived reference, shapes, order."""

from __future__ import annotations

import pytest
import torch

from diff2scene.errors import ConfigError
from diff2scene.net3d.model import (
    MinkUNet,
    MinkUNetConfig,
    count_parameters,
    reference_param_count,
)
from diff2scene.net3d.sparse import make_sparse_tensor


def test_single_clip_head_matches_openscene_minkunet18a_parameter_count() -> None:
    net = MinkUNet(MinkUNetConfig(head_dims={"clip": 768}))
    assert count_parameters(net) == reference_param_count(out_channels=768)


def test_default_two_heads_add_exactly_the_diffusion_head() -> None:
    net = MinkUNet()
    assert count_parameters(net) == reference_param_count(out_channels=768) + 96 * 256


def test_outputs_are_per_input_voxel_per_space() -> None:
    cfg = MinkUNetConfig(
        init_dim=4, planes=(4, 8, 8, 8, 8, 8, 4, 4), layers=(1,) * 8, head_dims={"x": 6}
    )
    net = MinkUNet(cfg).eval()
    g = torch.Generator().manual_seed(0)
    xyz = torch.unique(torch.randint(-20, 20, (300, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.int64), xyz], 1).to(torch.int32)
    feats = torch.rand(len(coords), 3, generator=g)
    with torch.no_grad():
        out = net(make_sparse_tensor(coords, feats, backend="reference"))["x"]
        perm = torch.randperm(len(coords), generator=g)
        out_perm = net(make_sparse_tensor(coords[perm], feats[perm], backend="reference"))["x"]
    assert out.shape == (len(coords), 6)
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-4, atol=1e-5)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError):
        MinkUNetConfig(planes=(32, 64))
    with pytest.raises(ConfigError):
        MinkUNetConfig(stem_kernel=4)

"""map-info / map-render subcommands on a saved map."""

from __future__ import annotations

import argparse
import json

import numpy as np

from diff2scene.mapping import SemanticMap, SurfaceUpdate
from diff2scene.mapping.cli import register
from diff2scene.types import SPACE_CLIP, MaskSet


def run(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_info_and_render(tmp_path, capsys):
    rng = np.random.default_rng(0)
    smap = SemanticMap(0.05, members_per_voxel=2)
    coords = rng.integers(0, 40, size=(500, 3)).astype(np.int32)
    coords = np.unique(coords, axis=0)
    smap.apply_surface_update(
        SurfaceUpdate.appending(0.05, coords,
                                rng.integers(0, 256, (len(coords), 3)).astype(np.uint8))
    )
    smap.mask_bank.append(
        MaskSet(masks=np.ones((1, 2, 2), np.float32),
                embeddings={SPACE_CLIP: np.ones((1, 4), np.float32)}),
        keyframe_id=0,
    )
    ids = smap.member_ids.copy()
    ids[:10, 0] = 0
    smap.member_ids = ids
    smap.metadata = {"source": "test"}
    path = smap.save(tmp_path / "map.npz")
    assert run(["map-info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["voxels"] == len(coords)
    assert info["voxels_with_masks"] == 10
    assert info["metadata"] == {"source": "test"}
    assert info["masks"] == 1 and info["embedding_spaces"] == {SPACE_CLIP: 4}
    for mode in ("rgb", "mask"):
        png = tmp_path / f"{mode}.png"
        assert run(["map-render", str(path), str(png), "--color-by", mode, "--max-z-m", "1.0"]) == 0
        assert png.stat().st_size > 1000

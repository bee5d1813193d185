"""A small ``diff2scene synth --floor`` bag maps: the frames of the whole tour, rooms,
doorways and corridors, pass the mapper's pose-jump checks and are integrated.

The bag is read back through the bag frame source and fused by the pipeline with its default
mapper limits and the oracle segmenter, as a replay of the floor would.
"""

import argparse
import json
from pathlib import Path

from diff2scene.io.bag import BagFrameSource
from diff2scene.mapping import MapperConfig
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
from diff2scene.synth.cli import register

N_FRAMES = 160


def _synth_cli(argv: list[str]) -> int:
    """Run the ``synth`` subcommand as ``diff2scene.cli`` would, without importing the others."""
    parser = argparse.ArgumentParser(prog="diff2scene")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_a_2x2_floor_bag_is_integrated(tmp_path: Path) -> None:
    out = tmp_path / "floor"
    argv = ["synth", "--out", str(out), "--seed", "2", "--floor", "2x2", "--room-size", "3x3"]
    argv += ["--frames", str(N_FRAMES), "--width", "64", "--height", "48", "--quiet"]
    assert _synth_cli(argv) == 0
    metadata = json.loads((out / "scene.json").read_text())["metadata"]
    assert metadata["frames"] == N_FRAMES
    assert sorted(metadata["route"]["visit_order"][:-1]) == [0, 1, 2, 3]
    bag = out / "bag"
    segmenter, _ = build_segmenter(SegmenterConfig(kind="oracle"), bag=bag)
    # Only the voxel size and device differ from the defaults; the pose-jump limits do not.
    mapper = MapperConfig(voxel_size_m=0.08, device="CPU:0")
    pipe = Pipeline(PipelineConfig(mapper=mapper, threaded=False), segmenter)
    delivered = 0
    try:
        for frame in BagFrameSource(bag):
            delivered += 1
            pipe.add_frame(frame)
    finally:
        pipe.close()
    stats = pipe.mapper.stats
    assert delivered == N_FRAMES
    assert stats.frames_integrated >= 0.9 * delivered, stats
    # The map spans the floor, not one room: every room and the corridor have surface in it.
    points = pipe.map.points_m
    rects = [room["rect_m"] for room in metadata["floor"]["rooms"]]
    rects += metadata["floor"]["corridors_m"]
    for x0, x1, y0, y1 in rects:
        inside = (
            (points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)
        )
        assert inside.sum() > 100, (x0, x1, y0, y1)

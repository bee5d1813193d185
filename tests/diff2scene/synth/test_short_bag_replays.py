"""A short ``diff2scene synth --frames 30`` bag maps: its frames are not refused as pose jumps.

Fewer frames along the same camera loop used to mean a faster camera at the same 30 Hz
stamps, and the mapper refused almost every frame as a pose jump. The bag is read back
through the bag frame source and fused by the pipeline with its default mapper limits.
"""

import argparse
from pathlib import Path

from diff2scene.io.bag import BagFrameSource
from diff2scene.mapping import MapperConfig
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
from diff2scene.synth.cli import register

N_FRAMES = 30


def _synth_cli(argv: list[str]) -> int:
    """Run the ``synth`` subcommand as ``diff2scene.cli`` would, without importing the others."""
    parser = argparse.ArgumentParser(prog="diff2scene")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_a_30_frame_bag_is_integrated(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    argv = ["synth", "--out", str(out), "--seed", "3", "--frames", str(N_FRAMES)]
    assert _synth_cli([*argv, "--width", "64", "--height", "48", "--quiet"]) == 0
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
    assert pipe.map.num_voxels > 100

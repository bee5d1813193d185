"""Shared by the synth tests that check a written bag maps: the ``synth`` command, and the bag
fused by the pipeline with the oracle and the mapper's default pose-jump limits."""

from __future__ import annotations

import argparse
from pathlib import Path

from diff2scene.io.bag import BagFrameSource
from diff2scene.mapping import MapperConfig
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
from diff2scene.synth.cli import register


def synth_cli(argv: list[str]) -> int:
    """Run the ``synth`` subcommand as ``diff2scene.cli`` would, without importing the others."""
    parser = argparse.ArgumentParser(prog="diff2scene")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def map_bag(bag: Path) -> tuple[int, Pipeline]:
    """(frames the bag delivered, the closed pipeline they were fused into): only the voxel
    size and device differ from the defaults, the pose-jump limits do not."""
    segmenter, _ = build_segmenter(SegmenterConfig(kind="oracle"), bag=bag)
    mapper = MapperConfig(voxel_size_m=0.08, device="CPU:0")
    pipe = Pipeline(PipelineConfig(mapper=mapper, threaded=False), segmenter)
    delivered = 0
    try:
        for frame in BagFrameSource(bag):
            delivered += 1
            pipe.add_frame(frame)
    finally:
        pipe.close()
    return delivered, pipe

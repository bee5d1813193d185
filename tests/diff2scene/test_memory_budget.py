"""A floor mapped under a memory budget: blocks leave memory, come back when the camera
returns to the first room, and the map (and every answer over it) is the one mapped without
a budget.

The budget is tiny on purpose (1 MiB: less than the process itself), so after every keyframe
every block but those the keyframe touched goes to disk: the most spilling and reloading a
tour can cause. Blocks are small (1024 voxels) so that a small floor has many of them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diff2scene.io.bag import BagFrameSource
from diff2scene.mapping import MapperConfig, SemanticMap
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.query.engine import QueryEngine
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
from diff2scene.segmentation.oracle import OracleConfig
from tests.diff2scene.synth.replaying import synth_cli

BLOCK = 1024


@pytest.fixture(scope="module")
def floor_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("floor") / "floor"
    argv = ["synth", "--out", str(out), "--seed", "5", "--floor", "2x1", "--room-size", "3x3",
            "--frames", "120", "--width", "64", "--height", "48", "--quiet"]  # fmt: skip
    assert synth_cli(argv) == 0
    return out / "bag"


def map_floor(bag: Path, config: PipelineConfig) -> Pipeline:
    segmenter, _ = build_segmenter(
        SegmenterConfig(kind="oracle", oracle=OracleConfig.exact()), bag=bag
    )
    pipe = Pipeline(config, segmenter)
    try:
        for frame in BagFrameSource(bag):
            pipe.add_frame(frame)
    finally:
        pipe.close()
    return pipe


def arrays(smap: SemanticMap) -> dict[str, np.ndarray]:
    return {name: getattr(smap, name) for name in
            ("coords", "colors", "member_ids", "member_weights", "view_counts")}  # fmt: skip


@pytest.fixture(scope="module")
def runs(floor_bag: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, Pipeline]:
    base = PipelineConfig(
        mapper=MapperConfig(voxel_size_m=0.04, device="CPU:0"), threaded=False,
        net3d_mode="off", spill_block_voxels=BLOCK,
    )  # fmt: skip
    spill = tmp_path_factory.mktemp("spill")
    free = map_floor(floor_bag, base)
    bound = map_floor(floor_bag, replace(base, memory_budget_mb=1.0, spill_dir=str(spill)))
    return free, bound


def test_blocks_spill_and_come_back_and_the_map_is_the_same(runs) -> None:
    free, bound = runs
    smap = bound.map
    assert smap.num_voxels == free.map.num_voxels > 8 * BLOCK
    stats = bound.stats_dict()
    assert stats["map_blocks_evicted"] > 0 and stats["map_blocks_reloaded"] > 0, stats
    assert stats["map_blocks_spilled_now"] == smap.spilled_blocks > 0
    assert stats["map_mb_spilled"] > 0
    # Nothing fits in a 1 MiB budget: the map says so instead of pretending.
    assert stats["memory_budget_short"] > 0
    assert free.stats_dict()["map_blocks_evicted"] == 0
    # Spilled and reloaded blocks hold exactly what the map without a budget holds.
    for name, expected in arrays(free.map).items():
        np.testing.assert_array_equal(getattr(smap, name), expected, err_msg=name)


def test_the_tour_back_to_the_first_room_reloads_its_blocks(runs, floor_bag: Path) -> None:
    _, bound = runs
    smap = bound.map
    metadata = json.loads((floor_bag.parent / "scene.json").read_text())["metadata"]
    assert metadata["route"]["visit_order"] == [0, 1, 0]
    x0, x1, y0, y1 = metadata["floor"]["rooms"][0]["rect_m"]
    # Blocks numbered during the first visit (the first quarter of the map), spilled while
    # the camera was in the second room, are in memory again at the end of the tour, which
    # ends in the first room, and they hold that room.
    snap = smap.snapshot()
    assert snap.voxel_numbers is not None
    blocks = sorted(set((snap.voxel_numbers // BLOCK).tolist()))
    early = [b for b in blocks if b < smap.num_voxels // BLOCK // 4]
    assert early, blocks
    centres = [smap.points_m[b * BLOCK : (b + 1) * BLOCK].mean(axis=0) for b in early]
    assert all(x0 < c[0] < x1 and y0 < c[1] < y1 for c in centres), centres
    assert snap.voxels_not_searched == smap.spilled_voxels > 0


def test_queries_say_what_they_did_not_search_and_match_once_everything_is_back(
    runs, floor_bag: Path, tmp_path: Path
) -> None:
    free, bound = runs
    segmenter, encoder = build_segmenter(
        SegmenterConfig(kind="oracle", oracle=OracleConfig.exact()), bag=floor_bag
    )
    partial = QueryEngine.from_map(bound.map, encoder, segmenter)
    assert partial.snapshot.voxels_not_searched > 0
    assert partial.snapshot.num_voxels < bound.map.num_voxels
    # Saved and loaded, the bounded map is the whole map.
    loaded = SemanticMap.load(bound.save(tmp_path / "map.npz"))
    for name, expected in arrays(free.map).items():
        np.testing.assert_array_equal(getattr(loaded, name), expected, err_msg=name)
    whole = QueryEngine.from_map(loaded, encoder, segmenter)
    reference = QueryEngine.from_map(free.map, encoder, segmenter)
    assert whole.snapshot.voxels_not_searched == 0
    for text in ("chair", "table", "door"):
        got, want = whole.query(text), reference.query(text)
        np.testing.assert_array_equal(got.matched, want.matched)
        assert [i.voxel_indices.tolist() for i in got.instances] == [
            i.voxel_indices.tolist() for i in want.instances
        ]


def test_a_budget_that_cannot_be_held_is_a_warning_in_health(floor_bag: Path) -> None:
    from diff2scene.runtime import MappingRuntime, RuntimeConfig
    from diff2scene.segmentation.factory import SegmenterConfig as Seg

    config = RuntimeConfig(
        pipeline=PipelineConfig(mapper=MapperConfig(voxel_size_m=0.04, device="CPU:0"),
                                net3d_mode="off", memory_budget_mb=1.0,
                                spill_block_voxels=BLOCK),
        segmenter=Seg(kind="oracle", oracle=OracleConfig.exact()),
    )  # fmt: skip
    segmenter, encoder = build_segmenter(config.segmenter, bag=floor_bag)
    runtime = MappingRuntime(config, segmenter=segmenter, text_encoder=encoder,
                             frames="inline", background_queries=False)  # fmt: skip
    for frame in list(BagFrameSource(floor_bag))[:40]:
        runtime.pipeline.add_frame(frame)
    runtime.pipeline.close()
    stats = runtime.diagnostics()
    assert stats["map_blocks_evicted"] > 0 and stats["memory_budget_mb"] == 1.0
    assert stats["rss_mb"] > 0 and stats["map_mb_in_memory"] > 0
    health = runtime.health(stats)
    assert health.level == "warn"
    assert any("memory budget" in p for p in health.problems), health.problems


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"memory_budget_mb": -1.0}, "memory_budget_mb"),
        ({"memory_budget_mb": 100.0, "net3d_mode": "on"}, "3D branch"),
        ({"spill_block_voxels": 1000}, "power of two"),
    ],
)
def test_budget_settings_that_cannot_work_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**changes)


_KILLED_MAPPER = """
import sys
from pathlib import Path
from diff2scene.io.bag import BagFrameSource
from diff2scene.mapping import MapperConfig
from diff2scene.pipeline import Pipeline, PipelineConfig
from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
bag, out = Path(sys.argv[1]), Path(sys.argv[2])
segmenter, _ = build_segmenter(SegmenterConfig(kind="oracle"), bag=bag)
pipe = Pipeline(PipelineConfig(mapper=MapperConfig(voxel_size_m=0.04, device="CPU:0"),
                               threaded=False, net3d_mode="off", memory_budget_mb=1.0,
                               spill_block_voxels=1024, spill_dir=str(out / "spill")),
                segmenter)
frames = list(BagFrameSource(bag))
for i in range(100000):
    pipe.add_frame(frames[i % len(frames)])
    if i % 25 == 24:
        pipe.save(out / "map.npz")
        print("saved", flush=True)
"""


def test_a_kill_while_spilling_leaves_the_saved_map_loadable(
    floor_bag: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_MAPPER, str(floor_bag), str(tmp_path)],
                            stdout=subprocess.PIPE, env=env, cwd=repo)  # fmt: skip
    assert proc.stdout is not None
    try:
        for _ in range(2):  # two saves, then a kill in the middle of whatever comes next
            assert proc.stdout.readline().strip() == b"saved"
        time.sleep(0.7)
        assert list((tmp_path / "spill").glob("block-*.npz"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    smap = SemanticMap.load(tmp_path / "map.npz")
    assert smap.num_voxels > 0 and smap.mask_bank.num_masks > 0
    # The next process that spills there starts clean.
    from diff2scene.mapping.spill import SpillStore

    SpillStore(tmp_path / "spill").close()
    assert not list((tmp_path / "spill").iterdir())

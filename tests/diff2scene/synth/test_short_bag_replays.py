"""A short ``diff2scene synth --frames 30`` bag maps: its frames are not refused as pose jumps.

Fewer frames along the same camera loop used to mean a faster camera at the same 30 Hz
stamps, and the mapper refused almost every frame as a pose jump. The bag is read back
through the bag frame source and fused by the pipeline with its default mapper limits.
"""

from pathlib import Path

from tests.diff2scene.synth.replaying import map_bag, synth_cli

N_FRAMES = 30


def test_a_30_frame_bag_is_integrated(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    argv = ["synth", "--out", str(out), "--seed", "3", "--frames", str(N_FRAMES)]
    assert synth_cli([*argv, "--width", "64", "--height", "48", "--quiet"]) == 0
    bag = out / "bag"
    delivered, pipe = map_bag(bag)
    stats = pipe.mapper.stats
    assert delivered == N_FRAMES
    assert stats.frames_integrated >= 0.9 * delivered, stats
    assert pipe.map.num_voxels > 100

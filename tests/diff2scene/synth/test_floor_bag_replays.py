"""A small ``diff2scene synth --floor`` bag maps: the frames of the whole tour, rooms,
doorways and corridors, pass the mapper's pose-jump checks and are integrated.

The bag is read back through the bag frame source and fused by the pipeline with its default
mapper limits and the oracle segmenter, as a replay of the floor would.
"""

import json
from pathlib import Path

import pytest

from diff2scene.errors import ConfigError
from tests.diff2scene.synth.replaying import map_bag, synth_cli

N_FRAMES = 160


def test_a_2x2_floor_bag_is_integrated(tmp_path: Path) -> None:
    out = tmp_path / "floor"
    argv = ["synth", "--out", str(out), "--seed", "2", "--floor", "2x2", "--room-size", "3x3"]
    argv += ["--frames", str(N_FRAMES), "--width", "64", "--height", "48", "--quiet"]
    assert synth_cli(argv) == 0
    metadata = json.loads((out / "scene.json").read_text())["metadata"]
    assert metadata["frames"] == N_FRAMES
    assert sorted(metadata["route"]["visit_order"][:-1]) == [0, 1, 2, 3]
    bag = out / "bag"
    delivered, pipe = map_bag(bag)
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


def test_floor_options_and_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "synth.yaml"
    config.write_text(
        "render: {width: 32, height: 24}\n"
        "floor: {rooms_x: 1, rooms_y: 1, corridor_width_m: 1.5, route: {n_frames: 12}}\n"
        "gt_points_per_m2: 5.0\n"
    )
    out = tmp_path / "one"
    assert synth_cli(["synth", "--out", str(out), "--config", str(config)]) == 0
    printed = capsys.readouterr()
    assert "floor of 1x1 rooms" in printed.err and "12 frames of 32x24" in printed.err
    assert "/camera/depth/image_rect_raw: 12" in printed.out
    metadata = json.loads((out / "scene.json").read_text())["metadata"]
    assert metadata["config"]["floor"]["corridor_width_m"] == 1.5
    assert metadata["route"]["visit_order"] == [0, 0]
    first, again = metadata["route"]["first_room_frames"]
    assert first[0] <= first[1] < again[0] <= again[1] == 11
    # --frames and --room-size reach the floor's route and rooms.
    argv = ["synth", "--out", str(out), "--config", str(config), "--force", "--quiet"]
    assert synth_cli([*argv, "--frames", "7", "--room-size", "3.5x3"]) == 0
    metadata = json.loads((out / "scene.json").read_text())["metadata"]
    assert metadata["frames"] == 7
    (x0, x1, y0, y1), = (room["rect_m"] for room in metadata["floor"]["rooms"])
    assert (x1 - x0, y1 - y0) == (pytest.approx(3.5), pytest.approx(3.0))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--floor", "2by2"], "--floor"),
        (["--floor", "0x2"], "--floor"),
        (["--floor", "2x2", "--frames", "1"], "n_frames"),
        (["--room-size", "3"], "--room-size"),
        (["--floor", "1x1", "--room-size", "1.2x3"], "doorway"),
    ],
)
def test_bad_floor_options_are_refused(
    tmp_path: Path, options: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        synth_cli(["synth", "--out", str(tmp_path), "--quiet", *options])

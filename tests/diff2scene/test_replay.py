"""``diff2scene replay``: a tiny synthetic bag through the pipeline into a directory of results.

The bag is written by the synthetic-room generator (96x72, 24 frames, ground truth beside it),
mapped with the oracle segmenter at 5 cm voxels, and everything replay writes is read back:
the output bag with ``rosbags`` and with the independent ``mcap`` reader, the map, the report.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from diff2scene.cli import main
from diff2scene.errors import ConfigError
from diff2scene.io.bag_writer import (
    CLOUD_DTYPE,
    CLOUD_TOPIC,
    MARKERS_TOPIC,
    QUERY_CLOUD_TOPIC,
    QUERY_TEXT_TOPIC,
    UNKNOWN_LABEL,
)
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.replay import (
    ReplayConfig,
    read_queries,
    run_replay,
)
from diff2scene.runtime import build_models
from diff2scene.segmentation.factory import SegmenterConfig
from diff2scene.synth.dataset import SynthConfig, SynthResult, synthesize
from diff2scene.synth.render import RenderConfig

N_FRAMES = 24
COLOR_TOPIC = "/camera/color/image_raw"
#: A query longer than the engine accepts (max_query_chars 200): refused, reported, not fatal.
TOO_LONG = "chair " * 40
QUERIES = ["chair", "grand piano", TOO_LONG.strip()]


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    # 3 Hz stamps keep the camera loop's speed under the mapper's pose-jump limits; at 96x72
    # (~60 kB of images per frame) the MCAP file has two chunks, so a cut leaves one intact.
    render = RenderConfig(width=96, height=72, n_frames=N_FRAMES, rate_hz=3.0)
    return synthesize(tmp_path_factory.mktemp("room"), 3,
                      SynthConfig(render=render, gt_points_per_m2=50.0))  # fmt: skip


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "replay.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": {"mapper": {"voxel_size_m": 0.05, "device": "CPU:0"}},
        "segmenter": {"kind": "oracle"},
        "render": {"max_points": 3000, "figure_size_in": [6.0, 3.0], "dots_per_inch": 40},
        "eval": {"max_query_classes": 3, "max_relation_queries": 1},
    }))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def queries_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("q") / "queries.txt"
    path.write_text("# what to look for\n" + "\n".join(QUERIES[:2]) + "\n\n" + TOO_LONG + "\n")
    return path


def _replay(bag: Path, out: Path, config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["replay", str(bag), "--out", str(out), "--config", str(config),
                 "--no-progress", *extra])  # fmt: skip
    return code, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def first(
    room: SynthResult, config_file: Path, queries_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, int, dict[str, Any]]:  # fmt: skip
    out = tmp_path_factory.mktemp("replay1") / "out"
    code, report = _replay(room.bag_path, out, config_file, "--queries", str(queries_file))
    return out, code, report


def _messages(bag: Path) -> list[tuple[str, int, Any]]:
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype))
                for c, t, raw in reader.messages()]  # fmt: skip


def _cloud(msg: Any) -> np.ndarray:
    """The points of a PointCloud2 read as the layout replay promises (checked first)."""
    fields = [(f.name, f.offset, f.datatype) for f in msg.fields]
    assert fields == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 7), ("label", 16, 6),
                      ("score", 20, 7)]  # fmt: skip
    assert msg.point_step == 24 and msg.height == 1 and not msg.is_bigendian
    assert msg.row_step == 24 * msg.width
    return np.frombuffer(bytes(msg.data), dtype=CLOUD_DTYPE)


def test_read_queries_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("# header\n\n  the mug on the table  \n#chair\nchair\n")
    assert read_queries(path) == ["the mug on the table", "chair"]
    path.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="no query"):
        read_queries(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_queries(tmp_path / "absent.txt")


def test_replay_writes_map_bag_pictures_report_and_evaluation(
    first: tuple[Path, int, dict[str, Any]],
) -> None:
    out, code, report = first
    assert code == 0 and report["problems"] == []
    for name in ("map.npz", "map_rgb.png", "map_labels.png", "report.md", "timing.png",
                 "eval.json", "eval.md", "queries/01_chair.png", "queries/02_grand_piano.png"):
        assert (out / name).is_file(), name
    assert not (out / "queries" / "03_chair_chair_chair_chair_chair_chair_chair.png").exists()

    frames = report["frames"]
    assert frames["delivered"] == frames["mapped"] == N_FRAMES
    assert frames["integrated"] == N_FRAMES
    stages = report["stages_ms"]
    assert stages["read"]["count"] == stages["decode"]["count"] == N_FRAMES
    assert stages["fusion"]["count"] == N_FRAMES
    segmented = report["keyframes"]["segmented"]
    assert segmented == report["keyframes"]["selected"] >= 5
    assert stages["segment2d"]["count"] == stages["unproject"]["count"] == segmented
    assert stages["query"]["count"] == 2  # the refused query is not timed as an answer
    for s in stages.values():
        assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["max_ms"]
    run = report["run"]
    assert run["mode"] == "deterministic"
    assert run["frames_per_s"] == pytest.approx(N_FRAMES / run["wall_s"], rel=1e-2)
    assert report["drops"] == {"frame_queue_full": 0, "keyframes_dropped": 0,
                               "keyframes_abandoned": 0}  # fmt: skip
    assert report["peak_rss_mib"] > 100
    assert report["evaluation"]["branches"]["salient"]["miou_all"] > 0.1

    answers = {q["text"]: q for q in report["queries"]}
    assert answers["chair"]["instances"] and answers["chair"]["instances"][0]["label"] == "chair"
    assert answers["grand piano"]["instances"] == []
    assert "characters" in answers[QUERIES[2]]["error"]
    md = (out / "report.md").read_text()
    assert "| fusion |" in md and "| chair |" in md and "![timing](timing.png)" in md

    smap = SemanticMap.load(out / "map.npz")
    assert smap.num_voxels == report["map"]["voxels"] > 1000
    assert smap.metadata["replay_mode"] == "deterministic"


def test_output_bag_reads_back_with_rosbags_and_the_mcap_reader(
    first: tuple[Path, int, dict[str, Any]],
) -> None:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    out, _, report = first
    messages = _messages(out / "bag")
    topics = [t for t, _, _ in messages]
    assert topics.count(CLOUD_TOPIC) == 1
    assert topics.count(QUERY_TEXT_TOPIC) == topics.count(MARKERS_TOPIC) == 3
    assert topics.count(QUERY_CLOUD_TOPIC) == 2  # none for the refused query
    by_topic: dict[str, list[tuple[int, Any]]] = {}
    for topic, stamp, msg in messages:
        by_topic.setdefault(topic, []).append((stamp, msg))

    (stamp, cloud_msg), = by_topic[CLOUD_TOPIC]
    cloud = _cloud(cloud_msg)
    smap = SemanticMap.load(out / "map.npz")
    assert cloud.shape[0] == smap.num_voxels and cloud_msg.header.frame_id == "map"
    np.testing.assert_allclose(np.stack([cloud["x"], cloud["y"], cloud["z"]], 1), smap.points_m)
    known = cloud["label"] != UNKNOWN_LABEL
    assert known.mean() > 0.5
    assert cloud["label"][known].max() < len(json.loads((out / "eval.json").read_text())
                                             ["branches"]["salient"]["per_class_iou"])

    texts = [m.data for _, m in by_topic[QUERY_TEXT_TOPIC]]
    assert texts == QUERIES
    chair_markers = by_topic[MARKERS_TOPIC][0][1].markers
    n_chairs = len(report["queries"][0]["instances"])
    assert chair_markers[0].action == 3 and len(chair_markers) == 1 + 2 * n_chairs  # DELETEALL
    assert [m.type for m in chair_markers[1:3]] == [1, 9]  # CUBE, TEXT_VIEW_FACING
    assert chair_markers[2].text.startswith("chair ")
    chair_cloud = _cloud(by_topic[QUERY_CLOUD_TOPIC][0][1])
    assert chair_cloud.shape[0] == report["queries"][0]["matched_voxels"]
    assert set(np.unique(chair_cloud["label"])) <= set(range(n_chairs + 1))
    assert stamp < by_topic[QUERY_TEXT_TOPIC][0][0] < by_topic[QUERY_TEXT_TOPIC][1][0]

    # The same file through mcap + mcap-ros2-support (their own CDR decoder, the bag's schemas).
    (mcap_file,) = (out / "bag").glob("*.mcap")
    with mcap_file.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        independent = [(channel.topic, message.log_time, msg)
                       for _, channel, message, msg in reader.iter_decoded_messages()]  # fmt: skip
    assert sorted((t, s) for t, s, _ in independent) == sorted((t, s) for t, s, _ in messages)
    other = next(m for t, _, m in independent if t == CLOUD_TOPIC)
    assert [f.name for f in other.fields] == ["x", "y", "z", "rgb", "label", "score"]
    assert bytes(other.data) == bytes(cloud_msg.data)
    other_markers = next(m for t, _, m in independent if t == MARKERS_TOPIC).markers
    assert [(m.id, m.type, m.text) for m in other_markers] == [
        (m.id, m.type, m.text) for m in chair_markers
    ]


def test_replaying_twice_gives_identical_labels(
    room: SynthResult, config_file: Path, first: tuple[Path, int, dict[str, Any]],
    tmp_path: Path,
) -> None:  # fmt: skip
    out1 = first[0]
    # --force replaces an earlier replay's outputs and nothing else
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "keep.txt").write_text("mine")
    (tmp_path / "again" / "report.md").write_text("old")
    code, _ = _replay(room.bag_path, tmp_path / "again", config_file, "--force")
    assert code == 0 and (tmp_path / "again" / "keep.txt").read_text() == "mine"
    (_, _, cloud1), = [m for m in _messages(out1 / "bag") if m[0] == CLOUD_TOPIC]
    (_, _, cloud2), = [m for m in _messages(tmp_path / "again" / "bag") if m[0] == CLOUD_TOPIC]
    a, b = _cloud(cloud1), _cloud(cloud2)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a["label"], b["label"])
    assert a.tobytes() == b.tobytes()  # points, colours and scores too


def test_existing_outputs_are_not_overwritten_without_force(
    room: SynthResult, first: tuple[Path, int, dict[str, Any]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert main(["replay", str(room.bag_path), "--out", str(first[0]), "--no-progress"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["replay", str(room.bag_path), "--out", str(tmp_path / "map.npz")]) == 2
    assert "output directory" in capsys.readouterr().err


def test_truncated_mcap_gives_results_for_what_was_readable(
    room: SynthResult, config_file: Path, tmp_path: Path
) -> None:
    scene = tmp_path / "scene"
    shutil.copytree(room.out_dir, scene)
    (mcap,) = (scene / "bag").glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.7)])  # a recording cut short: no footer
    code, report = _replay(scene / "bag", tmp_path / "out", config_file)
    assert code == 1  # results, but a script can tell something was wrong
    assert len(report["problems"]) == 1
    problem = report["problems"][0]
    assert "cannot be opened" in problem and "truncated" in problem and mcap.name in problem
    assert 0 < report["frames"]["mapped"] < N_FRAMES
    assert (tmp_path / "out" / "salvaged_bag").is_dir()
    assert report["bag_read"].endswith("salvaged_bag")
    assert SemanticMap.load(tmp_path / "out" / "map.npz").num_voxels > 500
    assert "cannot be opened" in (tmp_path / "out" / "report.md").read_text()


def _chunks(data: bytes) -> list[int]:
    """Offsets of the top-level chunk records (opcode 0x06) of an MCAP file."""
    pos, out = 8, []
    while pos + 9 <= len(data) and data[pos] != 0x02:  # up to the footer
        if data[pos] == 0x06:
            out.append(pos)
        pos += 9 + int.from_bytes(data[pos + 1 : pos + 9], "little")
    return out


def test_a_corrupt_chunk_is_skipped_and_the_rest_replayed(
    room: SynthResult, tmp_path: Path
) -> None:
    scene = tmp_path / "scene"
    shutil.copytree(room.out_dir, scene)
    (mcap,) = (scene / "bag").glob("*.mcap")
    data = bytearray(mcap.read_bytes())
    chunks = _chunks(bytes(data))
    assert len(chunks) >= 2
    frame = chunks[0] + 9 + 44  # the zstd frame of the first chunk (see test_mcap_salvage)
    data[frame : frame + 4] = bytes(4)
    mcap.write_bytes(bytes(data))
    config = ReplayConfig(segmenter=SegmenterConfig(kind="oracle"))
    config.pipeline.mapper.voxel_size_m = 0.05
    segmenter, encoder = build_models(config, bag=scene / "bag")
    # Without a place to put a salvaged copy, reading stops at the bad chunk, reported.
    plain = run_replay(scene / "bag", config, segmenter=segmenter, text_encoder=encoder,
                       progress=False)
    assert plain.error is not None and plain.frames_delivered == 0
    assert any("stopped after 0 frame(s)" in p and "Zstd" in p for p in plain.problems)
    run = run_replay(scene / "bag", config, segmenter=segmenter, text_encoder=encoder,
                     progress=False,
                     salvage_dir=tmp_path / "salvaged")  # fmt: skip
    assert "failed part-way" in run.problems[0]
    assert any("1 corrupt chunk(s) dropped" in p for p in run.problems)
    assert run.error is None and run.bag_read == tmp_path / "salvaged"
    assert 0 < run.frames_delivered < N_FRAMES
    assert run.pipeline.stats.frames_in == run.frames_delivered


def _sqlite_copy_with_garbage(src: Path, dst: Path, *, bad_index: int) -> None:
    """``src`` rewritten as a sqlite3 bag whose ``bad_index``-th colour message is garbage."""
    store = get_typestore(Stores.ROS2_JAZZY)
    with AnyReader([src], default_typestore=store) as reader, Writer(dst, version=9) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store)
                 for c in reader.connections}  # fmt: skip
        seen = 0
        for conn, stamp, raw in reader.messages():
            payload = raw
            if conn.topic == COLOR_TOPIC:
                if seen == bad_index:
                    payload = b"\x00\x01\x00\x00\xff"  # a CDR header and one stray byte
                seen += 1
            writer.write(conns[conn.id], stamp, payload)


def test_sqlite_bag_with_a_garbage_message_is_named_and_costs_one_frame(
    room: SynthResult, tmp_path: Path
) -> None:
    scene = tmp_path / "scene"
    scene.mkdir()
    for name in ("scene.json", "gt_points.npz"):  # the oracle's ground truth beside the bag
        shutil.copy(room.out_dir / name, scene / name)
    _sqlite_copy_with_garbage(room.bag_path, scene / "bag", bad_index=5)
    assert list((scene / "bag").glob("*.db3"))
    config = ReplayConfig(segmenter=SegmenterConfig(kind="oracle"))
    config.pipeline.mapper.voxel_size_m = 0.05
    segmenter, encoder = build_models(config, bag=scene / "bag")
    run = run_replay(scene / "bag", config, segmenter=segmenter, text_encoder=encoder,
                     progress=False)
    assert run.frames_delivered == N_FRAMES - 1
    assert run.input_counters["skipped_undecodable_message"] == 1
    assert any("undecodable_message" in p for p in run.problems)
    assert any(COLOR_TOPIC in w and "undecodable_message" in w for w in run.input_warnings)
    assert run.pipeline.stats.frames_in == N_FRAMES - 1


def test_realtime_paces_frames_and_counts_every_drop(room: SynthResult) -> None:
    config = ReplayConfig(segmenter=SegmenterConfig(kind="oracle"))
    config.pipeline.mapper.voxel_size_m = 0.05
    config.frame_queue_size = 1
    segmenter, encoder = build_models(config, bag=room.bag_path)
    # 1000x: the 8 s bag is released in ~8 ms, far faster than fusion; the queue must drop.
    run = run_replay(room.bag_path, config, segmenter=segmenter, text_encoder=encoder,
                     progress=False,
                     realtime_rate=1000.0)  # fmt: skip
    assert run.mode == "realtime"
    assert run.pipeline.config.overflow_policy == "drop_oldest" and run.pipeline.config.threaded
    dropped = int(run.input_counters.get("skipped_frame_queue_full", 0))
    assert dropped > 0
    assert run.frames_delivered == N_FRAMES
    assert run.pipeline.stats.frames_in + dropped == run.frames_delivered
    assert run.reader_lag_s_max > 0  # 8 ms for 24 frames: even reading falls behind
    s = run.pipeline.stats
    assert s.keyframes_selected == (s.keyframes_segmented + s.keyframes_dropped
                                    + sum(s.keyframes_abandoned.values()))  # fmt: skip
    with pytest.raises(ConfigError, match="RATE"):
        run_replay(room.bag_path, config, segmenter=segmenter, text_encoder=encoder,
                   progress=False, realtime_rate=0.0)


def test_realtime_keeps_the_bag_pace(room: SynthResult) -> None:
    config = ReplayConfig(segmenter=SegmenterConfig(kind="oracle"))
    config.pipeline.mapper.voxel_size_m = 0.05
    config.source.max_frames = 6  # 6 frames at 3 Hz = 5/3 s of bag time
    segmenter, encoder = build_models(config, bag=room.bag_path)
    run = run_replay(room.bag_path, config, segmenter=segmenter, text_encoder=encoder,
                     progress=False,
                     realtime_rate=2.0)  # fmt: skip
    bag_s = (run.last_stamp_ns - run.first_stamp_ns) / 1e9
    assert bag_s == pytest.approx(5 / 3, rel=1e-3)
    assert run.wall_s >= bag_s / 2.0 - 0.05  # never faster than RATE x the stamps

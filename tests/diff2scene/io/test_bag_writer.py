"""The core's bag writer: clouds, markers and texts read back by two MCAP readers.

That they hold what the node publishes is checked against rclpy in
tests/diff2scene_ros/test_live_and_bag_outputs_agree.py.
"""

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from diff2scene.errors import DataFormatError, InputError
from diff2scene.io.bag_writer import CLOUD_DTYPE, ResultBagWriter
from diff2scene.query.instances import Instance


def _cloud_arrays(n: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "points_m": rng.normal(size=(n, 3)).astype(np.float32),
        "rgb": rng.integers(0, 256, (n, 3), dtype=np.uint8),
        "labels": np.array([0, 1, 2, 2**32 - 1, 5, 0, 3][:n], dtype=np.uint32),
        "scores": rng.random(n).astype(np.float32),
    }


def _instances() -> list[Instance]:
    return [
        Instance("chair", 0.87, np.array([1.0, 2.0, 0.5], np.float32),
                 np.array([0.8, 1.7, 0.0], np.float32), np.array([1.2, 2.3, 1.0], np.float32),
                 np.arange(40)),
        Instance("mug", 0.41, np.array([0.0, 0.0, 0.9], np.float32),
                 np.array([0.0, 0.0, 0.9], np.float32), np.array([0.0, 0.0, 0.9], np.float32),
                 np.arange(1)),
    ]  # fmt: skip


def _read(path: Path) -> list[tuple[str, int, object]]:
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


def test_written_bag_reads_back(tmp_path: Path) -> None:
    arrays = _cloud_arrays()
    with ResultBagWriter(tmp_path / "out", frame_id="odom") as writer:
        writer.write_cloud("/cloud", 5_000_000_001, arrays["points_m"], rgb=arrays["rgb"],
                           labels=arrays["labels"], scores=arrays["scores"])  # fmt: skip
        writer.write_markers("/markers", 6_000_000_000, _instances())
        writer.write_markers("/markers", 7_000_000_000, [])
        writer.write_text("/text", 6_000_000_000, "the chair")
    assert writer.counts == {"/cloud": 1, "/markers": 2, "/text": 1}
    with pytest.raises(DataFormatError, match="exists"):
        ResultBagWriter(tmp_path / "out")

    messages = _read(tmp_path / "out")
    (cloud,) = [m for t, _, m in messages if t == "/cloud"]
    assert cloud.header.frame_id == "odom"
    assert (cloud.header.stamp.sec, cloud.header.stamp.nanosec) == (5, 1)
    back = np.frombuffer(bytes(cloud.data), dtype=CLOUD_DTYPE)
    np.testing.assert_array_equal(back["label"], arrays["labels"])
    np.testing.assert_array_equal(np.stack([back["x"], back["y"], back["z"]], 1),
                                  arrays["points_m"])  # fmt: skip
    first, empty = (m.markers for t, _, m in messages if t == "/markers")
    assert len(empty) == 1 and empty[0].action == 3  # DELETEALL alone clears an old answer

    assert [(m.id, m.type, m.action) for m in first] == [
        (0, 0, 3), (1, 1, 0), (2, 9, 0), (3, 1, 0), (4, 9, 0)
    ]  # fmt: skip
    mug_box = first[3]
    assert (mug_box.scale.x, mug_box.scale.y, mug_box.scale.z) == (0.02, 0.02, 0.02)

    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    (mcap_file,) = (tmp_path / "out").glob("*.mcap")
    with mcap_file.open("rb") as f:
        decoded = [(c.topic, msg) for _, c, _, msg in
                   make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages()]
    assert [t for t, _ in decoded] == [t for t, _, _ in messages]
    assert next(m for t, m in decoded if t == "/text").data == "the chair"
    assert [m.text for m in next(m for t, m in decoded if t == "/markers").markers] == [
        "", "", "chair 0.87", "", "mug 0.41"
    ]


def test_bad_instances_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    bad = Instance("x", 0.5, np.array([np.nan, 0.0, 0.0], np.float32),
                   np.zeros(3, np.float32), np.ones(3, np.float32), np.arange(3))  # fmt: skip
    with ResultBagWriter(tmp_path / "out") as writer:
        with pytest.raises(InputError, match="bad_instance"):
            writer.write_markers("/markers", 1, [bad])
        with pytest.raises(InputError, match="bad_points_array"):
            writer.write_cloud("/cloud", 1, np.zeros((3, 2), np.float32))
    assert writer.counts == {}

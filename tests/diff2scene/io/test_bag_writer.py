"""The core's bag writer: the node's cloud and marker layout, read back by two MCAP readers."""

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from diff2scene.errors import DataFormatError, InputError
from diff2scene.io.bag_writer import CLOUD_DTYPE, MarkerStyle, ResultBagWriter, cloud_record
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


def test_cloud_record_is_the_nodes_pointcloud2_layout() -> None:
    conversions = pytest.importorskip("diff2scene_ros.conversions")
    arrays = _cloud_arrays()
    ros = conversions.arrays_to_cloud(
        arrays["points_m"], rgb=arrays["rgb"], labels=arrays["labels"], scores=arrays["scores"]
    )
    ours = cloud_record(arrays["points_m"], rgb=arrays["rgb"], labels=arrays["labels"],
                        scores=arrays["scores"])  # fmt: skip
    assert ours.tobytes() == bytes(ros.data)
    assert [(f.name, f.offset, f.datatype) for f in ros.fields] == [
        (name, off, 6 if dt.kind == "u" else 7)
        for name, (dt, off) in CLOUD_DTYPE.fields.items()  # type: ignore[union-attr]
    ]
    assert ros.point_step == CLOUD_DTYPE.itemsize
    # defaults: grey, label 0, score 0
    plain = cloud_record(arrays["points_m"])
    default = conversions.arrays_to_cloud(arrays["points_m"])
    assert plain.tobytes() == bytes(default.data)


def test_cloud_record_refuses_bad_shapes() -> None:
    pts = np.zeros((3, 3), np.float32)
    with pytest.raises(InputError, match="bad_points_array"):
        cloud_record(np.zeros((3, 2)))
    with pytest.raises(InputError, match="cloud_size_mismatch"):
        cloud_record(pts, labels=np.zeros(4, np.uint32))
    with pytest.raises(InputError, match="bad_labels"):
        cloud_record(pts, labels=np.array([0, -1, 2]))


def _read(path: Path) -> list[tuple[str, int, object]]:
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


def test_written_bag_reads_back_and_markers_match_the_node(tmp_path: Path) -> None:
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

    conversions = pytest.importorskip("diff2scene_ros.conversions")
    ros = conversions.query_markers(
        conversions.instances_to_msgs(_instances()), frame_id="odom", stamp_ns=6_000_000_000
    ).markers
    style = MarkerStyle()
    assert style.min_box_size_m == 0.02  # the mug (one voxel) is drawn 2 cm wide
    assert len(first) == len(ros) == 5
    for ours, theirs in zip(first, ros, strict=True):
        assert (ours.ns, ours.id, ours.type, ours.action, ours.text) == (
            theirs.ns, theirs.id, theirs.type, theirs.action, theirs.text
        )
        p, q = ours.pose.position, theirs.pose.position
        assert (p.x, p.y, p.z) == pytest.approx((q.x, q.y, q.z))
        assert (ours.scale.x, ours.scale.y, ours.scale.z) == pytest.approx(
            (theirs.scale.x, theirs.scale.y, theirs.scale.z)
        )
        c, d = ours.color, theirs.color
        assert (c.r, c.g, c.b, c.a) == pytest.approx((d.r, d.g, d.b, d.a))

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

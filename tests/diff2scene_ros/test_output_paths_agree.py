"""The node's rclpy outputs and replay's result bag carry the same messages, field for field.

Both are built from :mod:`diff2scene.io.output_layout`; this checks that neither front end
drops, adds or changes a field when it copies that content into its own message classes. The
walk follows the message definitions rclpy knows, so a field either side forgets is caught.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "diff2scene_interfaces",
    reason="diff2scene_interfaces is not built: run `make interfaces` and use the Makefile's "
    "RUN_ENV (PYTHONPATH/LD_LIBRARY_PATH of ros2_ws/install/diff2scene_interfaces)",
)

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from diff2scene.io.bag_writer import UNKNOWN_LABEL, MarkerStyle, ResultBagWriter
from diff2scene.query.instances import Instance
from diff2scene_ros import conversions as cv

pytestmark = pytest.mark.ros

_STAMP_NS = 5_000_000_001


def assert_same_message(live: Any, bag: Any, path: str = "msg") -> None:
    """Every field of the rclpy message ``live`` equals that of the rosbags message ``bag``.

    ``float`` (float32) fields are compared after rounding to float32, as they travel; all
    others exactly, NaN included.
    """
    kinds: dict[str, str] = live.get_fields_and_field_types()
    bag_names = [f.name for f in dataclasses.fields(bag)
                 if not f.name.isupper() and not f.name.startswith("__")]  # fmt: skip
    assert list(kinds) == bag_names, path
    for name, kind in kinds.items():
        a, b, where = getattr(live, name), getattr(bag, name), f"{path}.{name}"
        if kind.startswith("sequence<"):
            inner = kind[len("sequence<") : -1]
            assert len(a) == len(b), where
            if "/" in inner:
                for i, (x, y) in enumerate(zip(a, b, strict=True)):
                    assert_same_message(x, y, f"{where}[{i}]")
            else:
                assert inner == "uint8", f"{where}: no {inner} sequences in these messages"
                assert bytes(a) == bytes(np.asarray(b, np.uint8)), where
        elif "/" in kind:
            assert_same_message(a, b, where)
        elif kind == "float":
            assert np.float32(a).tobytes() == np.float32(b).tobytes(), (where, a, b)
        elif kind == "double":
            assert np.float64(a).tobytes() == np.float64(b).tobytes(), (where, a, b)
        else:
            assert a == b, (where, a, b)


def _read(path: Path) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        for conn, stamp_ns, raw in reader.messages():
            assert stamp_ns == _STAMP_NS
            out.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    return out


def _cloud_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 40
    points_m = rng.normal(size=(n, 3)).astype(np.float32)
    points_m[5, 2] = np.nan  # not dense
    labels = rng.integers(0, 6, n).astype(np.uint32)
    labels[::7] = UNKNOWN_LABEL
    return {"points_m": points_m, "rgb": rng.integers(0, 256, (n, 3), dtype=np.uint8),
            "labels": labels, "scores": rng.random(n).astype(np.float32)}  # fmt: skip


def _instances() -> list[Instance]:
    def inst(label: str, score: float, lo: list[float], hi: list[float], n: int) -> Instance:
        lo_m, hi_m = np.array(lo, np.float32), np.array(hi, np.float32)
        return Instance(label, score, (lo_m + hi_m) / 2, lo_m, hi_m, np.arange(n))

    return [inst("chair", np.float32(0.8712345), [0.8, 1.7, 0.0], [1.2, 2.3, 1.0], 40),
            inst("mug", 0.41, [0.1, -0.3, 0.9], [0.1, -0.3, 0.9], 1),  # one voxel
            inst("table", 0.055, [-2.0, 0.5, 0.0], [-0.8, 1.3, 0.75], 300)]  # fmt: skip


def test_clouds_agree(tmp_path: Path) -> None:
    arrays = _cloud_arrays()
    live = [
        cv.arrays_to_cloud(**arrays, frame_id="odom", stamp_ns=_STAMP_NS),
        cv.arrays_to_cloud(arrays["points_m"][:5], frame_id="odom", stamp_ns=_STAMP_NS),
        cv.arrays_to_cloud(np.zeros((0, 3), np.float32), frame_id="odom", stamp_ns=_STAMP_NS),
    ]
    with ResultBagWriter(tmp_path / "bag", frame_id="odom") as writer:
        writer.write_cloud("/cloud", _STAMP_NS, **arrays)
        writer.write_cloud("/cloud", _STAMP_NS, arrays["points_m"][:5])
        writer.write_cloud("/cloud", _STAMP_NS, np.zeros((0, 3), np.float32))
    bag = _read(tmp_path / "bag")["/cloud"]
    assert len(bag) == len(live)
    for i, (ours, theirs) in enumerate(zip(live, bag, strict=True)):
        assert_same_message(ours, theirs, f"cloud[{i}]")
    assert not live[0].is_dense and live[1].is_dense and live[0].width == 40
    assert len(live[0].data) == 40 * 24


@pytest.mark.parametrize(
    ("namespace", "style"),
    [("query", MarkerStyle()), ("q2", MarkerStyle(min_box_size_m=0.3, text_height_m=0.25,
                                                  box_alpha=0.8))],
    ids=["defaults", "styled"],
)  # fmt: skip
def test_markers_agree(tmp_path: Path, namespace: str, style: MarkerStyle) -> None:
    instances = _instances()
    live = [
        cv.query_markers(cv.instances_to_msgs(answer), frame_id="odom", stamp_ns=_STAMP_NS,
                         namespace=namespace, min_box_size_m=style.min_box_size_m,
                         text_height_m=style.text_height_m, box_alpha=style.box_alpha)
        for answer in (instances, [])
    ]  # fmt: skip
    with ResultBagWriter(tmp_path / "bag", frame_id="odom") as writer:
        for answer in (instances, []):
            writer.write_markers("/markers", _STAMP_NS, answer, namespace=namespace, style=style)
    bag = _read(tmp_path / "bag")["/markers"]
    for i, (ours, theirs) in enumerate(zip(live, bag, strict=True)):
        assert_same_message(ours, theirs, f"markers[{i}]")
    assert [len(m.markers) for m in live] == [7, 1]
    assert [m.text for m in live[0].markers[2::2]] == ["chair 0.87", "mug 0.41", "table 0.06"]


def test_the_walk_catches_a_difference(tmp_path: Path) -> None:
    with ResultBagWriter(tmp_path / "bag", frame_id="odom") as writer:
        writer.write_markers("/markers", _STAMP_NS, _instances())
    (bag,) = _read(tmp_path / "bag")["/markers"]
    live = cv.query_markers(cv.instances_to_msgs(_instances()), frame_id="odom",
                            stamp_ns=_STAMP_NS)  # fmt: skip
    assert_same_message(live, bag)
    live.markers[3].color.a = 0.36
    with pytest.raises(AssertionError, match=r"markers\[3\]\.color\.a"):
        assert_same_message(live, bag)
    live.markers[3].color.a = 0.35
    live.markers[4].lifetime.sec = 1
    with pytest.raises(AssertionError, match=r"markers\[4\]\.lifetime\.sec"):
        assert_same_message(live, bag)

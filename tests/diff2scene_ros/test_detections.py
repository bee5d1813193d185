"""Query instances → vision_msgs/Detection3DArray: fields, order, bad input, the wire format."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip(
    "vision_msgs",
    reason="vision_msgs is not built: run `make setup` and use the Makefile's RUN_ENV",
)

from rclpy.serialization import deserialize_message, serialize_message
from vision_msgs.msg import Detection3DArray

from diff2scene.errors import InputError
from diff2scene_ros import conversions as cv
from diff2scene_ros.detections import instance_msgs_to_detections, instances_to_detections

pytestmark = pytest.mark.ros


@dataclass(frozen=True)
class Inst:
    label: str
    score: float
    centroid_m: tuple[float, float, float]
    box_size_m: tuple[float, float, float]
    num_points: int = 10


ANSWER = [
    Inst("chair", 0.9, (1.0, 2.0, 0.4), (0.5, 0.6, 0.8)),
    Inst("table", 0.35, (-0.5, 1.0, 0.375), (1.2, 0.8, 0.75)),
]


def test_each_instance_becomes_one_detection_in_order() -> None:
    out = instances_to_detections(ANSWER, frame_id="map", stamp_ns=12_500_000_001)
    assert out.header.frame_id == "map"
    assert cv.stamp_to_ns(out.header.stamp) == 12_500_000_001
    assert len(out.detections) == 2
    for det, inst in zip(out.detections, ANSWER, strict=True):
        assert det.header == out.header
        assert len(det.results) == 1
        hyp = det.results[0]
        assert hyp.hypothesis.class_id == inst.label
        assert hyp.hypothesis.score == pytest.approx(inst.score)
        centre = det.bbox.center.position
        assert (centre.x, centre.y, centre.z) == pytest.approx(inst.centroid_m)
        assert hyp.pose.pose == det.bbox.center
        q = det.bbox.center.orientation
        assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)  # boxes are along the map axes
        size = det.bbox.size
        assert (size.x, size.y, size.z) == pytest.approx(inst.box_size_m)
        assert det.id == ""


def test_detections_repeat_the_service_answer_exactly() -> None:
    msgs = cv.instances_to_msgs(ANSWER)
    out = instance_msgs_to_detections(msgs, frame_id="odom", stamp_ns=7)
    assert out == instances_to_detections(ANSWER, frame_id="odom", stamp_ns=7)
    for det, inst in zip(out.detections, msgs, strict=True):
        p, s = det.bbox.center.position, det.bbox.size
        assert (p.x, p.y, p.z) == (inst.centroid.x, inst.centroid.y, inst.centroid.z)
        assert (s.x, s.y, s.z) == (inst.box_size.x, inst.box_size.y, inst.box_size.z)
        assert det.results[0].hypothesis.score == inst.score


def test_empty_answer_is_an_empty_array_with_the_map_header() -> None:
    out = instances_to_detections([], frame_id="map", stamp_ns=0)
    assert out.detections == []
    assert out.header.frame_id == "map"


@pytest.mark.parametrize(
    "bad",
    [
        Inst("x", 0.5, (float("nan"), 0.0, 0.0), (1.0, 1.0, 1.0)),
        Inst("x", 0.5, (0.0, 0.0, 0.0), (1.0, -1.0, 1.0)),
        Inst("x", 0.5, (0.0, 0.0), (1.0, 1.0, 1.0)),  # type: ignore[arg-type]
    ],
    ids=["nan_centroid", "negative_size", "two_coordinates"],
)
def test_bad_instances_are_rejected(bad: Inst) -> None:
    with pytest.raises(InputError) as err:
        instances_to_detections([ANSWER[0], bad], frame_id="map", stamp_ns=0)
    assert err.value.reason == "bad_instance"


def test_non_finite_score_in_a_message_is_rejected() -> None:
    msgs = cv.instances_to_msgs(ANSWER)
    msgs[1].score = float("inf")
    with pytest.raises(InputError, match="bad_instance"):
        instance_msgs_to_detections(msgs, frame_id="map", stamp_ns=0)


def test_serialises_as_a_detection3darray() -> None:
    out = instances_to_detections(ANSWER, frame_id="map", stamp_ns=3)
    wire = serialize_message(out)
    assert deserialize_message(wire, Detection3DArray) == out

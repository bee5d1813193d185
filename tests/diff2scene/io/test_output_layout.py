"""The outputs' content, without any message package: cloud bytes, markers, detections."""

from dataclasses import dataclass

import numpy as np
import pytest

from diff2scene.errors import InputError
from diff2scene.io import output_layout as layout
from diff2scene.io.output_layout import (
    CLOUD_DTYPE,
    HIGHLIGHT_RGB,
    InstanceContent,
    MarkerAction,
    MarkerStyle,
    MarkerType,
    PointFieldType,
)


@dataclass(frozen=True)
class Found:
    label: str
    score: float
    centroid_m: tuple[float, ...]
    box_size_m: tuple[float, ...]
    num_points: int = 10


def _content(label: str = "chair", score: float = 0.875,
             centroid: tuple[float, float, float] = (1.0, 2.0, 0.5),
             size: tuple[float, float, float] = (0.5, 0.6, 1.0)) -> InstanceContent:  # fmt: skip
    return InstanceContent(label=label, score=score, centroid_m=centroid, box_size_m=size,
                           point_count=10)  # fmt: skip


# --------------------------------------------------------------------------- cloud


def test_cloud_fields_are_the_24_byte_record() -> None:
    assert [(f.name, f.offset, f.datatype, f.count) for f in layout.CLOUD_FIELDS] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1), ("label", 16, 6, 1),
        ("score", 20, 7, 1),
    ]  # fmt: skip
    assert CLOUD_DTYPE.itemsize == 24
    assert [f.dtype for f in layout.CLOUD_FIELDS] == [CLOUD_DTYPE[f.name].str
                                                       for f in layout.CLOUD_FIELDS]  # fmt: skip


def test_labelled_cloud_bytes() -> None:
    pts = np.array([[1.0, 2.0, 3.0], [-1.0, np.nan, 0.5]], np.float32)
    rgb = np.array([[255, 0, 0], [1, 2, 3]], np.uint8)
    c = layout.labelled_cloud(pts, rgb=rgb, labels=np.array([7, layout.UNKNOWN_LABEL]),
                              scores=np.array([0.25, 1.0]))  # fmt: skip
    assert (c.height, c.width, c.point_step, c.row_step) == (1, 2, 24, 48)
    assert not c.is_bigendian and not c.is_dense  # a NaN coordinate
    raw = np.frombuffer(c.data, np.uint8).reshape(2, 24)
    assert raw[:, 0:12].copy().view("<f4").tobytes() == pts.astype("<f4").tobytes()
    assert [hex(b) for b in raw[:, 12:16].copy().view("<u4").ravel()] == ["0xff0000", "0x10203"]
    assert raw[:, 16:20].copy().view("<u4").ravel().tolist() == [7, 0xFFFFFFFF]
    assert raw[:, 20:24].copy().view("<f4").ravel().tolist() == [0.25, 1.0]
    np.testing.assert_array_equal(layout.unpack_rgb(raw[:, 12:16].copy().view("<f4").ravel()),
                                  rgb)  # fmt: skip


def test_cloud_defaults_and_empty() -> None:
    c = layout.labelled_cloud(np.zeros((3, 3), np.float32))
    rec = np.frombuffer(c.data, CLOUD_DTYPE)
    np.testing.assert_array_equal(layout.unpack_rgb(rec["rgb"]), np.full((3, 3), 200))
    assert rec["label"].tolist() == [0, 0, 0] and rec["score"].tolist() == [0.0] * 3
    assert c.is_dense
    empty = layout.labelled_cloud(np.zeros((0, 3), np.float32))
    assert (empty.width, empty.row_step, empty.data, empty.is_dense) == (0, 0, b"", True)


def test_cloud_record_refuses_bad_shapes() -> None:
    pts = np.zeros((3, 3), np.float32)
    with pytest.raises(InputError, match="bad_points_array"):
        layout.cloud_record(np.zeros((3, 2)))
    with pytest.raises(InputError, match="cloud_size_mismatch"):
        layout.cloud_record(pts, labels=np.zeros(4, np.uint32))
    with pytest.raises(InputError, match="cloud_size_mismatch"):
        layout.cloud_record(pts, rgb=np.zeros((3, 4), np.uint8))
    with pytest.raises(InputError, match="bad_labels"):
        layout.cloud_record(pts, labels=np.array([0, -1, 2]))


# --------------------------------------------------------------------------- instances


def test_instance_contents_are_plain_floats_in_order() -> None:
    found = [Found("chair", np.float32(0.875), np.array([1, 2, 0.5], np.float32), (0.5, 0.6, 1.0)),
             Found("lamp", 0.5, (-1.0, 0.0, 1.5), (0.0, 0.0, 0.0), 1)]  # fmt: skip
    out = layout.instance_contents(found)
    assert out == [
        InstanceContent("chair", 0.875, (1.0, 2.0, 0.5), (0.5, 0.6, 1.0), 10),
        InstanceContent("lamp", 0.5, (-1.0, 0.0, 1.5), (0.0, 0.0, 0.0), 1),
    ]
    assert all(type(v) is float for c in out for v in (c.score, *c.centroid_m, *c.box_size_m))


@pytest.mark.parametrize(
    "bad",
    [
        Found("x", 0.5, (np.nan, 0.0, 0.0), (1.0, 1.0, 1.0)),
        Found("x", 0.5, (0.0, 0.0), (1.0, 1.0, 1.0)),
        Found("x", 0.5, (0.0, 0.0, 0.0), (1.0, -1.0, 1.0)),
        Found("x", 0.5, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), -1),
    ],
    ids=["nan_centroid", "two_coordinates", "negative_size", "negative_count"],
)
def test_instance_contents_reject_bad_geometry(bad: Found) -> None:
    with pytest.raises(InputError) as err:
        layout.instance_contents([Found("ok", 0.5, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), bad])
    assert err.value.reason == "bad_instance"


# --------------------------------------------------------------------------- markers


def test_markers_delete_all_then_a_box_and_a_text_per_instance() -> None:
    one_voxel = _content("lamp", 0.5, (-1.0, 0.0, 1.5), (0.0, 0.0, 0.0))
    markers = layout.query_marker_contents([_content(), one_voxel])
    clear = markers[0]
    assert (clear.id, clear.action, clear.type, clear.ns) == (
        0, MarkerAction.DELETEALL, MarkerType.ARROW, "query"
    )  # fmt: skip
    assert [m.type for m in markers[1:]] == [MarkerType.CUBE, MarkerType.TEXT_VIEW_FACING] * 2
    assert [m.id for m in markers] == [0, 1, 2, 3, 4]
    assert {m.action for m in markers[1:]} == {MarkerAction.ADD}
    assert all(m.orientation_xyzw == (0.0, 0.0, 0.0, 1.0) for m in markers)
    assert all(m.lifetime_ns == 0 for m in markers)
    box, text = markers[1], markers[2]
    assert box.position_m == (1.0, 2.0, 0.5) and box.scale_m == (0.5, 0.6, 1.0)
    r, g, b = (v / 255.0 for v in HIGHLIGHT_RGB)
    assert box.color_rgba == (r, g, b, 0.35) and box.text == ""
    assert text.text == "chair 0.88" and text.color_rgba == (1.0, 1.0, 1.0, 1.0)
    assert text.position_m == (1.0, 2.0, 0.5 + 0.5 + 0.12)  # one text line above the box top
    assert text.scale_m == (0.0, 0.0, 0.12)
    assert markers[3].scale_m == (0.02, 0.02, 0.02)  # a one-voxel instance stays visible
    assert markers[4].position_m[2] == 1.5 + 0.01 + 0.12


def test_markers_style_colours_and_namespace() -> None:
    style = MarkerStyle(min_box_size_m=0.1, text_height_m=0.3, box_alpha=0.8)
    colors = np.array([[255, 0, 0]], np.uint8)
    markers = layout.query_marker_contents([_content(size=(0.05, 1.0, 1.0))], namespace="q2",
                                           colors=colors, style=style)  # fmt: skip
    assert {m.ns for m in markers} == {"q2"}
    assert markers[1].color_rgba == (1.0, 0.0, 0.0, 0.8)
    assert markers[1].scale_m == (0.1, 1.0, 1.0)
    assert markers[2].scale_m == (0.0, 0.0, 0.3)
    assert len(layout.query_marker_contents([])) == 1  # an empty answer still clears the old
    with pytest.raises(InputError, match="bad_marker_colors"):
        layout.query_marker_contents([_content()], colors=np.zeros((2, 3), np.uint8))


# --------------------------------------------------------------------------- detections


def test_detections_repeat_the_instances() -> None:
    (d,) = layout.detection_contents([_content()])
    assert (d.class_id, d.score, d.position_m, d.size_m) == ("chair", 0.875, (1.0, 2.0, 0.5),
                                                             (0.5, 0.6, 1.0))  # fmt: skip
    assert d.orientation_xyzw == (0.0, 0.0, 0.0, 1.0)
    assert layout.detection_contents([]) == []


@pytest.mark.parametrize(
    "bad",
    [_content(score=float("inf")), _content(centroid=(0.0, float("nan"), 0.0)),
     _content(size=(1.0, -0.1, 1.0))],
    ids=["inf_score", "nan_centroid", "negative_size"],
)  # fmt: skip
def test_detections_reject_what_a_planner_cannot_use(bad: InstanceContent) -> None:
    with pytest.raises(InputError) as err:
        layout.detection_contents([_content(), bad])
    assert err.value.reason == "bad_instance"


def test_codes_are_ints_a_message_field_accepts() -> None:
    assert PointFieldType.FLOAT32 == 7 and PointFieldType.UINT32 == 6
    assert (MarkerType.CUBE, MarkerType.TEXT_VIEW_FACING, MarkerAction.DELETEALL) == (1, 9, 3)
    assert layout.POINTFIELD_DTYPES[7] == "f4" and len(layout.POINTFIELD_DTYPES) == 8

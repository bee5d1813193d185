"""Message ↔ array conversions, on messages built in memory (no ROS graph)."""

from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip(
    "diff2scene_interfaces",
    reason="diff2scene_interfaces is not built: run `make interfaces` and use the Makefile's "
    "RUN_ENV (PYTHONPATH/LD_LIBRARY_PATH of ros2_ws/install/diff2scene_interfaces)",
)

from diff2scene_interfaces.msg import Instance
from geometry_msgs.msg import Point, Vector3
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from visualization_msgs.msg import Marker

from diff2scene.errors import InputError
from diff2scene.io.assembler import (
    decode_color_image,
    decode_depth_image,
    intrinsics_from_camera_info,
)
from diff2scene.io.messages import read_camera_info, read_image, read_pose
from diff2scene.types import CameraIntrinsics
from diff2scene_ros import conversions as cv

# The node hands rclpy messages to the core's readers unchanged; these check them on rclpy's
# message classes (the bag tests check them on rosbags').


def to_rgb(msg: Image) -> np.ndarray:
    return decode_color_image(read_image(msg))


def to_depth(msg: Image) -> np.ndarray:
    return decode_depth_image(read_image(msg))[0]


def to_intrinsics(msg: CameraInfo) -> CameraIntrinsics:
    return intrinsics_from_camera_info(read_camera_info(msg))


def to_matrix(msg: object) -> np.ndarray:
    return read_pose(msg).T_parent_child


def _image(pixels: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False) -> Image:
    """Image message whose rows carry ``pad`` garbage bytes after the pixels."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    dtype = rows.dtype.newbyteorder(">" if bigendian else "<")
    raw = np.ascontiguousarray(rows.astype(dtype)).view(np.uint8).reshape(h, -1)
    padded = np.concatenate([raw, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return Image(
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=bigendian,
        step=padded.shape[1],
        data=array.array("B", padded.tobytes()),
    )


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- colour images


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_rgb_round_trip(rgb: np.ndarray, encoding: str) -> None:
    msg = cv.rgb_to_image(rgb, frame_id="cam", stamp_ns=1_500_000_000, encoding=encoding)
    assert (msg.encoding, msg.height, msg.width, msg.step) == (encoding, 5, 7, 21)
    assert msg.header.frame_id == "cam"
    assert cv.stamp_to_ns(msg.header.stamp) == 1_500_000_000
    np.testing.assert_array_equal(to_rgb(msg), rgb)


@pytest.mark.parametrize(
    ("encoding", "order"), [("rgb8", [0, 1, 2]), ("bgr8", [2, 1, 0]), ("rgba8", [0, 1, 2]),
                            ("bgra8", [2, 1, 0])]
)
def test_color_encodings_with_row_padding(rgb: np.ndarray, encoding: str, order: list[int]) -> None:
    channels = rgb[:, :, order]
    if encoding.endswith("a8"):
        channels = np.concatenate([channels, np.full((5, 7, 1), 77, np.uint8)], axis=2)
    msg = _image(channels, encoding, pad=3)
    assert msg.step == 7 * channels.shape[2] + 3
    np.testing.assert_array_equal(to_rgb(msg), rgb)


def test_mono8_spreads_grey_with_padding() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_rgb(_image(grey, "mono8", pad=4))
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_color_rejects_bad_encoding_and_sizes(rgb: np.ndarray) -> None:
    msg = _image(rgb, "yuv422")
    with pytest.raises(InputError) as err:
        to_rgb(msg)
    assert err.value.reason == "bad_color_encoding"

    short = cv.rgb_to_image(rgb)
    short.data = array.array("B", bytes(short.data)[:-30])
    with pytest.raises(InputError) as err:
        to_rgb(short)
    assert err.value.reason == "truncated_image"

    narrow = cv.rgb_to_image(rgb)
    narrow.step = 7 * 3 - 1
    with pytest.raises(InputError) as err:
        to_rgb(narrow)
    assert err.value.reason == "bad_image_step"

    with pytest.raises(InputError):
        cv.rgb_to_image(rgb[:, :, 0])
    with pytest.raises(InputError):
        cv.rgb_to_image(rgb, encoding="rgba8")


# --------------------------------------------------------------------------- depth images


def test_depth_16uc1_is_millimetres_round_trip() -> None:
    depth = np.array([[0.0, 0.5004, 1.2346], [np.nan, 65.6, 3.0]], dtype=np.float32)
    msg = cv.depth_to_image(depth, encoding="16UC1")
    assert (msg.encoding, msg.step) == ("16UC1", 6)
    out = to_depth(msg)
    assert out.dtype == np.float32
    # mm rounding; NaN and depths past the uint16 range become "no return" (0)
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.235], [0.0, 0.0, 3.0]], atol=1e-6)


def test_depth_32fc1_invalid_pixels_become_zero() -> None:
    depth = np.array([[1.5, np.nan, np.inf], [-2.0, 0.25, 7.0]], dtype=np.float32)
    out = to_depth(cv.depth_to_image(depth, encoding="32FC1"))
    np.testing.assert_array_equal(out, [[1.5, 0.0, 0.0], [0.0, 0.25, 7.0]])


def test_depth_padding_and_big_endian() -> None:
    mm = np.array([[1000, 2500, 0], [40, 65535, 7]], dtype=np.uint16)
    out = to_depth(_image(mm, "16UC1", pad=2, bigendian=True))
    np.testing.assert_allclose(out, mm.astype(np.float32) / 1000.0, rtol=1e-6)
    metres = np.array([[0.5, 1.0], [2.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(to_depth(_image(metres, "32FC1", pad=4)), metres)


def test_depth_rejects_bad_encoding_and_truncation() -> None:
    with pytest.raises(InputError) as err:
        to_depth(_image(np.zeros((2, 2), np.uint8), "mono8"))
    assert err.value.reason == "bad_depth_encoding"
    msg = cv.depth_to_image(np.ones((4, 4), np.float32))
    msg.height = 5
    with pytest.raises(InputError) as err:
        to_depth(msg)
    assert err.value.reason == "truncated_image"
    with pytest.raises(InputError):
        cv.depth_to_image(np.ones((4, 4), np.float32), encoding="16SC1")


# --------------------------------------------------------------------------- camera info


def test_camera_info_round_trip() -> None:
    intr = CameraIntrinsics(width=640, height=480, fx=525.0, fy=524.0, cx=319.5, cy=239.5)
    msg = cv.intrinsics_to_camera_info(intr, frame_id="cam_optical", stamp_ns=42)
    assert to_intrinsics(msg) == intr


def test_camera_info_uses_k_when_p_unset_and_applies_binning_and_roi() -> None:
    msg = CameraInfo(width=640, height=480, k=[500.0, 0, 320.0, 0, 500.0, 240.0, 0, 0, 1])
    assert to_intrinsics(msg) == CameraIntrinsics(640, 480, 500.0, 500.0, 320, 240)
    msg.binning_x = msg.binning_y = 2
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 40, 400, 300
    intr = to_intrinsics(msg)
    assert intr == CameraIntrinsics(200, 150, 250.0, 250.0, 110.0, 100.0)


def test_camera_info_rejects_uncalibrated() -> None:
    with pytest.raises(InputError) as err:
        to_intrinsics(CameraInfo(width=640, height=480))
    assert err.value.reason == "bad_camera_info"


# --------------------------------------------------------------------------- poses


def _random_transform(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = q, rng.normal(size=3)
    return T


def test_pose_stamped_and_transform_round_trip() -> None:
    T = _random_transform(1)
    ps = cv.matrix_to_pose_stamped(T, frame_id="map", stamp_ns=3)
    np.testing.assert_allclose(to_matrix(ps), T, atol=1e-12)
    ts = cv.matrix_to_transform_stamped(T, frame_id="map", child_frame_id="cam")
    assert ts.child_frame_id == "cam"
    np.testing.assert_allclose(to_matrix(ts), T, atol=1e-12)


def test_odometry_pose() -> None:
    T = _random_transform(2)
    odom = Odometry()
    odom.pose.pose = cv.matrix_to_pose_stamped(T).pose
    np.testing.assert_allclose(to_matrix(odom), T, atol=1e-12)


def test_pose_rejects_zero_quaternion_and_wrong_types() -> None:
    ps = cv.matrix_to_pose_stamped(np.eye(4))
    ps.pose.orientation.w = 0.0
    with pytest.raises(InputError) as err:
        to_matrix(ps)
    assert err.value.reason == "bad_quaternion"
    with pytest.raises(InputError):
        to_matrix(Vector3())
    with pytest.raises(InputError):
        cv.matrix_to_pose_stamped(np.full((4, 4), np.nan))


def test_a_refused_pose_names_its_stamp() -> None:
    # the node counts the refusal with it, so that rejected_nonfinite_pose says which message
    ps = cv.matrix_to_pose_stamped(np.eye(4), frame_id="map", stamp_ns=7)
    ps.pose.position.x = float("nan")
    with pytest.raises(InputError) as err:
        read_pose(ps)
    assert (err.value.reason, err.value.stamp_ns) == ("nonfinite_pose", 7)


def test_stamp_conversion() -> None:
    assert cv.stamp_to_ns(cv.ns_to_stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    with pytest.raises(InputError):
        cv.ns_to_stamp(-1)


# --------------------------------------------------------------------------- point clouds


def test_cloud_round_trip_all_fields() -> None:
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    labels = rng.integers(0, 200, 50).astype(np.uint32)
    scores = rng.random(50).astype(np.float32)
    msg = cv.arrays_to_cloud(pts, rgb=rgb, labels=labels, scores=scores, frame_id="map",
                             stamp_ns=9)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "label", "score"]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 50, 24, 1200)
    assert msg.header.frame_id == "map" and msg.is_dense
    back = cv.cloud_to_arrays(msg)
    np.testing.assert_array_equal(back.points_m, pts)
    np.testing.assert_array_equal(back.rgb, rgb)
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.scores, scores)


def test_rgb_packing_matches_rviz_layout() -> None:
    msg = cv.arrays_to_cloud(np.zeros((2, 3), np.float32),
                             rgb=np.array([[255, 0, 0], [1, 2, 3]], np.uint8))
    rgb_field = next(f for f in msg.fields if f.name == "rgb")
    assert rgb_field.datatype == PointField.FLOAT32
    raw = np.frombuffer(msg.data, np.uint8).reshape(2, msg.point_step)
    bits = raw[:, rgb_field.offset : rgb_field.offset + 4].copy().view("<u4").ravel()
    assert [hex(b) for b in bits] == ["0xff0000", "0x10203"]


def test_empty_cloud_round_trip() -> None:
    back = cv.cloud_to_arrays(cv.arrays_to_cloud(np.zeros((0, 3), np.float32)))
    assert back.points_m.shape == (0, 3)
    assert back.rgb is not None and back.rgb.shape == (0, 3)
    assert back.labels is not None and back.labels.shape == (0,)
    assert back.scores is not None and back.scores.shape == (0,)
    assert cv.cloud_to_arrays(PointCloud2()).points_m.shape == (0, 3)


def test_cloud_from_foreign_layout_organised_padded_big_endian() -> None:
    """A driver-style organised cloud: x y z intensity rgba(uint32), big-endian, padded rows."""
    h, w, point_step, row_step = 2, 3, 20, 64
    rng = np.random.default_rng(4)
    xyz = rng.normal(size=(h, w, 3)).astype(">f4")
    colors = rng.integers(0, 256, (h, w, 3), dtype=np.uint32)
    packed = ((colors[..., 0] << 16) | (colors[..., 1] << 8) | colors[..., 2] | (0xFF << 24))
    buf = np.zeros((h, row_step), np.uint8)
    for r in range(h):
        for c in range(w):
            base = c * point_step
            buf[r, base : base + 12] = np.frombuffer(xyz[r, c].tobytes(), np.uint8)
            buf[r, base + 16 : base + 20] = np.frombuffer(
                np.array(packed[r, c], dtype=">u4").tobytes(), np.uint8
            )
    fields = [PointField(name=n, offset=o, datatype=PointField.FLOAT32, count=1)
              for n, o in (("x", 0), ("y", 4), ("z", 8), ("intensity", 12))]
    fields.append(PointField(name="rgba", offset=16, datatype=PointField.UINT32, count=1))
    msg = PointCloud2(height=h, width=w, fields=fields, is_bigendian=True, point_step=point_step,
                      row_step=row_step, data=array.array("B", buf.tobytes()))
    back = cv.cloud_to_arrays(msg)
    np.testing.assert_array_equal(back.points_m, xyz.reshape(-1, 3).astype(np.float32))
    np.testing.assert_array_equal(back.rgb, colors.reshape(-1, 3))
    assert back.labels is None and back.scores is None


def test_cloud_rejects_bad_input() -> None:
    with pytest.raises(InputError) as err:
        cv.arrays_to_cloud(np.zeros((4, 2), np.float32))
    assert err.value.reason == "bad_points_array"
    with pytest.raises(InputError) as err:
        cv.arrays_to_cloud(np.zeros((4, 3), np.float32), labels=np.zeros(3, np.uint32))
    assert err.value.reason == "cloud_size_mismatch"
    with pytest.raises(InputError):
        cv.arrays_to_cloud(np.zeros((2, 3), np.float32), labels=np.array([0, -1]))

    msg = cv.arrays_to_cloud(np.zeros((4, 3), np.float32))
    msg.data = array.array("B", bytes(msg.data)[:50])
    with pytest.raises(InputError) as err:
        cv.cloud_to_arrays(msg)
    assert err.value.reason == "truncated_cloud"

    no_z = cv.arrays_to_cloud(np.zeros((4, 3), np.float32))
    no_z.fields = [f for f in no_z.fields if f.name != "z"]
    with pytest.raises(InputError) as err:
        cv.cloud_to_arrays(no_z)
    assert err.value.reason == "bad_cloud_field"

    overrun = cv.arrays_to_cloud(np.zeros((4, 3), np.float32))
    overrun.fields[5].offset = 22
    with pytest.raises(InputError) as err:
        cv.cloud_to_arrays(overrun)
    assert err.value.reason == "bad_cloud_field"


# --------------------------------------------------------------------------- query results


@dataclass
class _Found:
    label: str
    score: float
    centroid_m: tuple[float, float, float]
    box_size_m: tuple[float, float, float]
    num_points: int


def test_instances_and_markers() -> None:
    found = [
        _Found("chair", 0.875, (1.0, 2.0, 0.5), (0.5, 0.6, 1.0), 120),
        _Found("lamp", 0.5, (-1.0, 0.0, 1.5), (0.0, 0.0, 0.0), 1),
    ]
    msgs = cv.instances_to_msgs(found)
    assert all(isinstance(m, Instance) for m in msgs)
    assert (msgs[0].label, msgs[0].point_count) == ("chair", 120)
    assert msgs[0].score == pytest.approx(0.875)
    assert (msgs[0].centroid.x, msgs[0].box_size.z) == (1.0, 1.0)

    colors = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    markers = cv.query_markers(msgs, frame_id="map", stamp_ns=5, colors=colors).markers
    assert markers[0].action == Marker.DELETEALL
    assert [m.type for m in markers[1:]] == [Marker.CUBE, Marker.TEXT_VIEW_FACING] * 2
    assert len({m.id for m in markers[1:]}) == 4
    assert markers[1].color.r == pytest.approx(1.0) and markers[3].color.b == pytest.approx(1.0)
    assert markers[2].text == "chair 0.88"
    assert markers[2].pose.position.z > markers[1].pose.position.z + 0.5
    # a degenerate (one-voxel) box stays visible
    assert min(markers[3].scale.x, markers[3].scale.y, markers[3].scale.z) >= 0.02
    assert all(m.header.frame_id == "map" for m in markers)


def test_instances_reject_bad_geometry() -> None:
    with pytest.raises(InputError):
        cv.instances_to_msgs([_Found("x", 0.5, (np.nan, 0.0, 0.0), (1.0, 1.0, 1.0), 3)])
    with pytest.raises(InputError):
        cv.instances_to_msgs([_Found("x", 0.5, (0.0, 0.0), (1.0, 1.0, 1.0), 3)])  # type: ignore[arg-type]
    with pytest.raises(InputError):
        cv.query_markers([Instance(centroid=Point(), box_size=Vector3())],
                         colors=np.zeros((2, 3), np.uint8))


def test_core_layout_codes_are_the_message_definitions() -> None:
    """The core writes these codes by hand (it may not import the message packages)."""
    from diff2scene.io.output_layout import MarkerAction, MarkerType, PointFieldType

    for code in PointFieldType:
        assert getattr(PointField, code.name) == code
    for kind in MarkerType:
        assert getattr(Marker, kind.name) == kind
    for action in MarkerAction:
        assert getattr(Marker, action.name) == action
    assert Marker().type == MarkerType.ARROW  # what a DELETEALL marker carries

from pathlib import Path

import numpy as np
import pytest

from diff2scene.errors import DataFormatError
from diff2scene.io.assembler import InputConfig
from diff2scene.io.bag import BagFrameSource, BagSourceConfig
from diff2scene.io.transforms import quat_to_matrix

from .bagfactory import bag, camera_info, image, pose_stamped, write_sequence


@pytest.mark.parametrize("mcap", [True, False], ids=["mcap", "sqlite3"])
def test_reads_synchronised_frames_with_interpolated_pose(tmp_path: Path, mcap: bool) -> None:
    path = tmp_path / "b"
    with bag(path, mcap=mcap) as b:
        write_sequence(b, 5)
    source = BagFrameSource(path)
    frames = list(source)
    assert len(frames) == 5
    f = frames[2]
    assert f.rgb.shape == (6, 8, 3) and f.rgb.dtype == np.uint8
    assert tuple(f.rgb[0, 0]) == (2, 4, 6)
    assert f.depth_m.dtype == np.float32
    assert f.depth_m[0, 0] == pytest.approx(1.002)
    assert f.intrinsics.fx == 50.0 and f.intrinsics.width == 8
    assert f.T_world_camera[0, 3] == pytest.approx(f.stamp_ns * 1e-9)
    assert [fr.stamp_ns for fr in frames] == sorted(fr.stamp_ns for fr in frames)
    assert source.stats.delivered == 5 and source.stats.total_skipped == 0


def test_bgr_is_converted_and_topics_listed(tmp_path: Path) -> None:
    path = tmp_path / "b"
    with bag(path) as b:
        write_sequence(b, 3, color_encoding="bgr8")
    source = BagFrameSource(path)
    assert tuple(next(iter(source)).rgb[0, 0]) == (0, 0, 0)
    assert tuple(list(source)[1].rgb[0, 0]) == (1, 2, 3)
    topics = source.topics()
    assert topics["/camera/color/image_raw"] == ("sensor_msgs/msg/Image", 3)


def test_pose_from_tf_chain_with_static_optical_frame(tmp_path: Path) -> None:
    path = tmp_path / "b"
    with bag(path) as b:
        write_sequence(b, 4, pose="tf")
    frames = list(BagFrameSource(path, input_config=InputConfig(pose_source="tf")))
    assert len(frames) == 4
    T = frames[1].T_world_camera
    x = frames[1].stamp_ns * 1e-9
    np.testing.assert_allclose(T[:3, 3], [x, 1.0, 0.5], atol=1e-9)
    np.testing.assert_allclose(T[:3, :3], quat_to_matrix(-0.5, 0.5, -0.5, 0.5), atol=1e-9)
    # Optical z (forward) looks along the body's +x.
    np.testing.assert_allclose(T[:3, 2], [1.0, 0.0, 0.0], atol=1e-9)


def test_bad_messages_are_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "b"
    t = 1_000_000_000
    dt = 33_333_333
    with bag(path) as b:
        write_sequence(b, 3)  # frames 0..2 are good
        # unsupported colour encoding
        t3 = t + 3 * dt
        b.write("/camera/color/image_raw", t3, image(t3, np.zeros((6, 8, 2), np.uint8), "yuv422"))
        b.write(
            "/camera/depth/image_rect_raw", t3, image(t3, np.full((6, 8), 900, np.uint16), "16UC1")
        )
        b.write("/camera/pose", t3, pose_stamped(t3, (0, 0, 0)))
        # depth/camera_info size mismatch
        t4 = t + 4 * dt
        b.write("/camera/color/image_raw", t4, image(t4, np.zeros((4, 4, 3), np.uint8), "rgb8"))
        b.write(
            "/camera/depth/image_rect_raw", t4, image(t4, np.full((4, 4), 900, np.uint16), "16UC1")
        )
        b.write("/camera/pose", t4, pose_stamped(t4, (0, 0, 0)))
        # all-NaN depth
        t5 = t + 5 * dt
        b.write("/camera/color/image_raw", t5, image(t5, np.zeros((6, 8, 3), np.uint8), "rgb8"))
        b.write(
            "/camera/depth/image_rect_raw",
            t5,
            image(t5, np.full((6, 8), np.nan, np.float32), "32FC1"),
        )
        b.write("/camera/pose", t5, pose_stamped(t5, (0, 0, 0)))
        # a stamp going backwards
        t6 = t + 1 * dt
        b.write(
            "/camera/color/image_raw", t + 6 * dt, image(t6, np.zeros((6, 8, 3), np.uint8), "rgb8")
        )
        # a corrupt payload
        b.write_raw(
            "/camera/color/camera_info", "sensor_msgs/msg/CameraInfo", t + 7 * dt, b"\x00\x01"
        )
        # a good frame with NaN holes in float depth, then one with no pose at all
        t8 = t + 8 * dt
        depth = np.full((6, 8), 2.0, np.float32)
        depth[0, 0] = np.nan
        b.write("/camera/color/image_raw", t8, image(t8, np.zeros((6, 8, 3), np.uint8), "rgb8"))
        b.write("/camera/depth/image_rect_raw", t8, image(t8, depth, "32FC1", step_pad=3))
        b.write("/camera/pose", t8, pose_stamped(t8, (1, 2, 3)))
        t9 = t + 9 * dt
        b.write("/camera/color/image_raw", t9, image(t9, np.zeros((6, 8, 3), np.uint8), "rgb8"))
        b.write("/camera/depth/image_rect_raw", t9, image(t9, depth, "32FC1"))
    source = BagFrameSource(path)
    frames = list(source)
    # the all-NaN depth frame is assembled (all pixels invalid); the mapper skips it
    assert [f.stamp_ns for f in frames] == [t, t + dt, t + 2 * dt, t5, t8]
    assert not np.any(frames[3].depth_m > 0)
    assert frames[-1].depth_m[0, 0] == 0.0 and frames[-1].depth_m[0, 1] == 2.0
    s = source.stats.skipped
    assert s["bad_color_encoding"] == 1
    assert s["camera_info_size_mismatch"] == 1
    assert s["stale_stamp"] == 1
    assert s["missing_pose"] == 1
    assert source.assembler.rejected["undecodable_message"] == 1
    # every colour image is accounted for: a frame or one skip reason
    assert source.assembler.received["color"] == len(frames) + source.stats.total_skipped


def test_frames_wait_for_a_late_camera_info_then_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "b"
    t, dt = 1_000_000_000, 100_000_000
    n = 10  # 1 s of frames before the first CameraInfo; the wait is 0.5 s of camera time
    with bag(path) as b:
        for i in range(n):
            ti = t + i * dt
            b.write("/camera/color/image_raw", ti,
                    image(ti, np.zeros((6, 8, 3), np.uint8), "rgb8"))
            b.write("/camera/depth/image_rect_raw", ti,
                    image(ti, np.full((6, 8), 900, np.uint16), "16UC1"))
            b.write("/camera/pose", ti, pose_stamped(ti, (0, 0, 0)))
        t2 = t + n * dt
        b.write("/camera/color/camera_info", t2, camera_info(t2, 8, 6))
    source = BagFrameSource(path, input_config=InputConfig(max_pose_wait_s=0.5))
    frames = list(source)
    skipped = source.stats.skipped["missing_camera_info"]
    assert 0 < skipped < n  # the oldest gave up waiting; the newest got the late calibration
    assert len(frames) + skipped == n


def test_stride_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "b"
    with bag(path) as b:
        write_sequence(b, 10)
    frames = list(BagFrameSource(path, BagSourceConfig(frame_stride=3, max_frames=3)))
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[1].depth_m[0, 0] == pytest.approx(1.003)


def test_missing_or_corrupt_bag_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        BagFrameSource(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [")
    with pytest.raises(DataFormatError, match="cannot open"):
        list(BagFrameSource(broken))
    path = tmp_path / "b"
    with bag(path) as b:
        b.write("/camera/pose", 1, pose_stamped(1, (0, 0, 0)))
    with pytest.raises(DataFormatError, match="no colour image topic"):
        list(BagFrameSource(path))


def test_ground_truth_image_arriving_after_its_frame_is_attached(tmp_path: Path) -> None:
    path = tmp_path / "b"
    t0, dt = 1_000_000_000, 33_333_333
    with bag(path) as b:
        write_sequence(b, 3)
        for i in range(3):  # written (logged) after every colour/depth pair of the bag
            t = t0 + i * dt
            ids = np.full((6, 8), i + 1, np.int32)
            b.write("/camera/instance/image_raw", t + 10**9, image(t, ids, "32SC1"))
    frames = list(BagFrameSource(path))
    assert [int(f.instance_ids[0, 0]) for f in frames] == [1, 2, 3]  # type: ignore[index]

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from diff2scene.errors import ConfigError, DataFormatError, InputError
from diff2scene.io.assembler import (
    FrameAssembler,
    InputConfig,
    RawFrame,
    intrinsics_from_camera_info,
)
from diff2scene.io.bag import BagSourceConfig, choose_layout
from diff2scene.io.messages import CameraInfoData, ImageData, PoseData
from diff2scene.io.transforms import T_BODY_OPTICAL, pose_to_matrix, quat_to_matrix
from diff2scene.types import Frame

W, H = 8, 6
DT = 33_333_333
T0 = 1_000_000_000


def info(*, p_focal: float = 50.0, k_focal: float = 40.0, roi=(0, 0, 0, 0), binning=(0, 0),
         w: int = W, h: int = H) -> CameraInfoData:
    k = (k_focal, 0.0, 3.5, 0.0, k_focal, 2.5, 0.0, 0.0, 1.0)
    p = (p_focal, 0.0, 3.0, 0.0, 0.0, p_focal, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    return CameraInfoData(0, "cam", w, h, k, p, binning[0], binning[1], roi)


def color(t: int, value: int = 0, frame_id: str = "cam") -> ImageData:
    rgb = np.full((H, W, 3), value, np.uint8)
    return ImageData(t, frame_id, "rgb8", rgb.tobytes(), H, W, W * 3)


def depth(t: int, mm: int = 1000) -> ImageData:
    d = np.full((H, W), mm, np.uint16)
    return ImageData(t, "cam", "16UC1", d.tobytes(), H, W, W * 2)


def pose(t: int, x: float, parent: str = "map", child: str = "") -> PoseData:
    return PoseData(t, parent, child, pose_to_matrix((x, 0.0, 0.0), (0, 0, 0, 1)))


def finished(asm: FrameAssembler, raws: list[RawFrame]) -> list[Frame]:
    """The frames ``raws`` decode to, unusable ones left out (as the runtime's worker does)."""
    return [f for f in (asm.finish(r) for r in raws) if f is not None]


def feed(asm: FrameAssembler, n: int, *, skip: tuple[int, ...] = (), with_pose: bool = True):
    raws = []
    asm.add_camera_info(info())
    for i in range(n):
        t = T0 + i * DT
        if i in skip:
            continue
        raws += asm.add_color(color(t, i))
        raws += asm.add_depth(depth(t + 1_000_000, 1000 + i))
        if with_pose:
            raws += asm.add_pose(pose(t, i * 0.01))
    raws += asm.flush()
    return finished(asm, raws)


def test_intrinsics_prefer_p_then_k_and_apply_roi_and_binning() -> None:
    assert intrinsics_from_camera_info(info()).fx == 50.0
    assert intrinsics_from_camera_info(info(p_focal=0.0)).fx == 40.0
    i = intrinsics_from_camera_info(info(roi=(2, 1, 4, 4)))
    assert (i.width, i.height, i.cx, i.cy) == (4, 4, 1.0, 1.0)
    b = intrinsics_from_camera_info(info(binning=(2, 2)))
    assert (b.width, b.height, b.fx, b.cx) == (4, 3, 25.0, 1.5)
    with pytest.raises(InputError, match="bad_camera_info"):
        intrinsics_from_camera_info(info(p_focal=0.0, k_focal=0.0))


def test_frames_are_paired_posed_and_decoded() -> None:
    asm = FrameAssembler()
    frames = feed(asm, 5)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert frames[2].stamp_ns == T0 + 2 * DT
    assert frames[2].rgb[0, 0, 0] == 2 and frames[2].depth_m[0, 0] == pytest.approx(1.002)
    assert frames[2].T_world_camera[0, 3] == pytest.approx(0.02)
    assert asm.pose_used["topic"] == 5


def test_frame_waits_for_a_pose_after_its_stamp_and_interpolates() -> None:
    asm = FrameAssembler()
    asm.add_camera_info(info())
    asm.add_pose(pose(T0 - DT, 0.0))
    assert asm.add_color(color(T0)) == []
    assert asm.add_depth(depth(T0)) == []  # no pose sample after T0 yet: it waits
    raws = asm.add_pose(pose(T0 + DT, 2.0))
    assert len(raws) == 1
    np.testing.assert_allclose(raws[0].T_world_camera[0, 3], 1.0)


def test_missing_pose_is_skipped_after_the_wait_and_counted() -> None:
    asm = FrameAssembler(InputConfig(max_pose_wait_s=0.1))
    frames = feed(asm, 10, with_pose=False)
    assert frames == []
    assert asm.stats.skipped["missing_pose"] == 10


def test_gaps_in_the_camera_stamps_are_counted_and_accounting_closes() -> None:
    asm = FrameAssembler()
    frames = feed(asm, 30, skip=(10, 11, 12, 20))
    assert len(frames) == 26
    assert asm.input_gaps == 4
    counters = asm.counters()
    assert counters["input_loss_ratio"] == pytest.approx(4 / 30)
    published = 30
    assert published == len(frames) + asm.stats.total_skipped + asm.input_gaps


def test_tf_chain_is_chained_and_interpolated() -> None:
    asm = FrameAssembler(InputConfig(pose_source="auto"))
    asm.add_camera_info(info())
    static = [
        PoseData(0, "map", "odom", pose_to_matrix((0.0, 1.0, 0.0), (0, 0, 0, 1))),
        PoseData(0, "base_link", "camera_link", pose_to_matrix((0.0, 0.0, 0.5), (0, 0, 0, 1))),
        PoseData(0, "camera_link", "cam", T_BODY_OPTICAL_POSE),
    ]
    asm.add_transforms(static, static=True)
    raws = []
    for i in range(4):
        t = T0 + i * DT
        raws += asm.add_transforms([pose(t - DT // 2, 0.1 * i, "odom", "base_link")])
        raws += asm.add_color(color(t))
        raws += asm.add_depth(depth(t))
    raws += asm.add_transforms([pose(T0 + 4 * DT, 0.4, "odom", "base_link")])
    frames = finished(asm, raws)
    assert len(frames) == 4 and asm.pose_used["tf"] == 4
    T = frames[1].T_world_camera
    # halfway between samples 1 (0.1 m at t - DT/2) and 2 (0.2 m at t + DT/2)
    np.testing.assert_allclose(T[:3, 3], [0.15, 1.0, 0.5], atol=1e-9)
    np.testing.assert_allclose(T[:3, 2], [1.0, 0.0, 0.0], atol=1e-9)  # optical z = body x


T_BODY_OPTICAL_POSE = pose_to_matrix((0.0, 0.0, 0.0), (-0.5, 0.5, -0.5, 0.5))


def test_odometry_of_a_body_frame_is_linked_to_the_camera_through_tf() -> None:
    asm = FrameAssembler()
    asm.add_camera_info(info())
    asm.add_transforms([PoseData(0, "base_link", "cam", T_BODY_OPTICAL_POSE)], static=True)
    raws = []
    for i in range(3):
        t = T0 + i * DT
        raws += asm.add_pose(pose(t, float(i), "odom", "base_link"))
        raws += asm.add_color(color(t))
        raws += asm.add_depth(depth(t))
    raws += asm.flush()
    frames = finished(asm, raws)
    assert len(frames) == 3
    np.testing.assert_allclose(frames[1].T_world_camera[:3, 2], [1.0, 0.0, 0.0], atol=1e-9)
    # the odometry frame is not linked to "map": it becomes the map frame, said once
    assert asm.map_frame == "odom" and asm.rejected["pose_frame_adopted"] == 1


def test_body_convention_applies_the_optical_rotation() -> None:
    asm = FrameAssembler(InputConfig(pose_convention="body"))
    frames = feed(asm, 2)
    np.testing.assert_allclose(frames[0].T_world_camera[:3, :3], T_BODY_OPTICAL[:3, :3])


def test_a_single_wild_stamp_is_skipped_and_a_confirmed_reset_accepted() -> None:
    T0 = 100 * 10**9
    asm = FrameAssembler()
    asm.add_camera_info(info())
    raws = []
    for i in range(5):
        t = T0 + i * DT
        raws += asm.add_color(color(t)) + asm.add_depth(depth(t)) + asm.add_pose(pose(t, 0.0))
    future = T0 + 3600 * 10**9
    raws += asm.add_color(color(future))
    assert asm.stats.skipped["stamp_jump"] == 1
    for i in range(5, 8):
        t = T0 + i * DT
        raws += asm.add_color(color(t)) + asm.add_depth(depth(t)) + asm.add_pose(pose(t, 0.0))
    # a bag loop: time goes back for good
    for i in range(6):
        t = T0 - 60 * 10**9 + i * DT
        raws += asm.add_color(color(t)) + asm.add_depth(depth(t)) + asm.add_pose(pose(t, 0.0))
    raws += asm.flush()
    frames = finished(asm, raws)
    assert asm.rejected["time_reset"] == 1
    assert asm.stats.skipped["stamp_jump"] == 1 + 2  # the wild one, then two before the reset
    assert len(frames) == 8 + 4
    assert asm.received["color"] == len(frames) + asm.stats.total_skipped + asm.input_gaps


def test_a_listener_is_told_of_every_count_with_the_stamp_counted() -> None:
    # Counters say how many; the listener says which input went where, so a fault injector can
    # find its own messages among everything else counted under the same key.
    journal: list[tuple[str, int | None]] = []
    asm = FrameAssembler(InputConfig(max_pose_wait_s=0.0))
    asm.listen(lambda key, stamp: journal.append((key, stamp)))
    raws = asm.add_color(color(T0)) + asm.add_depth(depth(T0))  # before any calibration
    raws += asm.add_camera_info(replace(info(p_focal=0.0, k_focal=0.0), stamp_ns=T0 + 1))
    raws += asm.add_camera_info(info())
    for i in range(1, 6):
        t = T0 + i * DT
        raws += asm.add_pose(pose(t, 0.0)) + asm.add_color(color(t)) + asm.add_depth(depth(t))
    raws += asm.add_color(color(T0 + 2 * DT + 5))  # stale: older than the newest colour
    raws += asm.add_color(color(T0 + 3600 * 10**9))  # a wild stamp
    bad = ImageData(T0 + 6 * DT, "cam", "yuv422", bytes(2 * W * H), H, W, 2 * W)
    raws += asm.add_pose(pose(T0 + 6 * DT, 0.0)) + asm.add_color(bad)
    raws += asm.add_depth(depth(T0 + 6 * DT)) + asm.flush()
    finished(asm, raws)
    reader_refused = InputError("nonfinite_pose", stamp_ns=T0 + 3)  # as the node counts it
    asm.reject(reader_refused.reason, stamp_ns=reader_refused.stamp_ns)
    assert ("skipped_missing_camera_info", T0) in journal
    assert ("rejected_bad_camera_info", T0 + 1) in journal
    assert ("skipped_stale_stamp", T0 + 2 * DT + 5) in journal
    assert ("skipped_stamp_jump", T0 + 3600 * 10**9) in journal
    assert ("skipped_bad_color_encoding", T0 + 6 * DT) in journal
    assert ("rejected_nonfinite_pose", T0 + 3) in journal
    # one entry per count, and none elsewhere: the journal is the counters, itemised
    counted = {k: v for k, v in asm.counters().items()
               if k.startswith(("skipped_", "rejected_")) and v}
    assert counted == dict(Counter(key for key, _ in journal))
    assert all(stamp is not None for _, stamp in journal), journal
    asm.listen(None)
    asm.add_color(color(T0))
    assert asm.stats.skipped["stale_stamp"] == 2 and len(journal) == sum(counted.values())


def test_instances_are_attached_when_expected() -> None:
    asm = FrameAssembler(expect_instances=True)
    asm.add_camera_info(info())
    t = T0
    asm.add_pose(pose(t - DT, 0.0))
    raws = asm.add_color(color(t)) + asm.add_depth(depth(t)) + asm.add_pose(pose(t + DT, 0.0))
    assert raws == []  # waits for its ground truth
    ids = np.full((H, W), 7, np.int32)
    raws = asm.add_instances(ImageData(t, "cam", "32SC1", ids.tobytes(), H, W, W * 4))
    frames = finished(asm, raws)
    assert frames[0].instance_ids is not None and frames[0].instance_ids[0, 0] == 7


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="color_encodings"):
        InputConfig(color_encodings=("yuv422",))
    with pytest.raises(ConfigError, match="gap_factor"):
        InputConfig(gap_factor=1.0)


def test_rotation_of_pose_records_is_kept() -> None:
    q = (0.0, 0.0, np.sin(0.25), np.cos(0.25))
    T = pose_to_matrix((0.0, 0.0, 0.0), q)
    np.testing.assert_allclose(T[:3, :3], quat_to_matrix(*q))


REALSENSE = {
    "/camera/camera/color/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
    "/camera/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
    "/camera/camera/depth/image_rect_raw/compressedDepth": "sensor_msgs/msg/CompressedImage",
    "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth":
        "sensor_msgs/msg/CompressedImage",
    "/camera/camera/depth/camera_info": "sensor_msgs/msg/CameraInfo",
    "/camera/camera/infra1/image_rect_raw": "sensor_msgs/msg/Image",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/tf_static": "tf2_msgs/msg/TFMessage",
}


def test_layout_of_a_realsense_bag_is_found_by_type_and_name() -> None:
    layout = choose_layout(REALSENSE, BagSourceConfig())
    assert layout.color_topic == "/camera/camera/color/image_raw/compressed"
    assert layout.depth_topic == "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth"
    assert layout.camera_info_topic == "/camera/camera/color/camera_info"
    assert layout.pose_source == "tf" and layout.pose_topic == ""
    assert len(layout.notes) == 4


def test_layout_takes_the_single_pose_topic_and_refuses_wrong_types() -> None:
    topics = {
        "/camera/color/image_raw": "sensor_msgs/msg/Image",
        "/camera/depth/image_rect_raw": "sensor_msgs/msg/Image",
        "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
        "/odom": "nav_msgs/msg/Odometry",
    }
    layout = choose_layout(topics, BagSourceConfig())
    assert layout.pose_topic == "/odom" and layout.pose_source == "topic"
    bad = dict(topics, **{"/camera/color/image_raw": "sensor_msgs/msg/PointCloud2"})
    with pytest.raises(DataFormatError, match="PointCloud2; accepted"):
        choose_layout(bad, BagSourceConfig())
    no_pose = {k: v for k, v in topics.items() if k != "/odom"}
    with pytest.raises(DataFormatError, match="no pose source"):
        choose_layout(no_pose, BagSourceConfig())


def test_layout_refuses_an_explicit_topic_that_is_absent() -> None:
    config = BagSourceConfig(color_topic="/camera/camera/colr/image_raw/compressed",
                             required_topics=("/camera/camera/colr/image_raw/compressed",))
    with pytest.raises(DataFormatError, match="given explicitly are not in the bag"):
        choose_layout(REALSENSE, config)

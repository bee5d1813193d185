import numpy as np
import pytest

from diff2scene.errors import InputError
from diff2scene.io.transforms import (
    TransformBuffer,
    interpolate,
    matrix_to_quat,
    pose_to_matrix,
    quat_to_matrix,
)


def _rz(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return pose_to_matrix((0, 0, 0), (0, 0, np.sin(a / 2), np.cos(a / 2)))


def test_quaternion_round_trip() -> None:
    rng = np.random.default_rng(0)
    for raw in rng.normal(size=(20, 4)):
        q = raw / np.linalg.norm(raw)
        q2 = np.array(matrix_to_quat(quat_to_matrix(*q)))
        assert np.allclose(q2, q) or np.allclose(q2, -q)


def test_zero_or_nan_quaternion_rejected() -> None:
    with pytest.raises(InputError, match="bad_quaternion"):
        quat_to_matrix(0, 0, 0, 0)
    with pytest.raises(InputError, match="nonfinite_pose"):
        pose_to_matrix((np.nan, 0, 0), (0, 0, 0, 1))


def test_slerp_halfway() -> None:
    mid = interpolate(_rz(0), _rz(90), 0.5)
    np.testing.assert_allclose(mid, _rz(45), atol=1e-12)


def test_lookup_chains_and_interpolates() -> None:
    buf = TransformBuffer()
    buf.add("map", "odom", 0, pose_to_matrix((1, 0, 0), (0, 0, 0, 1)), static=True)
    buf.add("odom", "base", 0, pose_to_matrix((0, 0, 0), (0, 0, 0, 1)))
    buf.add("odom", "base", 100, pose_to_matrix((2, 0, 0), (0, 0, 0, 1)))
    buf.add("base", "cam", 0, pose_to_matrix((0, 0, 1), (0, 0, 0, 1)), static=True)
    T = buf.lookup("map", "cam", 25)
    np.testing.assert_allclose(T[:3, 3], [1.5, 0, 1])
    np.testing.assert_allclose(buf.lookup("cam", "map", 25), np.linalg.inv(T))
    with pytest.raises(InputError, match="missing_pose"):
        buf.lookup("map", "cam", 101)  # no extrapolation
    with pytest.raises(InputError, match="missing_pose"):
        buf.lookup("map", "elsewhere", 50)
    with pytest.raises(InputError, match="tf_reparent"):
        buf.add("map", "base", 5, np.eye(4))


def test_long_gap_is_not_interpolated() -> None:
    buf = TransformBuffer(max_interpolation_gap_ns=10)
    buf.add("map", "cam", 0, np.eye(4))
    buf.add("map", "cam", 100, np.eye(4))
    with pytest.raises(InputError, match="gap"):
        buf.lookup("map", "cam", 50)

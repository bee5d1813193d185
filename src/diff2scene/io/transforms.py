"""Rigid transforms and a small time-indexed transform buffer (what tf2 does for a bag).

``tf2_ros`` is not available as a wheel, and the core must stay ROS-free anyway, so frame
chains are resolved here: each edge parent→child keeps a time-sorted history, lookups walk the
tree and interpolate every dynamic edge (linear translation, slerp rotation).
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError

Matrix4 = NDArray[np.float64]


def quat_to_matrix(qx: float, qy: float, qz: float, qw: float) -> NDArray[np.float64]:
    """(3, 3) rotation from a quaternion (x, y, z, w); normalises, rejects zero/non-finite."""
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm < 1e-9:
        raise InputError("bad_quaternion", f"{(qx, qy, qz, qw)}")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(R: NDArray[np.float64]) -> tuple[float, float, float, float]:
    """Quaternion (x, y, z, w) with w ≥ 0 of a (3, 3) rotation matrix."""
    m = R
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        w, x, y, z = (
            0.25 * s,
            (m[2, 1] - m[1, 2]) / s,
            (m[0, 2] - m[2, 0]) / s,
            (m[1, 0] - m[0, 1]) / s,
        )
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        w, x, y, z = (
            (m[2, 1] - m[1, 2]) / s,
            0.25 * s,
            (m[0, 1] + m[1, 0]) / s,
            (m[0, 2] + m[2, 0]) / s,
        )
    elif m[1, 1] > m[2, 2]:
        s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        w, x, y, z = (
            (m[0, 2] - m[2, 0]) / s,
            (m[0, 1] + m[1, 0]) / s,
            0.25 * s,
            (m[1, 2] + m[2, 1]) / s,
        )
    else:
        s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        w, x, y, z = (
            (m[1, 0] - m[0, 1]) / s,
            (m[0, 2] + m[2, 0]) / s,
            (m[1, 2] + m[2, 1]) / s,
            0.25 * s,
        )
    q = np.array([x, y, z, w], dtype=np.float64)
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def pose_to_matrix(
    translation: tuple[float, float, float], quaternion_xyzw: tuple[float, float, float, float]
) -> Matrix4:
    """(4, 4) homogeneous transform; rejects non-finite values."""
    t = np.asarray(translation, dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise InputError("nonfinite_pose", f"translation {translation}")
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(*quaternion_xyzw)
    T[:3, 3] = t
    return T


def interpolate(T0: Matrix4, T1: Matrix4, alpha: float) -> Matrix4:
    """Pose between ``T0`` (alpha=0) and ``T1`` (alpha=1): lerp translation, slerp rotation."""
    q0 = np.array(matrix_to_quat(T0[:3, :3]))
    q1 = np.array(matrix_to_quat(T1[:3, :3]))
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + alpha * (q1 - q0)
    else:
        theta = np.arccos(np.clip(dot, -1.0, 1.0))
        q = (np.sin((1 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / np.sin(theta)
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(*q)
    T[:3, 3] = (1 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return T


#: Rotation from a REP-103 body frame (x forward, y left, z up) to the optical frame
#: (x right, y down, z forward): T_body_optical.
T_BODY_OPTICAL: Matrix4 = np.array(
    [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


@dataclass
class _Edge:
    stamps_ns: list[int] = field(default_factory=list)
    poses: list[Matrix4] = field(default_factory=list)
    static: bool = False


class TransformBuffer:
    """Time-indexed transforms between named frames, with bounded history per edge."""

    def __init__(
        self, *, max_history: int = 10_000, max_interpolation_gap_ns: int = 500_000_000
    ) -> None:
        self._edges: dict[tuple[str, str], _Edge] = {}
        self._parent_of: dict[str, str] = {}
        self._max_history = max_history
        self._max_gap_ns = max_interpolation_gap_ns

    def add(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        T_parent_child: Matrix4,
        *,
        static: bool = False,
    ) -> None:
        """Record ``T_parent_child`` at ``stamp_ns``; out-of-order stamps are inserted in order."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if parent == child:
            raise InputError("self_transform", f"{parent} -> {child}")
        previous = self._parent_of.get(child)
        if previous is not None and previous != parent:
            raise InputError("tf_reparent", f"{child} has parent {previous}, got {parent}")
        self._parent_of[child] = parent
        edge = self._edges.setdefault((parent, child), _Edge(static=static))
        if static or edge.static:
            edge.static = True
            edge.stamps_ns, edge.poses = [0], [T_parent_child]
            return
        i = bisect.bisect_right(edge.stamps_ns, stamp_ns)
        if i > 0 and edge.stamps_ns[i - 1] == stamp_ns:
            edge.poses[i - 1] = T_parent_child
            return
        edge.stamps_ns.insert(i, stamp_ns)
        edge.poses.insert(i, T_parent_child)
        if len(edge.stamps_ns) > self._max_history:
            del edge.stamps_ns[0], edge.poses[0]

    def parent_of(self, child: str) -> str | None:
        return self._parent_of.get(child.lstrip("/"))

    def clear_dynamic(self) -> None:
        """Forget every dynamic transform (static ones stay), e.g. after a time jump."""
        for key in [k for k, e in self._edges.items() if not e.static]:
            del self._edges[key]
        self._parent_of = {child: parent for parent, child in self._edges}

    def _edge_at(
        self, parent: str, child: str, stamp_ns: int, max_extrapolation_ns: int = 0
    ) -> Matrix4:
        edge = self._edges[(parent, child)]
        if edge.static:
            return edge.poses[0]
        stamps = edge.stamps_ns
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return edge.poses[i]
        if i == 0 or i == len(stamps):
            # Outside the samples: hold the nearest one only if it is close enough in time.
            nearest = 0 if i == 0 else len(stamps) - 1
            if abs(stamps[nearest] - stamp_ns) <= max_extrapolation_ns:
                return edge.poses[nearest]
            raise InputError(
                "missing_pose",
                f"{parent}->{child} has no sample around t={stamp_ns} "
                f"(samples {stamps[0]}..{stamps[-1]}; extrapolation refused)",
            )
        t0, t1 = stamps[i - 1], stamps[i]
        if t1 - t0 > self._max_gap_ns:
            raise InputError(
                "missing_pose", f"{parent}->{child} gap {(t1 - t0) / 1e9:.3f}s too long"
            )
        return interpolate(edge.poses[i - 1], edge.poses[i], (stamp_ns - t0) / (t1 - t0))

    def _compose_up(
        self, chain: list[str], ancestor: str, stamp_ns: int, max_extrapolation_ns: int
    ) -> Matrix4:
        """T_ancestor_chain[0] by composing the edges of ``chain`` up to ``ancestor``."""
        T = np.eye(4)
        for child, parent in itertools.pairwise(chain):
            if child == ancestor:
                break
            T = self._edge_at(parent, child, stamp_ns, max_extrapolation_ns) @ T
        return T

    def _chain_to_root(self, frame: str) -> list[str]:
        chain = [frame]
        seen = {frame}
        while chain[-1] in self._parent_of:
            parent = self._parent_of[chain[-1]]
            if parent in seen:
                raise InputError("tf_cycle", f"cycle through {parent}")
            chain.append(parent)
            seen.add(parent)
        return chain

    def connected(self, target: str, source: str) -> bool:
        """Whether a chain of transforms joins the two frames (at some time)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return True
        try:
            up_tgt = set(self._chain_to_root(target))
            return any(f in up_tgt for f in self._chain_to_root(source))
        except InputError:
            return False

    def lookup(
        self, target: str, source: str, stamp_ns: int, *, max_extrapolation_ns: int = 0
    ) -> Matrix4:
        """``T_target_source`` at ``stamp_ns`` (maps points in ``source`` to ``target``).

        Each dynamic edge is interpolated between its samples; outside them the nearest sample
        is held for at most ``max_extrapolation_ns``, else :class:`InputError` is raised.
        """
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        up_src = self._chain_to_root(source)
        up_tgt = self._chain_to_root(target)
        common = next((f for f in up_src if f in set(up_tgt)), None)
        if common is None:
            raise InputError("missing_pose", f"no transform chain between {target} and {source}")
        T_common_source = self._compose_up(up_src, common, stamp_ns, max_extrapolation_ns)
        T_common_target = self._compose_up(up_tgt, common, stamp_ns, max_extrapolation_ns)
        return np.linalg.inv(T_common_target) @ T_common_source

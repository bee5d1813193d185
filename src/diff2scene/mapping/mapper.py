"""Online RGB-D fusion into a TSDF + colour voxel map with a stable voxel index.

Fusion is Open3D's tensor ``VoxelBlockGrid`` (CPU or CUDA). Semantic state, however, needs a
*list* of surface voxels whose numbering never changes, which the TSDF does not provide: its
surface moves as observations accumulate and its blocks are rehashed as it grows. So the mapper
keeps an append-only :class:`~diff2scene.mapping.voxel_index.VoxelIndex` of surface voxels and
refreshes it on demand (:meth:`Mapper.update_voxels`), looking only at the blocks integrated
since the last refresh and their neighbours. Extracting the whole surface after every frame
would cost more than the fusion itself; callers refresh before they need the voxels (a keyframe
unprojection, a 3D-network pass, a published cloud). A refresh hands out only what changed
(:class:`SurfaceUpdate`), so its cost follows the keyframe, not the size of the map.

A surface voxel is a TSDF sample (at integer multiples of ``voxel_size_m``) observed at least
``surface_weight_threshold`` times whose signed distance changes sign towards one of its six
neighbours, and which is the closer of the two samples to the zero crossing. This gives one
layer of voxels on the surface, each within about half a voxel of it.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import open3d as o3d
from numpy.typing import NDArray

from diff2scene.errors import ConfigError, InputError
from diff2scene.mapping.voxel_index import VoxelIndex, unique_coords
from diff2scene.types import Frame

#: Growth of the mapper's colour buffer when it is full (amortised O(1) per voxel; at most a
#: third of it unused).
_COLOR_GROWTH = 1.5
#: Numbers of mappers in this process, for :attr:`SurfaceUpdate.source_id`.
_MAPPER_IDS = itertools.count(1)

#: Reasons a frame is skipped, as counted in :attr:`MapperStats.skipped`.
SKIP_BAD_INPUT = "bad_input"
SKIP_INVALID_POSE = "invalid_pose"
SKIP_OUT_OF_ORDER = "out_of_order"
SKIP_POSE_JUMP = "pose_jump"
SKIP_NO_VALID_DEPTH = "no_valid_depth"
SKIP_OUTSIDE_BOUNDS = "outside_bounds"
SKIP_INTEGRATION_ERROR = "integration_error"

#: Block-key (x, y, z) steps to the face neighbours x-, x+, y-, y+, z-, z+, in this order
#: everywhere (the surface kernel's neighbour table follows it).
_FACE_STEPS = np.array(
    [[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.int64
)


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _surface_kernel(  # noqa: PLR0917 - compiled kernels take positional arrays
    tsdf: NDArray[np.float32],
    weight: NDArray[Any],
    color: NDArray[Any],
    keys: NDArray[np.int32],
    bufs: NDArray[np.int64],
    nb_bufs: NDArray[np.int64],
    weight_min: np.float32,
    band: np.float32,
    out_coords: NDArray[np.int32],
    out_colors: NDArray[np.uint8],
) -> int:  # pragma: no cover - compiled; tested through Mapper.update_voxels
    """Write the surface voxels of the blocks ``bufs`` (keys ``keys`` (n, 3)) to ``out_*``,
    block by block in [z, y, x] order; returns their number. ``nb_bufs`` (n, 6) holds each
    block's face neighbours x-, x+, y-, y+, z-, z+ (-1: none), so a border sample compares
    with the next block's sample as an interior one does with its own neighbours.

    Compiled because this is one pass with an early exit per sample: numpy needed a padded
    copy of every block and a dozen full-size passes, the biggest cost of a keyframe."""
    R = tsdf.shape[1]
    count = 0
    for i in range(keys.shape[0]):
        b = bufs[i]
        for z in range(R):
            for y in range(R):
                for x in range(R):
                    w = weight[b, z, y, x]
                    if not w >= weight_min:
                        continue
                    s = tsdf[b, z, y, x]
                    a = abs(s)
                    if not a <= band:
                        continue
                    neg = s < 0
                    hit = False
                    for f in range(6):
                        nx = x + _FACE_STEPS[f, 0]
                        ny = y + _FACE_STEPS[f, 1]
                        nz = z + _FACE_STEPS[f, 2]
                        nb = b
                        if min(nx, ny, nz) < 0 or max(nx, ny, nz) == R:  # in the next block
                            nb = nb_bufs[i, f]
                            nx, ny, nz = (nx + R) % R, (ny + R) % R, (nz + R) % R
                        if nb < 0 or not weight[nb, nz, ny, nx] > 0:
                            continue
                        t = tsdf[nb, nz, ny, nx]
                        if np.isfinite(t) and (t < 0) != neg and a <= abs(t):
                            hit = True
                            break
                    if not hit:
                        continue
                    out_coords[count, 0] = keys[i, 0] * R + x
                    out_coords[count, 1] = keys[i, 1] * R + y
                    out_coords[count, 2] = keys[i, 2] * R + z
                    for c in range(3):
                        v = np.rint(np.float64(color[b, z, y, x, c]))
                        out_colors[count, c] = np.uint8(min(max(v, 0.0), 255.0))
                    count += 1
    return count


@dataclass
class MapperConfig:
    """Voxel map geometry, depth filtering, frame rejection and surface extraction."""

    #: Edge length of one voxel (and the spacing of surface voxels), in metres.
    voxel_size_m: float = 0.02
    #: Voxels per block edge in Open3D's block hash map (blocks hold resolution³ voxels).
    #: 8 rather than 16: a surface crosses fewer empty voxels per block (measured on a
    #: synthetic room: 18.5 against 31.6 allocated voxels per surface voxel) and fuses faster.
    block_resolution: int = 8
    #: TSDF blocks held in memory at most: the working set around the camera. The block hash
    #: map is allocated at this size once (resolution³ voxels of 12 bytes each, or 20 without
    #: ``compact_tsdf``: 235 MiB at the defaults), because growing it rehashes every block
    #: and stalls integration for seconds on a large map. When a frame's blocks would not fit,
    #: the blocks integrated least recently are evicted (down to three quarters of it, less
    #: the frame's) after their surface voxels are extracted; the surface voxels stay in the
    #: map, and a region seen again is fused afresh into the same voxels. Keep it well above
    #: the blocks one frame touches (about 2-4k at 2 cm and 5 m range).
    max_tsdf_blocks: int = 40_000
    #: Weight and colour as uint16 (12 bytes per TSDF voxel) instead of float32 (20 bytes).
    compact_tsdf: bool = True
    #: Depth readings closer than this are treated as invalid, in metres.
    depth_min_m: float = 0.1
    #: Depth readings farther than this are treated as invalid, in metres.
    depth_max_m: float = 5.0
    #: Truncation distance of the TSDF in voxels (``sdf_trunc_m = multiplier * voxel_size_m``).
    #: Larger values tolerate noisier depth but leave surface artefacts up to that far from the
    #: true surface where views disagree (behind object silhouettes).
    trunc_voxel_multiplier: float = 4.0
    #: Open3D device: "CPU:0", "CUDA:0", ... or "auto" (first CUDA device if available).
    device: str = "auto"
    #: Integration count a voxel needs before it can be a surface voxel.
    surface_weight_threshold: float = 2.0
    #: A zero crossing counts only if the closer sample lies within this many voxels of it;
    #: larger jumps are artefacts at object silhouettes (free space meets occluded space).
    surface_band_voxels: float = 2.0
    #: Camera speed above which the motion between two consecutive frames counts as a pose
    #: jump, in m/s. A speed (not a distance) so that frames after an input gap are not refused
    #: for ordinary motion.
    max_speed_m_s: float = 5.0
    #: Camera rotation rate above which the motion counts as a pose jump, in degrees/s.
    max_angular_speed_deg_s: float = 360.0
    #: Motion allowed on top of the speed limit whatever the time step (pose noise between
    #: frames close in time), in metres.
    pose_jump_tolerance_m: float = 0.05
    #: Rotation allowed on top of the rate limit whatever the time step, in degrees.
    pose_jump_tolerance_deg: float = 5.0
    #: Lower corner (x, y, z) of the mapped region in the world frame, in metres; None = unbounded.
    bounds_min_m: tuple[float, float, float] | None = None
    #: Upper corner (x, y, z) of the mapped region in the world frame, in metres; None = unbounded.
    bounds_max_m: tuple[float, float, float] | None = None
    #: Frames with a smaller fraction of valid depth pixels are skipped as "no_valid_depth".
    min_valid_depth_ratio: float = 0.001

    def __post_init__(self) -> None:
        positive = {
            "voxel_size_m": self.voxel_size_m,
            "depth_max_m": self.depth_max_m,
            "trunc_voxel_multiplier": self.trunc_voxel_multiplier,
            "max_speed_m_s": self.max_speed_m_s,
            "max_angular_speed_deg_s": self.max_angular_speed_deg_s,
            "surface_band_voxels": self.surface_band_voxels,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"MapperConfig.{name} must be > 0, got {value}")
        if self.pose_jump_tolerance_m < 0 or self.pose_jump_tolerance_deg < 0:
            raise ConfigError("MapperConfig: pose jump tolerances must be >= 0")
        if self.block_resolution < 2 or self.max_tsdf_blocks < 64:
            raise ConfigError("MapperConfig: block_resolution must be >= 2, max_tsdf_blocks >= 64")
        if not 0 <= self.depth_min_m < self.depth_max_m:
            raise ConfigError(
                f"MapperConfig: need 0 <= depth_min_m < depth_max_m, got "
                f"{self.depth_min_m}, {self.depth_max_m}"
            )
        if self.surface_weight_threshold <= 0:
            raise ConfigError("MapperConfig.surface_weight_threshold must be > 0")
        if not 0 <= self.min_valid_depth_ratio <= 1:
            raise ConfigError("MapperConfig.min_valid_depth_ratio must be in [0, 1]")
        if (self.bounds_min_m is None) != (self.bounds_max_m is None):
            raise ConfigError("MapperConfig: give both bounds_min_m and bounds_max_m, or neither")
        if (
            self.bounds_min_m is not None
            and self.bounds_max_m is not None
            and any(lo >= hi for lo, hi in zip(self.bounds_min_m, self.bounds_max_m, strict=True))
        ):
            raise ConfigError("MapperConfig: bounds_min_m must be below bounds_max_m")
        if self.device != "auto" and not (
            self.device.startswith("CPU:") or self.device.startswith("CUDA:")
        ):
            raise ConfigError(
                f"MapperConfig.device must be auto, CPU:n or CUDA:n, got {self.device}"
            )

    @property
    def sdf_trunc_m(self) -> float:
        """TSDF truncation distance in metres."""
        return self.trunc_voxel_multiplier * self.voxel_size_m


@dataclass
class MapperStats:
    """What happened to the frames given to :meth:`Mapper.integrate`."""

    frames_received: int = 0
    frames_integrated: int = 0
    #: Skipped frames by reason (the ``SKIP_*`` constants).
    skipped: Counter[str] = field(default_factory=Counter)
    #: Reason of the most recent skip, for diagnostics.
    last_skip_reason: str = ""
    last_skip_detail: str = ""
    #: TSDF blocks evicted from the working set (their surface voxels stay in the map).
    blocks_evicted: int = 0


@dataclass(frozen=True)
class SurfaceUpdate:
    """What changed in the mapper's surface voxels since its previous :meth:`Mapper.update_voxels`.

    Voxel ``i`` is the same voxel in every update. An update holds only the voxels first seen
    in it and the voxels whose colour it refreshed, so its size follows the keyframe, not the
    map; a map that follows a mapper applies every update, in order
    (:meth:`~diff2scene.mapping.semantic_map.SemanticMap.apply_surface_update` refuses one
    that skips another). Arrays are copies owned by the receiver.
    """

    voxel_size_m: float
    #: Voxels the mapper had before this update; the new ones are numbered from here.
    new_start: int
    #: (N, 3) int32 integer coordinates of the voxels first seen in this update: voxel
    #: ``new_start + i`` is row i.
    new_coords: NDArray[np.int32]
    #: (U,) int64 voxels found on the surface in this update, ascending (the new ones too).
    updated_index: NDArray[np.int64]
    #: (U, 3) uint8 RGB, the fused colour of each of ``updated_index``.
    updated_colors: NDArray[np.uint8]
    #: The mapper that made the update (0: none, e.g. an update made by hand) ...
    source_id: int = 0
    #: ... and its place in that mapper's updates (1, 2, ...).
    sequence: int = 0

    @classmethod
    def appending(
        cls,
        voxel_size_m: float,
        coords: NDArray[np.int32],
        colors: NDArray[np.uint8],
        *,
        new_start: int = 0,
    ) -> SurfaceUpdate:
        """An update that appends ``coords`` (N, 3) with ``colors`` (N, 3) after ``new_start``
        voxels: a map built from voxels that no mapper made (procedural maps, tests)."""
        coords = np.ascontiguousarray(coords, dtype=np.int32).reshape(-1, 3)
        return cls(
            voxel_size_m=voxel_size_m,
            new_start=new_start,
            new_coords=coords,
            updated_index=np.arange(new_start, new_start + coords.shape[0], dtype=np.int64),
            updated_colors=np.asarray(colors, dtype=np.uint8),
        )

    @property
    def num_voxels(self) -> int:
        """Voxels of the mapper after this update."""
        return self.new_start + int(self.new_coords.shape[0])

    @property
    def num_new(self) -> int:
        return int(self.new_coords.shape[0])

    @property
    def new_points_m(self) -> NDArray[np.float32]:
        """(N, 3) float32 centres of the new voxels in the world frame, metres."""
        return voxel_centres(self.new_coords, self.voxel_size_m)


def voxel_centres(coords: NDArray[np.int32], voxel_size_m: float) -> NDArray[np.float32]:
    """(M, 3) float32 world positions of integer voxel coordinates (the TSDF sample points)."""
    return (coords.astype(np.float64) * voxel_size_m).astype(np.float32)


def resolve_device(name: str) -> o3d.core.Device:
    """Open3D device for a config string; "auto" picks CUDA:0 when Open3D was built with it."""
    if name == "auto":
        return o3d.core.Device("CUDA:0" if o3d.core.cuda.is_available() else "CPU:0")
    return o3d.core.Device(name)


def rotation_angle_deg(R: NDArray[np.float64]) -> float:
    """Angle of rotation matrix ``R`` (3, 3), in degrees."""
    cos = (float(np.trace(R)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _valid_pose(T: NDArray[np.float64]) -> bool:
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return bool(
        np.allclose(T[3], (0.0, 0.0, 0.0, 1.0))
        and np.allclose(R.T @ R, np.eye(3), atol=1e-3)
        and np.linalg.det(R) > 0
    )


def _to_o3d(arr: NDArray[Any], device: o3d.core.Device) -> o3d.core.Tensor:
    """Open3D tensor of ``arr`` on ``device`` (shares memory on the CPU when contiguous)."""
    return o3d.core.Tensor.from_numpy(np.ascontiguousarray(arr)).to(device)


def _invert_rigid(T: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


class Mapper:
    """Fuses frames into a TSDF voxel map and maintains the stable list of surface voxels."""

    def __init__(self, config: MapperConfig | None = None) -> None:
        self.config = config or MapperConfig()
        self.device = resolve_device(self.config.device)
        cfg = self.config
        attr = o3d.core.uint16 if cfg.compact_tsdf else o3d.core.float32
        self._vbg = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"),
            attr_dtypes=(o3d.core.float32, attr, attr),
            attr_channels=[o3d.core.SizeVector([c]) for c in (1, 1, 3)],
            voxel_size=cfg.voxel_size_m,
            block_resolution=cfg.block_resolution,
            block_count=cfg.max_tsdf_blocks,
            device=self.device,
        )
        self.stats = MapperStats()
        self._index = VoxelIndex()
        #: Colour of each voxel, rows beyond ``len(self._index)`` spare capacity.
        self._colors = np.empty((0, 3), dtype=np.uint8)
        self._source_id = next(_MAPPER_IDS)
        self._updates_made = 0
        self._dirty_blocks: list[NDArray[np.int32]] = []
        #: Surface voxels extracted since the last :meth:`update_voxels` (by evictions): the
        #: index length then, and the voxels found since.
        self._pending_start = 0
        self._pending_updated: list[NDArray[np.int64]] = []
        #: Integration count at which each hash-map buffer was last integrated into.
        self._last_used = np.zeros(cfg.max_tsdf_blocks, dtype=np.int64)
        self._prev_pose: NDArray[np.float64] | None = None
        self._last_stamp_ns: int | None = None
        self._block_m = cfg.block_resolution * cfg.voxel_size_m
        self._bounds: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
        if cfg.bounds_min_m is not None and cfg.bounds_max_m is not None:
            self._bounds = (
                np.asarray(cfg.bounds_min_m, dtype=np.float64),
                np.asarray(cfg.bounds_max_m, dtype=np.float64),
            )

    # ------------------------------------------------------------------ integration

    def _skip(self, reason: str, detail: str = "") -> bool:
        self.stats.skipped[reason] += 1
        self.stats.last_skip_reason = reason
        self.stats.last_skip_detail = detail
        return False

    def integrate(self, frame: Frame) -> bool:
        """Fuse ``frame`` into the TSDF; False (and a counted reason) if the frame is skipped.

        Never raises for a bad frame: wrong shapes or dtypes, a non-rigid or non-finite pose, a
        stamp older than the previous frame's, a pose jump (motion between consecutive frames
        beyond the configured limits; the next frame is compared with the jumped pose, so a
        real relocalisation costs one frame and a one-frame glitch two), no valid depth, or a
        camera outside the map bounds.
        """
        cfg = self.config
        self.stats.frames_received += 1
        intr = frame.intrinsics
        hw = (intr.height, intr.width)
        depth = frame.depth_m
        if (
            not isinstance(depth, np.ndarray)
            or depth.shape != hw
            or not isinstance(frame.rgb, np.ndarray)
            or frame.rgb.shape != (*hw, 3)
            or frame.rgb.dtype != np.uint8
        ):
            return self._skip(
                SKIP_BAD_INPUT,
                f"need rgb {(*hw, 3)} uint8 and depth {hw}, got "
                f"{getattr(frame.rgb, 'shape', None)} and {getattr(depth, 'shape', None)}",
            )
        T = np.asarray(frame.T_world_camera, dtype=np.float64)
        if not _valid_pose(T):
            return self._skip(SKIP_INVALID_POSE, "T_world_camera is not a finite rigid transform")
        if self._last_stamp_ns is not None and frame.stamp_ns < self._last_stamp_ns:
            return self._skip(
                SKIP_OUT_OF_ORDER, f"stamp {frame.stamp_ns} < previous {self._last_stamp_ns}"
            )
        prev_stamp_ns, self._last_stamp_ns = self._last_stamp_ns, frame.stamp_ns
        prev, self._prev_pose = self._prev_pose, T
        if prev is not None and prev_stamp_ns is not None:
            dt_s = (frame.stamp_ns - prev_stamp_ns) / 1e9
            jump_m = float(np.linalg.norm(T[:3, 3] - prev[:3, 3]))
            jump_deg = rotation_angle_deg(prev[:3, :3].T @ T[:3, :3])
            limit_m = cfg.max_speed_m_s * dt_s + cfg.pose_jump_tolerance_m
            limit_deg = cfg.max_angular_speed_deg_s * dt_s + cfg.pose_jump_tolerance_deg
            if jump_m > limit_m or jump_deg > limit_deg:
                return self._skip(
                    SKIP_POSE_JUMP,
                    f"moved {jump_m:.3f} m, {jump_deg:.1f} deg in {dt_s:.3f} s "
                    f"(limits {limit_m:.3f} m, {limit_deg:.1f} deg)",
                )
        if self._bounds is not None:
            lo, hi = self._bounds
            if np.any(T[:3, 3] < lo) or np.any(T[:3, 3] > hi):
                return self._skip(SKIP_OUTSIDE_BOUNDS, f"camera at {T[:3, 3].round(3).tolist()}")
        depth = depth.astype(np.float32, copy=False)
        valid = (depth >= cfg.depth_min_m) & (depth <= cfg.depth_max_m)  # NaN compares False
        num_valid = int(np.count_nonzero(valid))
        if num_valid == 0 or num_valid < cfg.min_valid_depth_ratio * depth.size:
            return self._skip(SKIP_NO_VALID_DEPTH, f"{num_valid} valid depth pixels")
        if num_valid < depth.size:
            depth = np.where(valid, depth, np.float32(0.0))
        try:
            return self._integrate_checked(frame, depth, T)
        except RuntimeError as exc:  # Open3D reports its own failures as RuntimeError
            return self._skip(SKIP_INTEGRATION_ERROR, str(exc).strip()[:200])

    def _integrate_checked(
        self, frame: Frame, depth: NDArray[np.float32], T_world_camera: NDArray[np.float64]
    ) -> bool:
        cfg = self.config
        dev = self.device
        depth_img = o3d.t.geometry.Image(_to_o3d(depth, dev))
        # Open3D's float colour path expects [0, 1] and stores 0..255 values.
        color = frame.rgb.astype(np.float32) * np.float32(1.0 / 255.0)
        color_img = o3d.t.geometry.Image(_to_o3d(color, dev))
        K = _to_o3d(frame.intrinsics.matrix(), o3d.core.Device("CPU:0"))
        extrinsic = _to_o3d(_invert_rigid(T_world_camera), o3d.core.Device("CPU:0"))
        blocks = self._vbg.compute_unique_block_coordinates(
            depth_img, K, extrinsic, 1.0, cfg.depth_max_m, cfg.trunc_voxel_multiplier
        )
        blocks_np = blocks.cpu().numpy().reshape(-1, 3)
        if self._bounds is not None:
            lo, hi = self._bounds
            lower = blocks_np * self._block_m
            inside = np.all((lower + self._block_m > lo) & (lower < hi), axis=1)
            if not np.any(inside):
                return self._skip(SKIP_OUTSIDE_BOUNDS, "all observed blocks lie outside bounds")
            if not np.all(inside):
                blocks_np = np.ascontiguousarray(blocks_np[inside])
                blocks = _to_o3d(blocks_np, dev)
        if blocks_np.shape[0] > cfg.max_tsdf_blocks:
            return self._skip(SKIP_INTEGRATION_ERROR,
                              f"one frame touches {blocks_np.shape[0]} blocks, more than "
                              f"max_tsdf_blocks {cfg.max_tsdf_blocks}")  # fmt: skip
        self._make_room(blocks, blocks_np.shape[0])
        self._vbg.integrate(
            blocks,
            depth_img,
            color_img,
            K,
            K,
            extrinsic,
            1.0,
            cfg.depth_max_m,
            cfg.trunc_voxel_multiplier,
        )
        self.stats.frames_integrated += 1
        bufs, _ = self._vbg.hashmap().find(blocks)
        self._last_used[bufs.cpu().numpy().astype(np.int64)] = self.stats.frames_integrated
        self._dirty_blocks.append(blocks_np.astype(np.int32, copy=True))
        return True

    def _make_room(self, blocks: o3d.core.Tensor, num_blocks: int) -> None:
        """Evict the least recently integrated blocks when ``blocks`` might not fit in the
        hash map (which must never grow: see ``max_tsdf_blocks``), down to three quarters
        of it. Their surface voxels are extracted first; their buffers are cleared, because
        Open3D hands a freed buffer to the next new block with its old values."""
        hashmap = self._vbg.hashmap()
        capacity = self.config.max_tsdf_blocks
        # Open3D grows the map when its size plus the keys inserted (new or not) exceeds it
        if int(hashmap.size()) + num_blocks <= capacity:
            return
        bufs, found = hashmap.find(blocks)
        keep = bufs.cpu().numpy().astype(np.int64)[found.cpu().numpy().astype(bool)]
        self._last_used[keep] = self.stats.frames_integrated + 1  # the frame's own go last
        self._refresh_surface()  # every evicted block's surface is in the index first
        active = hashmap.active_buf_indices().cpu().numpy().astype(np.int64)
        target = min(capacity * 3 // 4, capacity - num_blocks)
        evict = active[np.argsort(self._last_used[active], kind="stable")[: active.size - target]]
        if evict.size == 0:
            return
        evict_t = _to_o3d(evict, self.device)
        keys = hashmap.key_tensor()[evict_t]
        for name in ("tsdf", "weight", "color"):
            values = self._vbg.attribute(name)
            if values.is_cpu:  # through a NumPy view: Open3D's indexed assignment took 1.2 s
                values.numpy()[evict] = 0  # for 8.5k blocks, this 15 ms
            else:
                values[evict_t] = 0
        hashmap.erase(keys)
        self.stats.blocks_evicted += int(evict.size)

    # ------------------------------------------------------------------ surface voxels

    @property
    def num_voxels(self) -> int:
        """Surface voxels registered so far (as of the last :meth:`update_voxels`)."""
        return len(self._index)

    @property
    def coords(self) -> NDArray[np.int32]:
        """(M, 3) int32 integer coordinates of every surface voxel; row i is voxel i (a new
        array made from the index's keys: O(M), for tools and tests, not per keyframe)."""
        return self._index.coords

    @property
    def colors(self) -> NDArray[np.uint8]:
        """(M, 3) uint8 fused colour of every surface voxel (read-only view; the next
        refresh may change it)."""
        view = self._colors[: len(self._index)]
        view.flags.writeable = False
        return view

    @property
    def points_m(self) -> NDArray[np.float32]:
        """(M, 3) float32 voxel centres in the world frame, metres (a new array, O(M))."""
        return voxel_centres(self.coords, self.config.voxel_size_m)

    @property
    def num_blocks(self) -> int:
        """Allocated TSDF blocks."""
        return int(self._vbg.hashmap().size())

    @property
    def geometry_nbytes(self) -> int:
        """Memory of the TSDF hash map (allocated whole, see ``max_tsdf_blocks``) plus the
        voxel index and colours (capacity included), in bytes."""
        cfg = self.config
        per_voxel = 12 if cfg.compact_tsdf else 20
        tsdf = cfg.max_tsdf_blocks * cfg.block_resolution**3 * per_voxel
        return int(tsdf + self._index.nbytes + self._colors.nbytes)

    def seed_voxels(self, coords: NDArray[np.int32], colors: NDArray[np.uint8]) -> None:
        """Start the voxel index from a saved map's voxels (same numbering), e.g. after
        :meth:`SemanticMap.load`, so that later updates extend that map instead of restarting.

        Only the index is restored (the TSDF starts empty); voxels re-observed on the surface
        get their old numbers back. The map already holds the seeded voxels, so the next
        :meth:`update_voxels` reports only what comes after them.
        """
        if len(self._index):
            raise InputError("mapper_not_empty", "seed_voxels needs a mapper without voxels")
        coords = np.ascontiguousarray(coords, dtype=np.int32).reshape(-1, 3)
        if colors.shape != coords.shape:
            raise InputError("seed_shape", f"coords {coords.shape} vs colors {colors.shape}")
        ids = self._index.add(coords)
        if not np.array_equal(ids, np.arange(coords.shape[0])):
            raise InputError("seed_duplicates", "seed coordinates contain duplicates")
        self._colors = np.array(colors, dtype=np.uint8)
        self._pending_start = len(self._index)

    def update_voxels(self) -> SurfaceUpdate:
        """Refresh the surface voxels from the blocks integrated since the last call.

        New surface voxels are appended to the stable index; colours of all voxels found on the
        surface are refreshed. Voxels that stop being on the surface keep their number and last
        colour (their semantic state stays valid for the thing that was seen there). Returns
        the change since the previous call (see :class:`SurfaceUpdate`).
        """
        self._refresh_surface()
        start, self._pending_start = self._pending_start, len(self._index)
        updated = (np.unique(np.concatenate(self._pending_updated)) if self._pending_updated
                   else np.empty(0, dtype=np.int64))  # fmt: skip
        self._pending_updated = []
        self._updates_made += 1
        return SurfaceUpdate(
            voxel_size_m=self.config.voxel_size_m,
            new_start=start,
            new_coords=self._index.coords_from(start),
            updated_index=updated,
            updated_colors=self._colors[updated],
            source_id=self._source_id,
            sequence=self._updates_made,
        )

    def _refresh_surface(self) -> None:
        """Extract the surface voxels of the blocks integrated since the last refresh into
        the index (the next :meth:`update_voxels` reports them)."""
        if not self._dirty_blocks:
            return
        blocks = unique_coords(np.concatenate(self._dirty_blocks, axis=0))
        self._dirty_blocks = []
        coords, colors = self._extract_surface(blocks)
        if coords.shape[0]:
            m = len(self._index)
            updated = self._index.add(coords)
            if len(self._index) > self._colors.shape[0]:
                grown = np.empty(
                    (max(len(self._index), int(self._colors.shape[0] * _COLOR_GROWTH), 1024), 3),
                    dtype=np.uint8,
                )
                grown[:m] = self._colors[:m]
                self._colors = grown
            self._colors[updated] = colors  # every new voxel is among them
            self._pending_updated.append(updated)

    def _host_attributes(
        self,
    ) -> tuple[NDArray[np.float32], NDArray[Any], NDArray[Any]]:
        """tsdf, weight (B, R, R, R) and colour (B, R, R, R, 3) as host arrays, [z, y, x] order
        (weight and colour float32, or uint16 with ``compact_tsdf``).

        On the CPU these are views of Open3D's buffers (no copy); on CUDA this copies them to
        the host, which bounds how often a CUDA map should be refreshed.
        """
        R = self.config.block_resolution
        out = []
        for name, ch in (("tsdf", 1), ("weight", 1), ("color", 3)):
            attr = self._vbg.attribute(name)
            if not attr.is_cpu:
                attr = attr.cpu()
            arr = attr.numpy()
            out.append(arr.reshape(-1, R, R, R) if ch == 1 else arr.reshape(-1, R, R, R, 3))
        return out[0], out[1], out[2]

    def _extract_surface(
        self, dirty: NDArray[np.int32]
    ) -> tuple[NDArray[np.int32], NDArray[np.uint8]]:
        """Surface voxel coords (S, 3) int32 and colours (S, 3) uint8 in ``dirty`` blocks and
        their neighbours (whose border voxels depend on the dirty blocks' values)."""
        cfg = self.config
        R = cfg.block_resolution
        # Block keys are (x, y, z) but a block's array axes are [z, y, x]; these key offsets are
        # the neighbours across the faces x-, x+, y-, y+, z-, z+ (the kernel's face order).
        face_offsets = _FACE_STEPS.astype(np.int32)
        candidates = unique_coords(
            np.concatenate([dirty, (dirty[:, None, :] + face_offsets[None]).reshape(-1, 3)])
        )
        hashmap = self._vbg.hashmap()
        bufs_t, found_t = hashmap.find(_to_o3d(candidates, self.device))
        found = found_t.cpu().numpy().astype(bool)
        keys = np.ascontiguousarray(candidates[found])
        bufs = bufs_t.cpu().numpy().astype(np.int64)[found]
        if keys.shape[0] == 0:
            return np.empty((0, 3), dtype=np.int32), np.empty((0, 3), dtype=np.uint8)
        nb_bufs_t, nb_found_t = hashmap.find(
            _to_o3d((keys[:, None, :] + face_offsets[None]).reshape(-1, 3), self.device)
        )
        nb_bufs = nb_bufs_t.cpu().numpy().astype(np.int64).reshape(-1, 6)
        nb_bufs[~nb_found_t.cpu().numpy().astype(bool).reshape(-1, 6)] = -1
        tsdf, weight, color = self._host_attributes()
        capacity = keys.shape[0] * R**3
        coords = np.empty((capacity, 3), dtype=np.int32)  # untouched pages cost nothing
        colors = np.empty((capacity, 3), dtype=np.uint8)
        # The comparisons run in float32, as they would against the float32 TSDF in numpy.
        count = _surface_kernel(
            tsdf, weight, color, keys, bufs, nb_bufs,
            np.float32(cfg.surface_weight_threshold),
            np.float32(cfg.surface_band_voxels / cfg.trunc_voxel_multiplier),
            coords, colors,
        )
        return coords[:count].copy(), colors[:count].copy()

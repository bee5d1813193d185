"""RGB-D + instance rendering of a synthetic scene by ray casting (Open3D ``RaycastingScene``).

The depth noise model imitates a structured-light / stereo RGB-D sensor so that the mapper is
tested on realistic input rather than perfect depth: axial Gaussian noise growing with z²
(Kinect-like, sigma = 0.0012 + 0.0019 (z − 0.4)² m), dropouts at grazing incidence, at depth
discontinuities and at random, no return below the minimum or beyond the maximum range, and
millimetre quantisation (the 16UC1 wire format). Instance ids and the noise-free depth are
exact, because they are the ground truth the benchmark scores against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import open3d as o3d
from numpy.typing import NDArray

from diff2scene.synth.scene import Scene, SceneGeometry
from diff2scene.types import CameraIntrinsics, Frame

#: Direction the room's light comes from (unit vector, world frame: z up).
_LIGHT_DIR = np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0])


@dataclass
class RenderConfig:
    """Camera, camera path, image formation and depth-sensor noise."""

    #: Image width, pixels.
    width: int = 640
    #: Image height, pixels.
    height: int = 480
    #: Horizontal field of view, degrees (square pixels; fy = fx).
    hfov_deg: float = 65.0
    #: Number of frames along the path. The path is flown whole whatever the count, so fewer
    #: frames sample it more sparsely: in time as well as in space where ``rate_hz`` would
    #: make the camera faster than the two limits below.
    n_frames: int = 300
    #: Frame rate, Hz, unless the speed limits below ask for a lower one (see
    #: :func:`camera_trajectory`).
    rate_hz: float = 30.0
    #: Fastest the camera may move between two frames, m/s. Where ``n_frames`` at ``rate_hz``
    #: would fly the path faster, the frames are spaced further apart in time (a constant, lower
    #: frame rate) instead of the path being cut short. Keep it below the mapper's
    #: ``max_speed_m_s`` (5 m/s by default), which refuses faster frames as pose jumps.
    max_camera_speed_m_s: float = 2.0
    #: Fastest the camera may turn between two frames, degrees/s; like
    #: ``max_camera_speed_m_s``, and below the mapper's ``max_angular_speed_deg_s`` (360).
    max_camera_angular_speed_deg_s: float = 180.0
    #: Stamp of the first frame, nanoseconds since the epoch.
    start_stamp_ns: int = 1_700_000_000_000_000_000
    #: Turns around the room centre over the whole sequence.
    path_turns: float = 1.0
    #: Mean camera height above the floor, metres.
    camera_height_m: float = 1.4
    #: Amplitude of the slow camera-height variation, metres.
    height_wobble_m: float = 0.08
    #: Amplitude of the yaw swing away from the room centre, degrees.
    yaw_wobble_deg: float = 25.0
    #: Mean pitch (negative = looking down), degrees.
    pitch_deg: float = -12.0
    #: Amplitude of the pitch variation, degrees.
    pitch_wobble_deg: float = 5.0
    #: Whether to apply the depth noise/dropout model (False = exact, quantised depth).
    depth_noise: bool = True
    #: Shortest measurable depth, metres (closer → 0).
    min_range_m: float = 0.3
    #: Longest measurable depth, metres (farther → 0).
    max_range_m: float = 6.0
    #: Axial noise sigma at ``noise_ref_depth_m``, metres.
    noise_base_m: float = 0.0012
    #: Quadratic growth of the axial noise sigma, metres per metre².
    noise_quadratic_m: float = 0.0019
    #: Depth at which the axial noise is smallest, metres.
    noise_ref_depth_m: float = 0.4
    #: Incidence angle (ray vs. surface normal) beyond which a pixel has no return, degrees.
    grazing_max_deg: float = 80.0
    #: Relative depth jump to a 4-neighbour that marks a pixel as an edge.
    edge_jump_ratio: float = 0.05
    #: Probability that an edge pixel has no return.
    edge_dropout_prob: float = 0.5
    #: Probability that any other pixel has no return.
    random_dropout_prob: float = 0.002
    #: Standard deviation of additive colour noise, 8-bit levels.
    rgb_noise_std: float = 2.0
    #: Seed salt for the per-frame noise (combined with the scene seed and frame index).
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image must be at least 8x8, got {self.width}x{self.height}")
        if not 10.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg must be in [10, 150], got {self.hfov_deg}")
        if self.n_frames < 1 or self.rate_hz <= 0:
            raise ValueError("n_frames >= 1 and rate_hz > 0 required")
        if not (self.max_camera_speed_m_s > 0 and self.max_camera_angular_speed_deg_s > 0):
            raise ValueError(
                "max_camera_speed_m_s and max_camera_angular_speed_deg_s must be > 0, got "
                f"{self.max_camera_speed_m_s}, {self.max_camera_angular_speed_deg_s}"
            )
        if not 0 <= self.min_range_m < self.max_range_m <= 65.535:
            raise ValueError("need 0 <= min_range_m < max_range_m <= 65.535 (16UC1 mm)")
        for name in ("edge_dropout_prob", "random_dropout_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    def intrinsics(self) -> CameraIntrinsics:
        """Pinhole intrinsics; pixel centres at integer coordinates."""
        fx = (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)
        return CameraIntrinsics(
            width=self.width,
            height=self.height,
            fx=fx,
            fy=fx,
            cx=(self.width - 1) / 2,
            cy=(self.height - 1) / 2,
        )

    def depth_sigma_m(self, depth_m: NDArray[np.float32]) -> NDArray[np.float32]:
        """Axial noise standard deviation at each (…) depth, metres."""
        z = depth_m.astype(np.float32)
        return np.float32(self.noise_base_m) + np.float32(self.noise_quadratic_m) * (
            z - np.float32(self.noise_ref_depth_m)
        ) ** 2


def look_at(eye: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    """(4, 4) T_world_camera of an optical frame (x right, y down, z forward) at ``eye``
    looking at ``target`` with the world z axis up."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, forward], axis=1)
    T[:3, 3] = eye
    return T


def look_along(eye: NDArray[np.float64], yaw_rad: float, pitch_rad: float) -> NDArray[np.float64]:
    """(4, 4) T_world_camera at (3,) ``eye`` looking along heading ``yaw_rad`` (from +x toward
    +y) tilted up by ``pitch_rad`` (negative: looking down), world z up."""
    direction = np.array(
        [math.cos(pitch_rad) * math.cos(yaw_rad), math.cos(pitch_rad) * math.sin(yaw_rad),
         math.sin(pitch_rad)]
    )
    return look_at(eye, eye + direction)


def camera_path(scene: Scene, config: RenderConfig) -> NDArray[np.float64]:
    """(n_frames, 4, 4) camera poses: a smooth loop on the scene's camera ellipse.

    The camera looks roughly at the room centre with slow yaw/pitch/height swings, so it sees
    every wall and the furniture from changing angles; every term is a sinusoid of the loop
    angle, so the path and its derivatives are continuous (and closed for whole turns).
    """
    a, b = scene.camera_path_radii_m
    centre = scene.centre_m
    n = config.n_frames
    theta = 2 * math.pi * config.path_turns * np.arange(n) / max(n, 1)
    poses = np.empty((n, 4, 4))
    for i, th in enumerate(theta):
        height = config.camera_height_m + config.height_wobble_m * math.sin(3 * th)
        eye = np.array([centre[0] + a * math.cos(th), centre[1] + b * math.sin(th), height])
        to_centre = math.atan2(centre[1] - eye[1], centre[0] - eye[0])
        yaw = to_centre + math.radians(config.yaw_wobble_deg) * math.sin(2 * th + 0.7)
        pitch = math.radians(config.pitch_deg + config.pitch_wobble_deg * math.sin(5 * th))
        poses[i] = look_along(eye, yaw, pitch)
    return poses


def step_motion(poses: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Translation (m) and rotation angle (degrees) between consecutive (N, 4, 4) poses.

    Two (N - 1,) arrays: the motion the mapper's pose-jump check measures between frames.
    """
    step_m = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    # trace(R_a^T R_b) is the sum of the element-wise product of R_a and R_b.
    trace = np.einsum("nij,nij->n", poses[:-1, :3, :3], poses[1:, :3, :3])
    step_deg = np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))
    return step_m, step_deg


@dataclass(frozen=True)
class CameraTrajectory:
    """The camera's poses and when they are taken: what a recording of the scene holds."""

    #: (N, 4, 4) float64 T_world_camera per frame.
    poses: NDArray[np.float64]
    #: Stamp of frame 0, nanoseconds since the epoch.
    start_stamp_ns: int
    #: Time between consecutive frames, nanoseconds (fractional: stamps are rounded per frame,
    #: so a 30 Hz sequence does not drift by the rounding of one interval).
    frame_period_ns: float

    @property
    def rate_hz(self) -> float:
        """Frame rate, Hz."""
        return 1e9 / self.frame_period_ns

    def stamp_ns(self, index: int) -> int:
        """Stamp of frame ``index``, nanoseconds since the epoch."""
        return self.start_stamp_ns + round(index * self.frame_period_ns)


def camera_trajectory(scene: Scene, config: RenderConfig) -> CameraTrajectory:
    """:func:`camera_path` stamped by :func:`timed_trajectory`.

    The whole loop is always flown, so a short sequence (``--frames 30``) still sees the
    whole room, at a lower frame rate.
    """
    return timed_trajectory(camera_path(scene, config), config)


def timed_trajectory(poses: NDArray[np.float64], config: RenderConfig) -> CameraTrajectory:
    """(N, 4, 4) ``poses`` with stamps at which no step is faster than the config's limits.

    The frames come at ``rate_hz`` unless a step between two of them would then move faster
    than ``max_camera_speed_m_s`` or turn faster than ``max_camera_angular_speed_deg_s``; the
    frame period then grows until the fastest step keeps both limits. The rate stays
    constant, so a bag of any frame count replays through a mapper whose pose-jump limits are
    above the camera's (the mapper compares each step's motion with its ``max_speed_m_s`` and
    ``max_angular_speed_deg_s`` times the time between the stamps).
    """
    period_s = 1.0 / config.rate_hz
    if len(poses) > 1:
        step_m, step_deg = step_motion(poses)
        period_s = max(
            period_s,
            float(step_m.max()) / config.max_camera_speed_m_s,
            float(step_deg.max()) / config.max_camera_angular_speed_deg_s,
        )
    return CameraTrajectory(
        poses=poses, start_stamp_ns=config.start_stamp_ns, frame_period_ns=period_s * 1e9
    )


@dataclass
class RenderedView:
    """Exact (noise-free) images of one view."""

    #: (H, W) float32 z-depth along the optical axis, metres; 0 where no surface was hit.
    depth_m: NDArray[np.float32]
    #: (H, W) int32 instance id per pixel, 0 = none.
    instance_ids: NDArray[np.int32]
    #: (H, W) float32 |cos| of the angle between the viewing ray and the surface normal.
    cos_incidence: NDArray[np.float32]
    #: (H, W, 3) uint8 shaded colour without noise.
    rgb: NDArray[np.uint8]


class Renderer:
    """Ray casts one scene from arbitrary poses; builds the acceleration structure once."""

    def __init__(
        self,
        scene: SceneGeometry,
        config: RenderConfig | None = None,
        *,
        trajectory: CameraTrajectory | None = None,
    ) -> None:
        """``trajectory`` defaults to a room's :func:`camera_trajectory`; any other scene
        (a building floor) comes with its own route's."""
        self.scene = scene
        self.config = config or RenderConfig()
        self.intrinsics = self.config.intrinsics()
        if trajectory is None:
            if not isinstance(scene, Scene):
                raise TypeError(
                    f"{type(scene).__name__} has no default camera path: pass its trajectory"
                )
            trajectory = camera_trajectory(scene, self.config)
        #: The sequence's poses and stamps; :meth:`frame` stamps frame ``index`` from it.
        self.trajectory = trajectory
        self._raycaster = o3d.t.geometry.RaycastingScene()
        geometry_to_instance = {}
        colours = np.zeros((len(scene.instances) + 1, 3), dtype=np.float32)
        for inst in scene.instances:
            mesh = o3d.t.geometry.TriangleMesh()
            mesh.vertex.positions = o3d.core.Tensor.from_numpy(inst.vertices.astype(np.float32))
            mesh.triangle.indices = o3d.core.Tensor.from_numpy(inst.triangles)
            geometry_to_instance[int(self._raycaster.add_triangles(mesh))] = inst.instance_id
            colours[inst.instance_id] = np.asarray(inst.colour_rgb, dtype=np.float32)
        lut = np.zeros(max(geometry_to_instance, default=0) + 2, dtype=np.int32)
        for geometry_id, instance_id in geometry_to_instance.items():
            lut[geometry_id] = instance_id
        self._instance_lut = lut
        self._colours = colours
        intr = self.intrinsics
        u, v = np.meshgrid(
            np.arange(intr.width, dtype=np.float64), np.arange(intr.height, dtype=np.float64)
        )
        #: Camera-frame ray directions with unit z, so the hit distance is the z-depth.
        self._dirs_cam = np.stack(
            [(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u)], axis=-1
        )
        #: (H, W) 1 / ray length; rotations keep lengths, so it holds in every pose.
        self._inv_ray_len = (1.0 / np.linalg.norm(self._dirs_cam, axis=-1)).astype(np.float32)

    def render(self, T_world_camera: NDArray[np.float64]) -> RenderedView:
        """Exact depth, instances, incidence and shaded colour seen from ``T_world_camera``."""
        R, t = T_world_camera[:3, :3], T_world_camera[:3, 3]
        h, w = self._dirs_cam.shape[:2]
        rays = np.empty((h, w, 6), dtype=np.float32)
        rays[..., :3] = t
        np.matmul(self._dirs_cam, R.T, out=rays[..., 3:], casting="same_kind")
        dirs = rays[..., 3:]
        hit = self._raycaster.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=0)
        t_hit = hit["t_hit"].numpy()
        geometry = hit["geometry_ids"].numpy()
        valid = np.isfinite(t_hit)
        depth = np.where(valid, t_hit, 0.0).astype(np.float32)
        geometry = np.where(valid, geometry, len(self._instance_lut) - 1).astype(np.int64)
        instance_ids = self._instance_lut[geometry]
        normals = hit["primitive_normals"].numpy()
        cos_view = np.abs(np.einsum("hwc,hwc->hw", normals, dirs)) * self._inv_ray_len
        cos_light = np.abs(normals @ _LIGHT_DIR.astype(np.float32))
        # Lambertian: ambient + a headlight (keeps faces facing the camera readable) + room light.
        shade = np.float32(0.3) + np.float32(0.4) * cos_view + np.float32(0.3) * cos_light
        rgb = self._colours[instance_ids] * shade[..., None]
        return RenderedView(
            depth_m=depth,
            instance_ids=instance_ids.astype(np.int32),
            cos_incidence=np.where(valid, cos_view, 0.0).astype(np.float32),
            rgb=np.clip(rgb + 0.5, 0, 255).astype(np.uint8),
        )

    def sensor_depth(
        self, view: RenderedView, rng: np.random.Generator
    ) -> NDArray[np.float32]:
        """(H, W) float32 depth as the sensor reports it: noisy, with holes, mm-quantised."""
        cfg = self.config
        z = view.depth_m
        valid = z > 0
        if cfg.depth_noise:
            noisy = z + rng.standard_normal(z.shape).astype(np.float32) * cfg.depth_sigma_m(z)
            grazing = view.cos_incidence < math.cos(math.radians(cfg.grazing_max_deg))
            edge = _depth_edges(z, cfg.edge_jump_ratio)
            drop = (
                grazing
                | (edge & (rng.random(z.shape) < cfg.edge_dropout_prob))
                | (rng.random(z.shape) < cfg.random_dropout_prob)
            )
            valid &= ~drop
        else:
            noisy = z
        valid &= (z >= cfg.min_range_m) & (z <= cfg.max_range_m)
        out = np.where(valid, np.round(noisy * 1000.0) / 1000.0, 0.0).astype(np.float32)
        return np.maximum(out, 0.0)

    def frame(self, index: int, T_world_camera: NDArray[np.float64]) -> Frame:
        """Frame ``index`` of the sequence (its stamp and noise), seen from ``T_world_camera``."""
        cfg = self.config
        view = self.render(T_world_camera)
        rng = np.random.default_rng([self.scene.seed, cfg.noise_seed, index])
        depth = self.sensor_depth(view, rng)
        rgb = view.rgb
        if cfg.rgb_noise_std > 0:
            noise = rng.standard_normal(rgb.shape).astype(np.float32) * cfg.rgb_noise_std
            rgb = np.clip(rgb.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
        return Frame(
            stamp_ns=self.trajectory.stamp_ns(index),
            rgb=rgb,
            depth_m=depth,
            intrinsics=self.intrinsics,
            T_world_camera=T_world_camera.copy(),
            index=index,
            instance_ids=view.instance_ids,
        )


def _depth_edges(depth_m: NDArray[np.float32], jump_ratio: float) -> NDArray[np.bool_]:
    """(H, W) pixels whose depth differs from a 4-neighbour by more than ``jump_ratio``·z."""
    edge = np.zeros(depth_m.shape, dtype=bool)
    jump_y = np.abs(np.diff(depth_m, axis=0)) > jump_ratio * np.minimum(
        depth_m[1:], depth_m[:-1]
    )
    jump_x = np.abs(np.diff(depth_m, axis=1)) > jump_ratio * np.minimum(
        depth_m[:, 1:], depth_m[:, :-1]
    )
    edge[1:] |= jump_y
    edge[:-1] |= jump_y
    edge[:, 1:] |= jump_x
    edge[:, :-1] |= jump_x
    return edge


def render_frames(
    scene: SceneGeometry,
    config: RenderConfig | None = None,
    *,
    trajectory: CameraTrajectory | None = None,
) -> Iterator[Frame]:
    """The scene's frames along ``trajectory`` (a room's default: :func:`camera_trajectory`),
    one at a time, so memory holds one frame however long the sequence."""
    renderer = Renderer(scene, config, trajectory=trajectory)
    for index, pose in enumerate(renderer.trajectory.poses):
        yield renderer.frame(index, pose)

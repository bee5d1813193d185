"""A tiny ray-cast scene (floor, wall, two boxes, a sphere) rendered to RGB-D frames.

Ground truth comes from the same Open3D ``RaycastingScene``: per-pixel instance ids from the
hit geometry, and distances / closest-object ids for any 3D point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d
import pytest

from diff2scene.types import CameraIntrinsics, Frame

#: (name, colour) per instance, instance id = position + 1.
OBJECTS = [
    ("floor", (120, 110, 100)),
    ("wall", (200, 200, 210)),
    ("table", (150, 90, 40)),
    ("cabinet", (40, 120, 200)),
    ("ball", (220, 40, 60)),
]


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """T_world_camera of an optical-frame camera (z forward, y down) at eye looking at target."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.array([0.0, 0.0, 1.0]))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


@dataclass
class RayScene:
    scene: o3d.t.geometry.RaycastingScene
    intrinsics: CameraIntrinsics

    @property
    def palette(self) -> np.ndarray:
        """(num_instances + 1, 3) uint8 colour per instance id (0 = background, black)."""
        return np.array([(0, 0, 0)] + [c for _, c in OBJECTS], dtype=np.uint8)

    def render(self, T_world_camera: np.ndarray, stamp_ns: int = 0, index: int = 0) -> Frame:
        intr = self.intrinsics
        K = o3d.core.Tensor(intr.matrix())
        extrinsic = o3d.core.Tensor(np.linalg.inv(T_world_camera))
        rays = self.scene.create_rays_pinhole(K, extrinsic, intr.width, intr.height)
        hit = self.scene.cast_rays(rays)
        t = hit["t_hit"].numpy()
        dirs = rays.numpy()[..., 3:]
        depth = (t * (dirs @ T_world_camera[:3, 2])).astype(np.float32)
        gid = hit["geometry_ids"].numpy().astype(np.int64)
        miss = ~np.isfinite(depth)
        depth[miss] = 0.0
        inst = np.where(miss, 0, gid + 1).astype(np.int32)
        rgb = self.palette[inst]
        # Texture (checker in world space would need hit points; a pixel checker is enough to
        # give the sharpness measure something to see).
        checker = ((np.indices(depth.shape).sum(axis=0) // 4) % 2).astype(np.uint8) * 20
        rgb = np.clip(rgb.astype(np.int16) - checker[..., None], 0, 255).astype(np.uint8)
        return Frame(
            stamp_ns=stamp_ns,
            rgb=rgb,
            depth_m=depth,
            intrinsics=intr,
            T_world_camera=T_world_camera,
            index=index,
            instance_ids=inst,
        )

    def orbit(self, num_frames: int, *, radius_m: float = 2.6, height_m: float = 1.4,
              arc_deg: float = 120.0) -> list[Frame]:
        """Frames on an arc around the scene centre, 10 Hz stamps."""
        frames = []
        for i in range(num_frames):
            a = math.radians(-90.0 - arc_deg / 2 + arc_deg * i / max(1, num_frames - 1))
            eye = np.array([radius_m * math.cos(a), radius_m * math.sin(a), height_m])
            T = look_at(eye, np.array([0.0, 0.3, 0.4]))
            frames.append(self.render(T, stamp_ns=i * 100_000_000, index=i))
        return frames

    def distance(self, points: np.ndarray) -> np.ndarray:
        """(M,) unsigned distance of points to the nearest scene surface, metres."""
        q = o3d.core.Tensor(points.astype(np.float32))
        return self.scene.compute_distance(q).numpy()

    def closest_instance(self, points: np.ndarray) -> np.ndarray:
        """(M,) instance id (1-based) of the nearest surface."""
        q = o3d.core.Tensor(points.astype(np.float32))
        return self.scene.compute_closest_points(q)["geometry_ids"].numpy().astype(np.int64) + 1


def build_scene(width: int = 160, height: int = 120) -> RayScene:
    meshes = [
        o3d.geometry.TriangleMesh.create_box(4.0, 4.0, 0.02).translate((-2.0, -2.0, -0.02)),
        o3d.geometry.TriangleMesh.create_box(4.0, 0.05, 2.0).translate((-2.0, 1.6, 0.0)),
        o3d.geometry.TriangleMesh.create_box(1.0, 0.6, 0.7).translate((-1.0, 0.2, 0.0)),
        o3d.geometry.TriangleMesh.create_box(0.5, 0.5, 1.2).translate((0.6, 0.6, 0.0)),
        o3d.geometry.TriangleMesh.create_sphere(0.25, resolution=30).translate((0.3, -0.4, 0.25)),
    ]
    scene = o3d.t.geometry.RaycastingScene()
    for i, mesh in enumerate(meshes):
        gid = scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        assert gid == i
    f = 0.9 * width
    intr = CameraIntrinsics(width, height, f, f, (width - 1) / 2, (height - 1) / 2)
    return RayScene(scene, intr)


@pytest.fixture(scope="session")
def ray_scene() -> RayScene:
    return build_scene()


@pytest.fixture(scope="session")
def orbit_frames(ray_scene: RayScene) -> list[Frame]:
    return ray_scene.orbit(40)



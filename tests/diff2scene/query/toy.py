"""A hand-built semantic map of a tiny room shared by the query and evaluation tests.

Objects are solid boxes of 5 cm voxels; each is seen in three keyframes, giving three masks
whose embeddings are the oracle's clean text embeddings of the object's class plus a little
noise, and every voxel of an object is a member of its three masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from diff2scene.mapping.snapshot import MapSnapshot
from diff2scene.segmentation.base import TextEncoder
from diff2scene.segmentation.oracle import OracleSegmenter
from diff2scene.segmentation.text import default_templates, ensemble_embeddings

VOXEL_M = 0.05
#: name, class, box min (x, y, z) and max in metres (inclusive of voxel centres).
Objects = tuple[tuple[str, str, tuple[float, float, float], tuple[float, float, float]], ...]
#: The default room.
OBJECTS: Objects = (
    ("floor", "floor", (0.0, 0.0, 0.0), (1.95, 1.95, 0.0)),
    ("chair_a", "chair", (0.2, 0.2, 0.05), (0.45, 0.45, 0.5)),
    ("table", "table", (0.6, 0.2, 0.05), (1.0, 0.6, 0.7)),
    ("lamp", "lamp", (0.7, 0.3, 0.75), (0.8, 0.4, 0.95)),
    ("chair_b", "chair", (1.5, 1.5, 0.05), (1.75, 1.75, 0.5)),
)


@dataclass
class ToyMap:
    """The arrays of a ``SemanticMap`` plus ground truth per voxel."""

    coords: NDArray[np.int32]
    member_ids: NDArray[np.int32]
    member_weights: NDArray[np.float32]
    embeddings: dict[str, NDArray[np.float32]]
    #: (M,) int32 object index into the objects the map was built from (OBJECTS by default).
    voxel_object: NDArray[np.int32]
    features_3d: dict[str, NDArray[np.float16]] = field(default_factory=dict)
    voxel_size_m: float = VOXEL_M

    @property
    def points_m(self) -> NDArray[np.float32]:
        return (self.coords.astype(np.float64) * self.voxel_size_m).astype(np.float32)

    def snapshot(self) -> MapSnapshot:
        return MapSnapshot.from_arrays(
            voxel_size_m=self.voxel_size_m,
            coords=self.coords,
            member_ids=self.member_ids,
            member_weights=self.member_weights,
            bank_embeddings=self.embeddings,
            features_3d=self.features_3d,
        )


def _box(lo: tuple[float, ...], hi: tuple[float, ...]) -> NDArray[np.int32]:
    axes = [
        np.arange(round(a / VOXEL_M), round(b / VOXEL_M) + 1) for a, b in zip(lo, hi, strict=True)
    ]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid.astype(np.int32)


def build_toy_map(
    encoder: TextEncoder,
    oracle: OracleSegmenter,
    *,
    seed: int = 0,
    with_features: bool = True,
    objects: Objects = OBJECTS,
) -> ToyMap:
    rng = np.random.default_rng(seed)
    classes = [c for _, c, _, _ in objects]
    text = ensemble_embeddings(encoder, classes, default_templates(encoder))
    coords, owner = [], []
    for j, (_, _, lo, hi) in enumerate(objects):
        box = _box(lo, hi)
        coords.append(box)
        owner.append(np.full(len(box), j, dtype=np.int32))
    all_coords = np.concatenate(coords)
    voxel_object = np.concatenate(owner)
    clip, diff = [], []
    for j in range(len(objects)):
        for _ in range(3):
            e = text[j] + 0.02 * rng.standard_normal(text.shape[1]).astype(np.float32)
            clip.append(e / np.linalg.norm(e))
            d = text[j] @ oracle.projection
            diff.append(d / np.linalg.norm(d))
    emb = {
        "clip": np.stack(clip).astype(np.float32),
        "diffusion": np.stack(diff).astype(np.float32),
    }
    m = len(all_coords)
    ids = np.full((m, 4), -1, dtype=np.int32)
    weights = np.zeros((m, 4), dtype=np.float32)
    ids[:, :3] = voxel_object[:, None] * 3 + np.arange(3)[None, :]
    weights[:, :3] = np.array([1.0, 0.8, 0.6], dtype=np.float32)
    toy = ToyMap(all_coords, ids, weights, emb, voxel_object)
    if with_features:
        # 3D features aligned with the object's mean mask embedding, centred so other objects'
        # masks score low: what a well-distilled network would produce.
        for space, e in emb.items():
            centre = e.mean(axis=0)
            proto = np.stack([e[3 * j : 3 * j + 3].mean(axis=0) for j in range(len(objects))])
            feats = (
                12.0 * (proto - centre)[voxel_object] / np.linalg.norm(proto - centre, axis=1).max()
            )
            toy.features_3d[space] = feats.astype(np.float16)
    return toy

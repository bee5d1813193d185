"""A synthetic scene written out in ScanNet's export layout and in NICE-SLAM's Replica layout.

The frames are the synthetic bag's own (read back through the bag frame source, so they are
exactly what a replay of that bag maps); the ground truth is the scene's labelled points in
each dataset's own files. ScanNet's colour is written larger than the depth, off-centre and
with a border, so only a registration that follows the intrinsics gets the depth camera's
pixels back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from numpy.typing import NDArray
from PIL import Image

from diff2scene.io.bag import BagFrameSource
from diff2scene.segmentation.vocabularies import get_vocabulary
from diff2scene.synth.bag import depth_to_mm
from diff2scene.synth.dataset import SynthResult
from diff2scene.synth.groundtruth import GroundTruth
from diff2scene.types import Frame

SCENE = "scene0042_00"
#: Colour written at this many times the depth resolution.
COLOR_SCALE = 2
#: Border (left, top, right, bottom) around the upscaled colour, pixels: the depth view sits
#: off-centre in the colour image, as a real colour camera's wider view does.
COLOR_BORDER = (10, 6, 4, 2)
REPLICA_DEPTH_SCALE = 6553.5


def bag_frames(result: SynthResult) -> list[Frame]:
    return list(BagFrameSource(result.bag_path))


def _matrix_text(M: NDArray[np.float64]) -> str:
    return "\n".join(" ".join(f"{v:.9f}" for v in row) for row in M) + "\n"


def _write_ply(path: Path, vertex: list[tuple[str, str, NDArray]], faces: NDArray | None = None,
               face_object: NDArray | None = None) -> None:  # fmt: skip
    """Binary little-endian PLY: vertex properties, then, when given, triangles (uchar count
    + int indices) with an ``object_id`` each."""
    n = len(vertex[0][2])
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property {ptype} {name}" for name, ptype, _ in vertex]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    if face_object is not None:
        header.append("property int object_id")
    header.append("end_header")
    np_types = {"float": "<f4", "uchar": "u1", "ushort": "<u2", "int": "<i4"}
    vdtype = np.dtype([(name, np_types[ptype]) for name, ptype, _ in vertex])
    rows = np.zeros(n, vdtype)
    for name, _, values in vertex:
        rows[name] = values
    body = rows.tobytes()
    if faces is not None:
        fields = [("n", "u1"), ("idx", "<i4", (3,))]
        if face_object is not None:
            fields.append(("obj", "<i4"))
        frows = np.zeros(len(faces), np.dtype(fields))  # type: ignore[call-overload]
        frows["n"] = 3
        frows["idx"] = faces
        if face_object is not None:
            frows["obj"] = face_object
        body += frows.tobytes()
    path.write_bytes(("\n".join(header) + "\n").encode() + body)


def write_scannet_ground_truth(gt: GroundTruth, directory: Path) -> None:
    """``<scene>_vh_clean_2.labels.ply`` (the points as vertices, NYU40 ids where the class
    is a ScanNet20 class), the aggregation (one object per instance, labelled with its class
    name) and the segments (one per instance)."""
    scannet20 = get_vocabulary("scannet20")
    assert scannet20.ids is not None
    nyu40 = dict(zip(scannet20.names, scannet20.ids, strict=True))
    class_name = {c.class_id: c.name for c in gt.classes}
    labels = np.array([nyu40.get(class_name[int(c)], 0) for c in gt.point_class], np.uint16)
    rgb = np.full(len(gt.points), 128, np.uint8)
    _write_ply(directory / f"{SCENE}_vh_clean_2.labels.ply", [
        ("x", "float", gt.points[:, 0]), ("y", "float", gt.points[:, 1]),
        ("z", "float", gt.points[:, 2]), ("red", "uchar", rgb), ("green", "uchar", rgb),
        ("blue", "uchar", rgb), ("label", "ushort", labels),
    ])  # fmt: skip
    groups = [
        {"id": i, "objectId": inst.instance_id - 1, "segments": [inst.instance_id],
         "label": inst.class_name}
        for i, inst in enumerate(gt.instances)
    ]  # fmt: skip
    (directory / f"{SCENE}.aggregation.json").write_text(
        json.dumps({"sceneId": f"scannet.{SCENE}", "appId": "test", "segGroups": groups})
    )
    (directory / f"{SCENE}_vh_clean_2.0.010000.segs.json").write_text(
        json.dumps({"sceneId": SCENE, "segIndices": gt.point_instance.tolist()})
    )


def write_replica_ground_truth(gt: GroundTruth, directory: Path) -> None:
    """``habitat/mesh_semantic.ply`` (each point a degenerate triangle of its instance) and
    ``habitat/info_semantic.json`` (instance id → class name)."""
    habitat = directory / "habitat"
    habitat.mkdir(parents=True)
    idx = np.arange(len(gt.points), dtype=np.int32)
    _write_ply(habitat / "mesh_semantic.ply",
               [("x", "float", gt.points[:, 0]), ("y", "float", gt.points[:, 1]),
                ("z", "float", gt.points[:, 2])],
               faces=np.stack([idx, idx, idx], axis=1), face_object=gt.point_instance)  # fmt: skip
    objects = [{"id": inst.instance_id, "class_name": inst.class_name} for inst in gt.instances]
    (habitat / "info_semantic.json").write_text(json.dumps({"objects": objects}))


@dataclass
class WrittenSequence:
    root: Path
    #: Dataset frame number → index of the synthetic frame it shows; the frame numbers
    #: missing from it carry an invalid pose.
    synthetic_index: dict[int, int]
    #: Frame numbers written with an invalid pose.
    invalid: list[int]
    #: Replica only: the camera file.
    camera: Path | None = None
    #: Replica only: the scene directory with the semantic mesh.
    ground_truth: Path | None = None


def _numbering(n_frames: int, invalid_at: int | None) -> list[tuple[int, int, bool]]:
    """(frame number, synthetic frame shown, pose valid) of each dataset frame: the synthetic
    frames in order, plus, at number ``invalid_at``, one more frame that repeats the previous
    view with an invalid pose (tracking lost). Every synthetic view stays in the sequence, so
    an import maps the same surfaces as the synthetic bag and the skip is all that differs."""
    rows = [(n, n, True) for n in range(n_frames)]
    if invalid_at is None:
        return rows
    return [*rows[:invalid_at], (invalid_at, invalid_at - 1, False),
            *((n + 1, i, ok) for n, i, ok in rows[invalid_at:])]  # fmt: skip


def write_scannet(result: SynthResult, root: Path, *, invalid_at: int | None = None
                  ) -> WrittenSequence:  # fmt: skip
    """``root/color/N.jpg`` (upscaled, bordered), ``depth/N.png`` (mm), ``pose/N.txt``
    (rows of ``-inf`` for the frame inserted at ``invalid_at``), ``intrinsic/``, and the
    ground truth."""
    frames = bag_frames(result)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(parents=True)
    left, top, right, bottom = COLOR_BORDER
    numbering = _numbering(len(frames), invalid_at)
    for n, i, valid in numbering:
        frame = frames[i]
        big = np.repeat(np.repeat(frame.rgb, COLOR_SCALE, axis=0), COLOR_SCALE, axis=1)
        bordered = np.pad(big, ((top, bottom), (left, right), (0, 0)), constant_values=255)
        Image.fromarray(bordered).save(root / "color" / f"{n}.jpg", quality=95)
        Image.fromarray(depth_to_mm(frame.depth_m)).save(root / "depth" / f"{n}.png")
        pose = frame.T_world_camera if valid else np.full((4, 4), -np.inf)
        (root / "pose" / f"{n}.txt").write_text(_matrix_text(pose))
    d = frames[0].intrinsics
    c = d.scaled(COLOR_SCALE)
    K_depth = np.eye(4)
    K_depth[:3, :3] = d.matrix()
    K_color = np.eye(4)
    K_color[:3, :3] = c.matrix()
    K_color[0, 2] += left
    K_color[1, 2] += top
    (root / "intrinsic" / "intrinsic_depth.txt").write_text(_matrix_text(K_depth))
    (root / "intrinsic" / "intrinsic_color.txt").write_text(_matrix_text(K_color))
    write_scannet_ground_truth(result.groundtruth, root)
    return WrittenSequence(root, {n: i for n, i, ok in numbering if ok},
                           [n for n, _, ok in numbering if not ok])  # fmt: skip


def write_replica(result: SynthResult, root: Path, *, invalid_at: int | None = None,
                  camera_under_cam: bool = True) -> WrittenSequence:  # fmt: skip
    """``root/seq/results/frame%06d.jpg`` + ``depth%06d.png``, ``root/seq/traj.txt`` (a line
    of NaN for the frame inserted at ``invalid_at``), the camera YAML ``root/replica.yaml``
    (under ``cam:`` or flat) and the semantic mesh in ``root/room/habitat/``."""
    frames = bag_frames(result)
    seq = root / "seq"
    (seq / "results").mkdir(parents=True)
    lines = []
    numbering = _numbering(len(frames), invalid_at)
    for n, i, valid in numbering:
        frame = frames[i]
        Image.fromarray(frame.rgb).save(seq / "results" / f"frame{n:06d}.jpg", quality=95)
        raw = np.round(frame.depth_m.astype(np.float64) * REPLICA_DEPTH_SCALE)
        Image.fromarray(np.clip(raw, 0, 65535).astype(np.uint16)).save(
            seq / "results" / f"depth{n:06d}.png"
        )
        pose = frame.T_world_camera if valid else np.full((4, 4), np.nan)
        lines.append(" ".join(f"{v:.9f}" for v in pose.reshape(-1)))
    (seq / "traj.txt").write_text("\n".join(lines) + "\n")
    k = frames[0].intrinsics
    cam = {"H": k.height, "W": k.width, "fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy,
           "png_depth_scale": REPLICA_DEPTH_SCALE, "crop_edge": 0}  # fmt: skip
    camera = root / "replica.yaml"
    camera.write_text(yaml.safe_dump({"dataset": "replica", "cam": cam} if camera_under_cam
                                     else cam))  # fmt: skip
    write_replica_ground_truth(result.groundtruth, root / "room")
    return WrittenSequence(seq, {n: i for n, i, ok in numbering if ok},
                           [n for n, _, ok in numbering if not ok], camera=camera,
                           ground_truth=root / "room")  # fmt: skip

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diff2scene.errors import DataFormatError
from diff2scene.eval.datasets import load_scene, read_ply
from diff2scene.segmentation.vocabularies import get_vocabulary


def write_scannet(directory: Path, scene: str = "scene0000_00") -> None:
    """4 vertices: two of a chair (object 0), one of a wall (object 1), one unannotated."""
    directory.mkdir()
    xyz = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    nyu40 = np.array([5, 5, 1, 0], dtype=np.uint16)  # chair, chair, wall, unannotated
    vert = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                              ("green", "u1"), ("blue", "u1"), ("alpha", "u1"),
                              ("label", "<u2")])  # fmt: skip
    vert["x"], vert["y"], vert["z"] = xyz.T
    vert["label"] = nyu40
    face = np.zeros(1, dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face["n"] = 3
    face["v"] = [0, 1, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\n"
        "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
        "property uchar blue\nproperty uchar alpha\nproperty ushort label\nelement face 1\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    (directory / f"{scene}_vh_clean_2.labels.ply").write_bytes(
        header.encode() + vert.tobytes() + face.tobytes()
    )
    (directory / f"{scene}_vh_clean_2.0.010000.segs.json").write_text(
        json.dumps({"segIndices": [7, 7, 9, 11]})
    )
    (directory / f"{scene}.aggregation.json").write_text(
        json.dumps(
            {
                "segGroups": [
                    {"objectId": 0, "label": "office chair", "segments": [7]},
                    {"objectId": 1, "label": "wall", "segments": [9]},
                ]
            }
        )
    )


def test_scannet_layout_scannet20_and_scannet200(tmp_path: Path) -> None:
    write_scannet(tmp_path / "s")
    s20 = load_scene(tmp_path / "s", vocabulary="scannet20")
    names = s20.class_names
    assert s20.name == "scene0000_00"
    np.testing.assert_allclose(s20.points[1], [1, 0, 0])
    assert [names[c] if c >= 0 else None for c in s20.point_class] == [
        "chair", "chair", "wall", None
    ]  # fmt: skip
    np.testing.assert_array_equal(s20.point_instance, [1, 1, 2, 0])
    s200 = load_scene(tmp_path / "s")  # scannet200 by default, labels by category name
    n200 = s200.class_names
    assert [n200[c] if c >= 0 else None for c in s200.point_class] == [
        "office chair", "office chair", "wall", None
    ]  # fmt: skip
    assert s200.split_of == dict(get_vocabulary("scannet200").split_of)
    assert s200.split_of["wall"] == "head"


def test_scannet200_needs_the_aggregation(tmp_path: Path) -> None:
    write_scannet(tmp_path / "s")
    (tmp_path / "s" / "scene0000_00.aggregation.json").unlink()
    assert load_scene(tmp_path / "s", vocabulary="scannet20").point_instance.max() == 0
    with pytest.raises(DataFormatError, match="aggregation"):
        load_scene(tmp_path / "s")


def test_replica_layout_ascii_mesh(tmp_path: Path) -> None:
    base = tmp_path / "room0" / "habitat"
    base.mkdir(parents=True)
    (base / "mesh_semantic.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 6\nproperty float x\nproperty float y\n"
        "property float z\nelement face 2\nproperty list uchar int vertex_indices\n"
        "property int object_id\nend_header\n"
        "0 0 0\n1 0 0\n1 1 0\n0 1 0\n5 5 5\n9 9 9\n"
        "4 0 1 2 3 12\n3 4 4 4 30\n"
    )
    (base / "info_semantic.json").write_text(json.dumps({
        "objects": [{"id": 12, "class_name": "floor"}, {"id": 30, "class_name": "lamp"}],
        "classes": [{"id": 1, "name": "floor"}, {"id": 2, "name": "lamp"}],
    }))  # fmt: skip
    with pytest.raises(DataFormatError):  # quads and triangles mixed: rows of different lengths
        read_ply(base / "mesh_semantic.ply")
    # Replica's meshes are all quads; make the second face a degenerate quad.
    text = (base / "mesh_semantic.ply").read_text().replace("3 4 4 4 30", "4 4 4 4 4 30")
    (base / "mesh_semantic.ply").write_text(text)
    scene = load_scene(tmp_path / "room0")
    assert scene.class_names == ["floor", "lamp"]
    np.testing.assert_array_equal(scene.point_class, [0, 0, 0, 0, 1, -1])
    np.testing.assert_array_equal(scene.point_instance, [12, 12, 12, 12, 30, 0])
    assert scene.split_of == {}


def test_unknown_or_broken_directories(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        load_scene(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="not a synthetic"):
        load_scene(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x_vh_clean_2.labels.ply").write_bytes(b"not a ply")
    with pytest.raises(DataFormatError, match="not a PLY"):
        load_scene(bad)

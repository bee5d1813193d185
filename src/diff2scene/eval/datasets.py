"""Ground-truth scenes for evaluation: synthetic, ScanNet-format and Replica-format directories.

Every loader returns an :class:`EvalScene`: labelled points (class index into the scene's class
list, -1 = ignore; instance id, 0 = none) plus the class list and its frequency splits.

**Synthetic** (``diff2scene synth`` output)::

    DIR/scene.json  DIR/gt_points.npz  [DIR/bag/]

Classes are the generator's class table, split by its head/common/tail tiers.

**ScanNet** (the released per-scene files)::

    DIR/<scene>_vh_clean_2.labels.ply         vertices x, y, z, ..., label (ScanNet label id)
    DIR/<scene>.aggregation.json              optional: segGroups [{objectId, label, segments}]
    DIR/<scene>_vh_clean_2.0.010000.segs.json optional: {"segIndices": [segment per vertex]}

The ``.labels.ply`` ``label`` property holds NYU40 ids: with the ``scannet20`` vocabulary
they are translated through its id column. With any other vocabulary (``scannet200`` by
default, whose head/common/tail split is the published one) the class of a vertex is the raw
category name of its aggregation group (``segGroups[].label``) matched to the vocabulary's
names, so the two JSON files are needed. Classes outside the vocabulary are ignored.
Instances come from the aggregation (objectId + 1 per vertex of its segments).

**Replica** (the released ``habitat`` semantic mesh)::

    DIR/[habitat/]mesh_semantic.ply   vertices x, y, z; faces vertex_indices + object_id
    DIR/[habitat/]info_semantic.json  {"objects": [{"id", "class_name"}, ...], ...}

Each vertex takes the object (and its class) of a face using it. Classes are the vocabulary's
names when one is given (other classes ignored), else every class name in the file; Replica has
no frequency split.

PLY files are read by a small NumPy reader (ascii and binary little/big endian; a list property
must have the same length in every row, true for ScanNet and Replica meshes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import DataFormatError

SceneFormat = Literal["auto", "synthetic", "scannet", "replica"]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass
class EvalScene:
    """Labelled ground-truth points of one scene."""

    name: str
    #: (N, 3) float32 points, metres, in the frame the map was built in.
    points: NDArray[np.float32]
    #: (N,) int32 index into ``class_names``, -1 = ignore.
    point_class: NDArray[np.int32]
    #: (N,) int32 instance id, 0 = none.
    point_instance: NDArray[np.int32]
    class_names: list[str]
    #: Class name → split ("head"/"common"/"tail"); empty when the dataset has none.
    split_of: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.points.shape[0]
        if self.points.shape != (n, 3) or self.point_class.shape != (n,):
            raise DataFormatError(f"{self.name}: points {self.points.shape}, classes mismatch")
        if self.point_instance.shape != (n,):
            raise DataFormatError(f"{self.name}: instance ids do not match the points")
        if n and int(self.point_class.max()) >= len(self.class_names):
            raise DataFormatError(f"{self.name}: class index beyond the class list")


def read_ply(path: Path) -> dict[str, dict[str, NDArray[Any]]]:
    """Element name → property name → array (lists as (rows, count) arrays)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc}") from exc
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise DataFormatError(f"{path}: not a PLY file")
    header = raw[:end].decode("ascii", errors="replace").splitlines()
    body = raw[end + len(b"end_header\n") :]
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, str, str | None]]]] = []
    for line in header[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements:
            if parts[1] == "list":
                elements[-1][2].append((parts[4], parts[3], parts[2]))
            else:
                elements[-1][2].append((parts[2], parts[1], None))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise DataFormatError(f"{path}: unsupported PLY format {fmt!r}")
    try:
        if fmt == "ascii":
            return _ply_ascii(body, elements)
        return _ply_binary(body, elements, "<" if fmt == "binary_little_endian" else ">")
    except (KeyError, ValueError, IndexError) as exc:
        raise DataFormatError(f"{path}: malformed PLY body: {exc}") from exc


def _ply_ascii(
    body: bytes, elements: list[tuple[str, int, list[tuple[str, str, str | None]]]]
) -> dict[str, dict[str, NDArray[Any]]]:
    lines = body.decode("ascii").split("\n")
    out: dict[str, dict[str, NDArray[Any]]] = {}
    row = 0
    for name, count, props in elements:
        rows = [lines[row + i].split() for i in range(count)]
        row += count
        cols: dict[str, list[Any]] = {p[0]: [] for p in props}
        for values in rows:
            pos = 0
            for pname, _ptype, count_type in props:
                if count_type is None:
                    cols[pname].append(float(values[pos]))
                    pos += 1
                else:
                    k = int(values[pos])
                    cols[pname].append([float(v) for v in values[pos + 1 : pos + 1 + k]])
                    pos += 1 + k
        out[name] = {
            pname: np.array(cols[pname], dtype=_PLY_TYPES[ptype]) for pname, ptype, _ in props
        }
    return out


def _ply_binary(
    body: bytes, elements: list[tuple[str, int, list[tuple[str, str, str | None]]]], order: str
) -> dict[str, dict[str, NDArray[Any]]]:
    out: dict[str, dict[str, NDArray[Any]]] = {}
    offset = 0
    for name, count, props in elements:
        fields: list[tuple[str, str] | tuple[str, str, tuple[int]]] = []
        for pname, ptype, count_type in props:
            if count_type is None:
                fields.append((pname, order + _PLY_TYPES[ptype]))
                continue
            # Fixed-length lists: the first row's count must hold for every row (checked).
            first = np.frombuffer(body, order + _PLY_TYPES[count_type], 1, offset).item()
            fields.append((f"__n_{pname}", order + _PLY_TYPES[count_type]))
            fields.append((pname, order + _PLY_TYPES[ptype], (int(first),)))
        dtype = np.dtype(fields)  # type: ignore[arg-type]
        data = np.frombuffer(body, dtype, count, offset)
        offset += dtype.itemsize * count
        element: dict[str, NDArray[Any]] = {}
        for pname, _ptype, count_type in props:
            if count_type is not None and count:
                counts = data[f"__n_{pname}"]
                if not np.all(counts == counts[0]):
                    raise ValueError(f"list property {pname} has rows of different lengths")
            element[pname] = np.array(data[pname])
        out[name] = element
    return out


def load_synthetic(directory: Path) -> EvalScene:
    from diff2scene.synth.groundtruth import GroundTruth

    gt = GroundTruth.load(directory)
    ids = sorted(c.class_id for c in gt.classes)
    names = {c.class_id: c.name for c in gt.classes}
    lookup = np.full(max(ids) + 1, -1, dtype=np.int32)
    lookup[ids] = np.arange(len(ids), dtype=np.int32)
    return EvalScene(
        name=directory.name,
        points=gt.points.astype(np.float32),
        point_class=lookup[gt.point_class],
        point_instance=gt.point_instance.astype(np.int32),
        class_names=[names[i] for i in ids],
        split_of={c.name: c.tier for c in gt.classes},
    )


def load_scannet(directory: Path, vocabulary: str = "scannet200") -> EvalScene:
    from diff2scene.segmentation.vocabularies import get_vocabulary

    plys = sorted(directory.glob("*_vh_clean_2.labels.ply"))
    if not plys:
        raise DataFormatError(f"{directory}: no <scene>_vh_clean_2.labels.ply (ScanNet layout)")
    scene = plys[0].name[: -len("_vh_clean_2.labels.ply")]
    vertex = read_ply(plys[0]).get("vertex")
    if vertex is None or not {"x", "y", "z", "label"} <= set(vertex):
        raise DataFormatError(f"{plys[0]}: needs vertex properties x, y, z, label")
    vocab = get_vocabulary(vocabulary)
    raw = vertex["label"].astype(np.int64)
    n_vert = raw.shape[0]
    instance = np.zeros(n_vert, dtype=np.int32)
    names_of_instance: dict[int, str] = {}
    agg = directory / f"{scene}.aggregation.json"
    segs = directory / f"{scene}_vh_clean_2.0.010000.segs.json"
    if agg.is_file() and segs.is_file():
        try:
            seg_of_vertex = np.asarray(json.loads(segs.read_text())["segIndices"], np.int64)
            groups = json.loads(agg.read_text())["segGroups"]
            owner_of_seg = {
                int(seg): int(g["objectId"]) + 1 for g in groups for seg in g["segments"]
            }
            names_of_instance = {int(g["objectId"]) + 1: str(g["label"]) for g in groups}
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise DataFormatError(f"{directory}: malformed ScanNet instance files: {exc}") from exc
        if seg_of_vertex.shape[0] != n_vert:
            raise DataFormatError(f"{segs}: {seg_of_vertex.shape[0]} vertices, mesh has {n_vert}")
        if owner_of_seg:
            keys = np.array(sorted(owner_of_seg), dtype=np.int64)
            vals = np.array([owner_of_seg[int(k)] for k in keys], dtype=np.int32)
            pos = np.minimum(np.searchsorted(keys, seg_of_vertex), keys.size - 1)
            instance = np.where(keys[pos] == seg_of_vertex, vals[pos], 0).astype(np.int32)
    if vocab.name == "scannet20":
        if vocab.ids is None:
            raise DataFormatError("the scannet20 vocabulary file lost its NYU40 id column")
        lookup = np.full(max(*vocab.ids, int(raw.max(initial=0))) + 1, -1, dtype=np.int32)
        lookup[list(vocab.ids)] = np.arange(len(vocab.ids), dtype=np.int32)
        point_class = lookup[raw]
    else:
        if not names_of_instance:
            raise DataFormatError(
                f"{directory}: {vocab.name} labels need {agg.name} and {segs.name} "
                "(category names per object)"
            )
        index = {n: i for i, n in enumerate(vocab.names)}
        cls_of_inst = np.full(max(names_of_instance) + 1, -1, dtype=np.int32)
        for inst_id, label in names_of_instance.items():
            cls_of_inst[inst_id] = index.get(label.strip().lower(), -1)
        point_class = np.where(instance > 0, cls_of_inst[instance], -1).astype(np.int32)
    return EvalScene(
        name=scene,
        points=np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32),
        point_class=point_class,
        point_instance=instance,
        class_names=list(vocab.names),
        split_of=dict(vocab.split_of),
    )


def load_replica(directory: Path, vocabulary: str | None = None) -> EvalScene:
    base = directory / "habitat" if (directory / "habitat").is_dir() else directory
    mesh_path, info_path = base / "mesh_semantic.ply", base / "info_semantic.json"
    if not mesh_path.is_file() or not info_path.is_file():
        raise DataFormatError(f"{directory}: needs mesh_semantic.ply and info_semantic.json")
    mesh = read_ply(mesh_path)
    try:
        info = json.loads(info_path.read_text())
        obj_class = {int(o["id"]): str(o["class_name"]).strip() for o in info["objects"]}
        vertex, face = mesh["vertex"], mesh["face"]
        faces = face["vertex_indices"].astype(np.int64)
        face_obj = face["object_id"].astype(np.int64)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{directory}: malformed Replica files: {exc!r}") from exc
    if vocabulary is not None:
        from diff2scene.segmentation.vocabularies import get_vocabulary_names

        names = get_vocabulary_names(vocabulary)
    else:
        names = sorted(set(obj_class.values()))
    index = {n: i for i, n in enumerate(names)}
    n_vert = vertex["x"].shape[0]
    vert_obj = np.zeros(n_vert, dtype=np.int64)
    vert_obj[faces.ravel()] = np.repeat(face_obj, faces.shape[1])
    max_obj = max([*obj_class, int(vert_obj.max(initial=0))]) + 1
    obj_to_cls = np.full(max_obj, -1, dtype=np.int32)
    for oid, cname in obj_class.items():
        obj_to_cls[oid] = index.get(cname, -1)
    point_class = obj_to_cls[vert_obj]
    return EvalScene(
        name=directory.name,
        points=np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32),
        point_class=point_class,
        point_instance=np.where(point_class >= 0, vert_obj, 0).astype(np.int32),
        class_names=names,
    )


def detect_format(directory: Path) -> SceneFormat:
    if (directory / "scene.json").is_file():
        return "synthetic"
    if any(directory.glob("*_vh_clean_2.labels.ply")):
        return "scannet"
    if (directory / "mesh_semantic.ply").is_file() or (directory / "habitat").is_dir():
        return "replica"
    raise DataFormatError(f"{directory}: not a synthetic, ScanNet or Replica scene directory")


def scene_beside(bag: Path) -> EvalScene | None:
    """The ground truth of a bag, where there is one: in the bag's directory or beside it
    (as ``diff2scene synth`` and ``diff2scene import`` leave it), in any known layout."""
    for directory in (bag, bag.parent):
        if not directory.is_dir():
            continue
        try:
            kind = detect_format(directory)
        except DataFormatError:
            continue
        return load_scene(directory, kind)
    return None


def load_scene(
    directory: str | Path, fmt: SceneFormat = "auto", *, vocabulary: str | None = None
) -> EvalScene:
    """Load a ground-truth scene directory in any of the documented layouts."""
    path = Path(directory)
    if not path.is_dir():
        raise DataFormatError(f"scene directory not found: {path}")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "synthetic":
        return load_synthetic(path)
    if kind == "scannet":
        return load_scannet(path, vocabulary or "scannet200")
    return load_replica(path, vocabulary)

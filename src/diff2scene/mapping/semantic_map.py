"""The semantic voxel map: surface voxels, 2D-mask memberships, the mask bank, 3D features.

Everything is flat NumPy arrays indexed by the stable voxel number of the
:class:`~diff2scene.mapping.mapper.Mapper`, so the 3D branch, the query engine and the ROS
node share one representation, and saving it is a matter of writing arrays. The file format is
a single ``.npz`` (read with ``allow_pickle=False``) holding a JSON header as a byte array, so
nothing in a map file can execute code when loaded.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from diff2scene.atomic_file import atomic_write
from diff2scene.errors import DataFormatError, InputError, NotAMapError
from diff2scene.mapping.chunks import ChunkBounds, ChunkBoxes
from diff2scene.mapping.mapper import SurfaceUpdate, voxel_centres
from diff2scene.mapping.snapshot import (
    DEFAULT_BLOCK_ROWS,
    MapSnapshot,
    RowBlocks,
    RowPlan,
    next_version,
    read_only,
)
from diff2scene.mapping.spill import SpillStore
from diff2scene.types import MaskSet

#: Identifies a diff2scene map file.
FORMAT_NAME = "diff2scene-semantic-map"
#: Bumped whenever the layout of a saved map changes; older/newer files are refused.
FORMAT_VERSION = 1
#: Growth of the append-only per-voxel buffers (coordinates, centres, 3D features) when full:
#: amortised O(1) copies per voxel, at most a third of a buffer unused (doubling: half).
_BUFFER_GROWTH = 1.5

_HEADER_KEY = "header_json"
#: A header holds configs and run statistics: kilobytes. Far more means a hostile archive.
_MAX_HEADER_BYTES = 16 << 20
#: What reading a foreign file can raise inside zipfile/numpy; all mean "not a map".
_FOREIGN_FILE_ERRORS = (
    zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError, zlib.error,
)


def read_map_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of the map file at ``path``, read without reading its arrays.

    Cheap enough to decide whether a file may be overwritten: it reads the archive's directory
    and the header member only. The header's ``"format"`` entry is the file's magic; maps of
    every version carry it, so older maps are recognised too.

    Raises :class:`~diff2scene.errors.NotAMapError` (in our words, never numpy's) when the file
    is something else, :class:`~diff2scene.errors.DataFormatError` when it cannot be read.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise DataFormatError(f"{path}: map file not found")
    if not path.is_file():
        raise NotAMapError(where, "it is not a regular file")
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(f"{_HEADER_KEY}.npy")
            except KeyError:
                raise NotAMapError(
                    where, "it is an archive without a map header (arrays of something else)"
                ) from None
            if info.file_size > _MAX_HEADER_BYTES:
                raise NotAMapError(where, f"its header claims {info.file_size} bytes")
            raw = archive.read(info)
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except _FOREIGN_FILE_ERRORS:
        raise NotAMapError(
            where, "it is not a zip archive (a map is an .npz archive), or it is truncated"
        ) from None
    try:
        arr = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        header = json.loads(bytes(arr).decode("utf-8")) if arr.dtype == np.uint8 else None
    except (*_FOREIGN_FILE_ERRORS, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise NotAMapError(where, f"its header does not name the format {FORMAT_NAME!r}")
    return header


def _grown(buf: NDArray[Any], used: int, needed: int) -> NDArray[Any]:
    """``buf`` with room for ``needed`` rows: itself, or a larger zeroed copy of its first
    ``used`` rows (a snapshot holding a view of the old one keeps it)."""
    if needed <= buf.shape[0]:
        return buf
    cap = max(needed, int(buf.shape[0] * _BUFFER_GROWTH), 1024)
    out = np.zeros((cap, *buf.shape[1:]), dtype=buf.dtype)
    out[:used] = buf[:used]
    return out


_Parts = Any  # () -> Iterator[NDArray]: the consecutive row blocks of one saved array


def _crc32_parts(parts: Iterator[NDArray[Any]]) -> int:
    """CRC-32 of the bytes of consecutive arrays (that of their concatenation)."""
    crc = 0
    for arr in parts:
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        for lo in range(0, flat.size, 1 << 24):
            crc = zlib.crc32(flat[lo : lo + (1 << 24)].data, crc)
    return crc


def _write_member(
    archive: zipfile.ZipFile,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    parts: Iterator[NDArray[Any]],
) -> None:
    """Write ``name.npy`` (what ``np.savez`` writes) from its consecutive row blocks."""
    with archive.open(f"{name}.npy", mode="w", force_zip64=True) as out:
        np.lib.format.write_array_header_1_0(
            out,
            {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
             "shape": shape},
        )  # fmt: skip
        for arr in parts:
            out.write(np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint8).data)


class MaskBank:
    """Every 2D mask ever accumulated: its embeddings per space, class probabilities, keyframe.

    A mask's id is its row number, global across keyframes and stable for the map's life. The
    buffers grow by doubling so appending a keyframe's masks is amortised O(N).
    """

    def __init__(self) -> None:
        self._count = 0
        self._emb: dict[str, NDArray[np.float32]] = {}
        self._kf = np.empty(0, dtype=np.int32)
        self._probs: NDArray[np.float32] | None = None

    @property
    def num_masks(self) -> int:
        return self._count

    @property
    def embeddings(self) -> dict[str, NDArray[np.float32]]:
        """Space name → (K, D) float32 mask embeddings (views; do not write)."""
        return {space: buf[: self._count] for space, buf in self._emb.items()}

    @property
    def keyframe_ids(self) -> NDArray[np.int32]:
        """(K,) int32 keyframe each mask came from."""
        return self._kf[: self._count]

    @property
    def class_probs(self) -> NDArray[np.float32] | None:
        """(K, C) float32 class probabilities for the vocabulary in use, or None."""
        return None if self._probs is None else self._probs[: self._count]

    @property
    def nbytes(self) -> int:
        """Memory of the used part of the bank, in bytes."""
        per_mask = 4 + sum(b.shape[1] * 4 for b in self._emb.values())
        if self._probs is not None:
            per_mask += self._probs.shape[1] * 4
        return int(self._count * per_mask)

    def _reserve(self, needed: int) -> None:
        capacity = self._kf.shape[0]
        if needed <= capacity:
            return
        new_cap = max(needed, 2 * capacity, 256)

        def grow(buf: NDArray[Any]) -> NDArray[Any]:
            out = np.zeros((new_cap, *buf.shape[1:]), dtype=buf.dtype)
            out[: self._count] = buf[: self._count]
            return out

        self._kf = grow(self._kf)
        self._emb = {space: grow(buf) for space, buf in self._emb.items()}
        if self._probs is not None:
            self._probs = grow(self._probs)

    def append(self, mask_set: MaskSet, keyframe_id: int) -> NDArray[np.int64]:
        """Add a keyframe's masks; returns their (N,) int64 global ids.

        All mask sets of one map must carry the same embedding spaces and widths, and either
        all or none carry class probabilities over the same number of classes.
        """
        n = mask_set.num_masks
        embs = mask_set.embeddings
        for space, e in embs.items():
            if e.ndim != 2 or e.shape[0] != n:
                raise InputError("mask_set_shape", f"{space} embeddings {e.shape} for {n} masks")
        if self._count == 0 and not self._emb:
            self._emb = {s: np.zeros((0, e.shape[1]), dtype=np.float32) for s, e in embs.items()}
            if mask_set.class_probs is not None:
                self._probs = np.zeros((0, mask_set.class_probs.shape[1]), dtype=np.float32)
            self._kf = np.empty(0, dtype=np.int32)
        want = {s: b.shape[1] for s, b in self._emb.items()}
        got = {s: e.shape[1] for s, e in embs.items()}
        if want != got:
            raise InputError("mask_space_mismatch", f"bank holds {want}, mask set has {got}")
        probs = mask_set.class_probs
        if (probs is None) != (self._probs is None) or (
            probs is not None
            and self._probs is not None
            and probs.shape != (n, self._probs.shape[1])
        ):
            raise InputError(
                "class_probs_mismatch",
                "class probabilities must be given for every mask set, over the same classes",
            )
        self._reserve(self._count + n)
        sl = slice(self._count, self._count + n)
        for space, e in embs.items():
            self._emb[space][sl] = e
        self._kf[sl] = keyframe_id
        if probs is not None and self._probs is not None:
            self._probs[sl] = probs
        ids = np.arange(self._count, self._count + n, dtype=np.int64)
        self._count += n
        return ids

    def set_class_probs(self, probs: NDArray[np.float32] | None) -> None:
        """Replace every mask's class probabilities (K, C), e.g. after a vocabulary change."""
        if probs is not None and (probs.ndim != 2 or probs.shape[0] != self._count):
            raise InputError("class_probs_shape", f"need ({self._count}, C), got {probs.shape}")
        self._probs = None if probs is None else np.array(probs, dtype=np.float32)
        if self._probs is not None:
            pad = self._kf.shape[0] - self._count
            self._probs = np.concatenate(
                [self._probs, np.zeros((pad, self._probs.shape[1]), dtype=np.float32)]
            )

    @classmethod
    def from_arrays(
        cls,
        embeddings: Mapping[str, NDArray[np.float32]],
        keyframe_ids: NDArray[np.int32],
        class_probs: NDArray[np.float32] | None,
    ) -> MaskBank:
        """Rebuild a bank from its arrays (the inverse of the properties)."""
        bank = cls()
        k = int(keyframe_ids.shape[0])
        bank._count = k
        bank._kf = np.array(keyframe_ids, dtype=np.int32)
        bank._emb = {s: np.array(e, dtype=np.float32) for s, e in embeddings.items()}
        bank._probs = None if class_probs is None else np.array(class_probs, dtype=np.float32)
        return bank


class SemanticMap:
    """Surface voxels with colours, top-k mask memberships (B3d), the mask bank, 3D features.

    ``member_ids[v]`` / ``member_weights[v]`` hold voxel v's k strongest (mask id, B3d) pairs,
    strongest first, -1 / 0 in unused slots. ``view_counts[v]`` counts the keyframes in which
    the voxel was visible, so unseen voxels can be told from voxels seen but in no mask.

    Readers in other threads take a :meth:`snapshot` (cheap: views and block references, see
    :mod:`diff2scene.mapping.snapshot`). The per-voxel tables are therefore read through
    read-only properties and changed only through the map's methods or by assigning a whole
    array; every change bumps :attr:`version`. A keyframe's changes cost what the keyframe
    touched: coordinates and 3D features are append-only buffers, colours and memberships
    copy-on-write blocks.

    **Spilling.** With a :class:`~diff2scene.mapping.spill.SpillStore` attached, the blocks of
    colours, memberships and view counts (71 of the ~100 bytes a voxel holds at k = 8) that no
    keyframe touched for longest can leave memory (:meth:`enforce_budget`); a keyframe or
    surface update that touches a spilled block brings it back first, so mapping never works
    on a missing block. Map-wide reads (the properties, :meth:`save`) read spilled blocks
    from disk; a :meth:`snapshot` holds only the blocks in memory and says how many voxels it
    leaves out. Coordinates, voxel centres and the mask bank stay in memory.
    """

    def __init__(
        self,
        voxel_size_m: float,
        *,
        members_per_voxel: int = 8,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> None:
        if voxel_size_m <= 0 or members_per_voxel < 1:
            raise InputError("semantic_map_args", "voxel_size_m > 0 and members_per_voxel >= 1")
        self.voxel_size_m = float(voxel_size_m)
        k = members_per_voxel
        self._block_rows = block_rows
        # coords / points: append-only buffers (rows < num_voxels are never rewritten).
        self._coords_buf = np.empty((0, 3), dtype=np.int32)
        self._points_buf = np.empty((0, 3), dtype=np.float32)
        self._num_voxels = 0
        self._chunks = ChunkBounds(self.voxel_size_m)
        self._colors = self._table((3,), np.uint8, 0)
        self._member_ids = self._table((k,), np.int32, -1)
        self._member_weights = self._table((k,), np.float32, 0.0)
        self._view_counts = self._table((), np.int32, 0)
        self.mask_bank = MaskBank()
        self._spill: SpillStore | None = None
        #: Per block: the value of ``_tick`` when a keyframe or update last touched it.
        self._block_used: list[int] = []
        self._tick = 0
        #: Blocks out of memory (their rows are in the spill store).
        self._spilled: set[int] = set()
        #: Blocks evicted to the store and brought back, over the map's life.
        self.blocks_spilled = 0
        self.blocks_reloaded = 0
        # Each space's features are the first num_voxels rows of a growth buffer (rows below
        # num_voxels are never written in place, so snapshots share them).
        self._features_3d: dict[str, NDArray[np.float16]] = {}
        self._feature_bufs: dict[str, tuple[NDArray[np.float16], NDArray[np.float16]]] = {}
        #: (mapper id, update number) of the last surface update applied, to refuse a gap.
        self._surface_source: tuple[int, int] | None = None
        #: JSON-serialisable facts about the map (configs used, source, ...).
        self.metadata: dict[str, Any] = {}
        self._version = next_version()
        self._last_snapshot: MapSnapshot | None = None

    # ------------------------------------------------------------------ state

    @property
    def version(self) -> int:
        """Changes with every mutation (voxels, memberships, masks, features); see snapshot."""
        return self._version

    def mark_changed(self) -> None:
        """Take a new version (the map's methods call it; so must anyone changing the bank)."""
        self._version = next_version()

    @property
    def num_voxels(self) -> int:
        return self._num_voxels

    @property
    def members_per_voxel(self) -> int:
        return int(self._member_ids.row_shape[0])

    @property
    def coords(self) -> NDArray[np.int32]:
        """(M, 3) int32 integer voxel coordinates (read-only view)."""
        return read_only(self._coords_buf[: self._num_voxels])

    @coords.setter
    def coords(self, value: NDArray[np.int32]) -> None:
        coords = np.array(value, dtype=np.int32)
        self._coords_buf = coords
        self._points_buf = voxel_centres(coords, self.voxel_size_m)
        self._num_voxels = int(coords.shape[0])
        self._chunks = ChunkBounds(self.voxel_size_m)
        self._chunks.append(coords)
        self._surface_source = None
        self.mark_changed()

    @property
    def points_m(self) -> NDArray[np.float32]:
        """(M, 3) float32 voxel centres in the world frame, metres (read-only view)."""
        return read_only(self._points_buf[: self._num_voxels])

    def chunk_boxes(self) -> ChunkBoxes:
        """Boxes of runs of consecutive voxels (frozen; O(M / 1024)): hand them to
        :meth:`~diff2scene.mapping.unproject.MaskUnprojector.unproject` with :attr:`points_m`
        so that it tests only the voxels that may be in view."""
        return self._chunks.frozen()

    @property
    def colors(self) -> NDArray[np.uint8]:
        """(M, 3) uint8 fused colours (read-only copy, O(M); a snapshot's are assembled once)."""
        out: NDArray[np.uint8] = self._whole("colors")
        return out

    @colors.setter
    def colors(self, value: NDArray[np.uint8]) -> None:
        self._reload_all()
        self._colors = self._table((3,), np.uint8, 0)
        self._colors.assign(value)
        self.mark_changed()

    @property
    def member_ids(self) -> NDArray[np.int32]:
        """(M, k) int32 read-only copy of the membership ids (assign a whole array to change)."""
        out: NDArray[np.int32] = self._whole("member_ids")
        return out

    @member_ids.setter
    def member_ids(self, value: NDArray[np.int32]) -> None:
        self._reload_all()
        self._member_ids = self._table((np.shape(value)[1],), np.int32, -1)
        self._member_ids.assign(value)
        self.mark_changed()

    @property
    def member_weights(self) -> NDArray[np.float32]:
        """(M, k) float32 read-only copy of the memberships B3d."""
        out: NDArray[np.float32] = self._whole("member_weights")
        return out

    @member_weights.setter
    def member_weights(self, value: NDArray[np.float32]) -> None:
        self._reload_all()
        self._member_weights = self._table((np.shape(value)[1],), np.float32, 0.0)
        self._member_weights.assign(value)
        self.mark_changed()

    @property
    def view_counts(self) -> NDArray[np.int32]:
        """(M,) int32 read-only copy of the view counts."""
        out: NDArray[np.int32] = self._whole("view_counts")
        return out

    @view_counts.setter
    def view_counts(self, value: NDArray[np.int32]) -> None:
        self._reload_all()
        self._view_counts = self._table((), np.int32, 0)
        self._view_counts.assign(value)
        self.mark_changed()

    @property
    def features_3d(self) -> dict[str, NDArray[np.float16]]:
        """Space name → (M, D) float16 per-voxel 3D-branch features (filled by the 3D branch).

        Replace the whole dict to change them (that bumps the version); never write into the
        arrays, snapshots share them.
        """
        return self._features_3d

    @features_3d.setter
    def features_3d(self, value: Mapping[str, NDArray[np.float16]]) -> None:
        self._features_3d = dict(value)
        self._feature_bufs = {}
        self.mark_changed()

    @property
    def semantic_nbytes(self) -> int:
        """Per-voxel semantic state (memberships, view counts, 3D features), in bytes."""
        return int(
            self._member_ids.nbytes
            + self._member_weights.nbytes
            + self._view_counts.nbytes
            + sum(f.nbytes for f in self._features_3d.values())
        )

    @property
    def copy_on_write_blocks(self) -> int:
        """Membership blocks copied so far because a snapshot still held them."""
        return (
            self._member_ids.cow_copies
            + self._member_weights.cow_copies
            + self._view_counts.cow_copies
            + self._colors.cow_copies
        )

    # ------------------------------------------------------------------ spilling

    def _table(self, row_shape: tuple[int, ...], dtype: Any, fill: float | int) -> RowBlocks:
        return RowBlocks(row_shape, dtype, fill, block_rows=self._block_rows)

    def _tables(self) -> dict[str, RowBlocks]:
        """The per-voxel tables that spill, by name (their blocks line up: same rows)."""
        return {
            "colors": self._colors,
            "member_ids": self._member_ids,
            "member_weights": self._member_weights,
            "view_counts": self._view_counts,
        }

    @property
    def block_rows(self) -> int:
        """Voxels per block: the unit that leaves memory and comes back."""
        return self._block_rows

    @property
    def spill_store(self) -> SpillStore | None:
        return self._spill

    def attach_spill_store(self, store: SpillStore | None) -> None:
        """Let blocks leave memory into ``store`` (None: bring every block back, stop)."""
        if store is None:
            self._reload_all()
        self._spill = store

    @property
    def spilled_blocks(self) -> int:
        """Blocks out of memory now."""
        return len(self._spilled)

    @property
    def spilled_voxels(self) -> int:
        return len(self._spilled) * self._block_rows

    @property
    def spilled_nbytes(self) -> int:
        """Bytes of the per-voxel tables that are on disk instead of in memory."""
        per_row = sum(t.row_nbytes for t in self._tables().values())
        return self.spilled_voxels * per_row

    @property
    def memory_nbytes(self) -> int:
        """Bytes the map holds in memory: per-voxel buffers (capacity included), the blocks in
        memory, the mask bank and the 3D features."""
        tables = sum(
            t.block_nbytes(j) for t in self._tables().values() for j in range(t.num_blocks)
        )
        return int(
            self._coords_buf.nbytes + self._points_buf.nbytes + tables
            + self.mask_bank.nbytes + sum(f.nbytes for f in self._features_3d.values())
        )

    def _touch(self, blocks: list[int], *, write: bool) -> None:
        """Bring ``blocks`` into memory, mark them used by the current use (a keyframe: one
        plan of rows, or one surface update), and (``write``) forget their copy in the store,
        which the write makes stale."""
        used = self._block_used
        if len(used) < self._member_ids.num_blocks:
            used.extend([0] * (self._member_ids.num_blocks - len(used)))
        for b in blocks:
            if b in self._spilled:
                self._reload(b)
            used[b] = self._tick
            if write and self._spill is not None and b in self._spill:
                self._spill.discard(b)

    def _reload(self, b: int) -> None:
        if self._spill is None:
            raise InputError("block_spilled", f"block {b} is spilled but no store is attached")
        rows = self._spill.read(b)
        for name, table in self._tables().items():
            table.restore(b, rows[name])
        self._spilled.discard(b)
        self.blocks_reloaded += 1

    def _reload_all(self) -> None:
        for b in sorted(self._spilled):
            self._reload(b)

    def _spill_block(self, b: int) -> int:
        """Move block ``b`` out of memory; returns the bytes freed."""
        if self._spill is None:
            raise InputError("no_spill_store", "attach a spill store before spilling")
        tables = self._tables()
        freed = sum(t.block_nbytes(b) for t in tables.values())
        rows = {name: t.evict(b) for name, t in tables.items()}
        if b not in self._spill:  # a block read back and not written since is stored already
            self._spill.write(b, rows)
        self._spilled.add(b)
        self.blocks_spilled += 1
        return freed

    def enforce_budget(self, max_nbytes: int, *, low_water: float = 0.9) -> int:
        """Spill the least recently used blocks while :attr:`memory_nbytes` exceeds
        ``max_nbytes``, down to ``low_water`` times it (so that the next keyframes do not
        spill again at once). The blocks of the latest use (keyframe or surface update) and
        the last, partly filled block stay. Returns the blocks spilled (0 when under budget or
        nothing can go)."""
        if self._spill is None or self.memory_nbytes <= max_nbytes:
            return 0
        excess = self.memory_nbytes - int(max_nbytes * low_water)
        nblocks = self._member_ids.num_blocks
        used = self._block_used + [0] * (nblocks - len(self._block_used))
        candidates = [
            b for b in range(nblocks - 1)
            if b not in self._spilled and used[b] < self._tick
        ]  # fmt: skip
        candidates.sort(key=lambda b: used[b])
        spilled = 0
        for b in candidates:
            if excess <= 0:
                break
            excess -= self._spill_block(b)
            spilled += 1
        if spilled:
            self.mark_changed()
        return spilled

    def _block_arrays(self, name: str) -> Iterator[NDArray[Any]]:
        """Table ``name``'s used rows, block after block, spilled ones read from the store."""
        table = self._tables()[name]
        frozen = table.freeze()
        for j, (block, rows) in enumerate(zip(frozen.blocks, frozen.block_sizes(), strict=True)):
            if block is not None:
                yield block[:rows]
            elif self._spill is not None:
                yield self._spill.read(j)[name][:rows]
            else:
                raise InputError("block_spilled", f"block {j} is spilled without a store")

    def _whole(self, name: str) -> NDArray[Any]:
        """(M, ...) read-only copy of table ``name``, spilled blocks included."""
        table = self._tables()[name]
        if not self._spilled:
            return table.to_array()
        parts = list(self._block_arrays(name))
        return read_only(np.concatenate(parts) if parts else
                         np.empty((0, *table.row_shape), table.dtype))  # fmt: skip

    def _not_searched_boxes(self, blocks: list[int]) -> NDArray[np.float32]:
        """(S, 2, 3) corners of blocks ``blocks`` in metres (from the runs' boxes)."""
        boxes = self._chunks.frozen()
        per_block = max(1, self._block_rows // boxes.chunk_voxels)
        out = np.zeros((len(blocks), 2, 3), np.float32)
        for i, b in enumerate(blocks):
            lo = boxes.lo[b * per_block : (b + 1) * per_block]
            hi = boxes.hi[b * per_block : (b + 1) * per_block]
            if lo.shape[0]:
                out[i, 0] = (lo.min(axis=0) - 0.5) * self.voxel_size_m
                out[i, 1] = (hi.max(axis=0) + 0.5) * self.voxel_size_m
        return out

    def snapshot(self) -> MapSnapshot:
        """A frozen view of the map as it is now; O(blocks), no per-voxel copy.

        Unchanged maps return the snapshot taken before (so asking often costs nothing and
        does not make later writes copy blocks). The caller must hold whatever lock serialises
        writers of this map (the pipeline's).
        """
        last = self._last_snapshot
        if last is not None and last.version == self._version:
            return last
        if self._spilled:
            self._last_snapshot = self._resident_snapshot()
            return self._last_snapshot
        bank = self.mask_bank
        self._last_snapshot = MapSnapshot(
            version=self._version,
            voxel_size_m=self.voxel_size_m,
            coords=self.coords,
            points_m=self.points_m,
            bank_embeddings=MappingProxyType(
                {s: read_only(e) for s, e in bank.embeddings.items()}
            ),
            bank_keyframe_ids=read_only(bank.keyframe_ids),
            features_3d=MappingProxyType(
                {s: read_only(f) for s, f in self._features_3d.items()}
            ),
            taken_monotonic_s=time.monotonic(),
            _colors=self._colors.freeze(),
            _member_ids=self._member_ids.freeze(),
            _member_weights=self._member_weights.freeze(),
            _view_counts=self._view_counts.freeze(),
        )
        return self._last_snapshot

    def _resident_snapshot(self) -> MapSnapshot:
        """A snapshot of the blocks in memory only: their rows are copied out of the
        coordinate, centre and feature buffers (O(voxels in memory)), the table blocks are
        shared as in a full snapshot."""
        tables = self._tables()
        nblocks = self._member_ids.num_blocks
        keep = [b for b in range(nblocks) if b not in self._spilled]
        gone = sorted(self._spilled)
        m, rows = self._num_voxels, self._block_rows
        numbers = np.concatenate(
            [np.arange(b * rows, min((b + 1) * rows, m), dtype=np.int64) for b in keep]
            or [np.empty(0, np.int64)]
        )
        frozen = {name: t.freeze().take_blocks(keep) for name, t in tables.items()}
        bank = self.mask_bank
        return MapSnapshot(
            version=self._version,
            voxel_size_m=self.voxel_size_m,
            coords=read_only(self._coords_buf[numbers]),
            points_m=read_only(self._points_buf[numbers]),
            bank_embeddings=MappingProxyType(
                {s: read_only(e) for s, e in bank.embeddings.items()}
            ),
            bank_keyframe_ids=read_only(bank.keyframe_ids),
            features_3d=MappingProxyType(
                {s: read_only(f[numbers]) for s, f in self._features_3d.items()}
            ),
            taken_monotonic_s=time.monotonic(),
            _colors=frozen["colors"],
            _member_ids=frozen["member_ids"],
            _member_weights=frozen["member_weights"],
            _view_counts=frozen["view_counts"],
            voxel_numbers=read_only(numbers),
            voxels_not_searched=m - int(numbers.shape[0]),
            not_searched_boxes_m=read_only(self._not_searched_boxes(gone)),
        )

    # ------------------------------------------------------------------ mutation

    def apply_surface_update(self, update: SurfaceUpdate) -> None:
        """Take in the mapper's changes: append new voxels (empty semantic state), refresh the
        colours of the updated ones. O(new + updated voxels), amortised.

        ``update`` must be the next update of the mapper this map follows: it must start at
        this map's voxel count, and, from a mapper whose updates this map took before, be the
        one after the last taken (a skipped update would leave its colours behind).
        """
        m = self.num_voxels
        new = np.asarray(update.new_coords, dtype=np.int32)
        grow = int(new.shape[0])
        index = np.asarray(update.updated_index, dtype=np.int64)
        colors = np.asarray(update.updated_colors, dtype=np.uint8)
        if abs(update.voxel_size_m - self.voxel_size_m) > 1e-12 or update.new_start != m:
            raise InputError(
                "surface_update_mismatch",
                f"update of voxels from {update.new_start} on, the map has {m}: not the next "
                "update of this map's mapper",
            )
        last = self._surface_source
        if update.source_id and last is not None and last[0] == update.source_id and (
            update.sequence != last[1] + 1
        ):
            raise InputError(
                "surface_update_mismatch",
                f"update {update.sequence} of its mapper follows update {last[1]}: one was "
                "skipped",
            )
        if new.shape != (grow, 3) or index.ndim != 1 or colors.shape != (index.size, 3):
            raise InputError(
                "surface_update_shape",
                f"new coords {new.shape}, updated {index.shape} with colours {colors.shape}",
            )
        if index.size and (index.min() < 0 or index.max() >= m + grow):
            raise InputError("surface_update_shape", "updated voxels outside the map")
        self._surface_source = (update.source_id, update.sequence) if update.source_id else None
        if grow == 0 and index.size == 0:
            return
        if grow:
            self._coords_buf = _grown(self._coords_buf, m, m + grow)
            self._points_buf = _grown(self._points_buf, m, m + grow)
            self._coords_buf[m : m + grow] = new
            self._points_buf[m : m + grow] = voxel_centres(new, self.voxel_size_m)
            self._num_voxels = m + grow
            self._chunks.append(new)
            for table in (self._colors, self._member_ids, self._member_weights,
                          self._view_counts):  # fmt: skip
                table.append(grow)
            self._grow_features(grow)
        if index.size:
            plan = self._colors.plan(index)
            self._tick += 1
            self._touch([seg[0] for seg in plan.segments], write=True)
            self._colors.scatter(plan, colors)
        self.mark_changed()

    def _grow_features(self, grow: int) -> None:
        """Append ``grow`` zero rows to every space's features. An array that is not the view
        this method made last (features assigned since) moves into a new buffer first."""
        for space, f in self._features_3d.items():
            rows = int(f.shape[0])
            view, buf = self._feature_bufs.get(space, (None, f))
            buf = _grown(buf if view is f else f, rows, rows + grow)
            buf[rows : rows + grow] = 0
            view = buf[: rows + grow]
            self._feature_bufs[space] = (view, buf)
            self._features_3d[space] = view

    def plan_rows(self, voxels: NDArray[np.int64]) -> RowPlan:
        """``voxels`` (V,) grouped for this map's tables: pass it to the membership and
        view-count methods below when they all touch the same voxels (one grouping, not six).
        A plan is one use of its blocks for :meth:`enforce_budget`."""
        self._tick += 1
        return self._member_ids.plan(voxels)

    def _planned(self, voxels: NDArray[np.int64] | RowPlan, *, write: bool) -> RowPlan:
        """``voxels`` as a plan, their blocks brought into memory and marked used."""
        plan = voxels if isinstance(voxels, RowPlan) else self.plan_rows(voxels)
        self._touch([seg[0] for seg in plan.segments], write=write)
        return plan

    def gather_memberships(
        self, voxels: NDArray[np.int64] | RowPlan
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """(V, k) int32 ids and (V, k) float32 weights of the given voxels (copies)."""
        plan = self._planned(voxels, write=False)
        ids: NDArray[np.int32] = self._member_ids.gather(plan)
        weights: NDArray[np.float32] = self._member_weights.gather(plan)
        return ids, weights

    def write_memberships(
        self,
        voxels: NDArray[np.int64] | RowPlan,
        ids: NDArray[np.int32],
        weights: NDArray[np.float32],
    ) -> None:
        """Overwrite the (V, k) memberships of ``voxels`` (copy-on-write against snapshots)."""
        plan = self._planned(voxels, write=True)
        self._member_ids.scatter(plan, ids)
        self._member_weights.scatter(plan, weights)
        self.mark_changed()

    def count_views(self, voxels: NDArray[np.int64] | RowPlan) -> None:
        """Add one to the view count of each of the (V,) distinct ``voxels``."""
        plan = self._planned(voxels, write=True)
        self._view_counts.scatter(plan, self._view_counts.gather(plan) + 1)
        self.mark_changed()

    def strongest_mask(self) -> NDArray[np.int32]:
        """(M,) int32 id of each voxel's strongest mask, -1 where it has none."""
        return self.member_ids[:, 0].copy()

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the whole map to ``path`` (.npz) atomically: a temp file, then a rename."""
        path = Path(path)
        bank = self.mask_bank
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "voxel_size_m": self.voxel_size_m,
            "members_per_voxel": self.members_per_voxel,
            "embedding_spaces": sorted(bank.embeddings),
            "feature_spaces": sorted(self.features_3d),
            "has_class_probs": bank.class_probs is not None,
            "metadata": self.metadata,
        }
        # Each member is written block after block: saving a map costs one block of memory
        # beyond the map, and spilled blocks are read back from the store one at a time.
        members: dict[str, tuple[tuple[int, ...], np.dtype[Any], _Parts]] = {}

        def add(name: str, arr: NDArray[Any]) -> None:
            members[name] = (tuple(arr.shape), arr.dtype, lambda a=arr: iter((a,)))

        add("coords", self.coords)
        m = self.num_voxels
        for name, table in self._tables().items():
            members[name] = (
                (m, *table.row_shape), table.dtype, lambda n=name: self._block_arrays(n)
            )
        add("bank_keyframe_ids", bank.keyframe_ids)
        for space, e in bank.embeddings.items():
            add(f"bank_embeddings/{space}", e)
        if bank.class_probs is not None:
            add("bank_class_probs", bank.class_probs)
        for space, f in self.features_3d.items():
            add(f"features_3d/{space}", f)
        # The zip CRC is only checked when a member is read to its end, which np.load does not
        # guarantee, so every array carries its own checksum in the header.
        header["crc32"] = {
            name: _crc32_parts(parts()) for name, (_, _, parts) in members.items()
        }
        # The header goes first in the archive so that it sits at the start of the file.
        head = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)

        def write(fh: Any) -> None:
            with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED,
                                 allowZip64=True) as archive:  # fmt: skip
                _write_member(archive, _HEADER_KEY, head.shape, head.dtype, iter((head,)))
                for name, (shape, dtype, parts) in members.items():
                    _write_member(archive, name, shape, dtype, parts())

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path, *, block_rows: int = DEFAULT_BLOCK_ROWS) -> SemanticMap:
        """Read a map written by :meth:`save`.

        A file that is not a map at all raises :class:`~diff2scene.errors.NotAMapError`;
        corrupt, truncated or newer maps raise :class:`~diff2scene.errors.DataFormatError`
        (its base class). Nothing in the file is unpickled.
        """
        path = Path(path)
        header = read_map_header(path)  # refuses foreign files in our words before numpy reads
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {name: npz[name] for name in npz.files}
        except ValueError as exc:
            if "pickle" in str(exc):  # numpy's words for an array of Python objects
                raise NotAMapError(
                    str(path), "it holds Python objects, which a map never contains"
                ) from exc
            raise DataFormatError(f"{path}: map file is corrupt ({exc})") from exc
        except (zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error) as exc:
            raise DataFormatError(f"{path}: map file is corrupt or truncated ({exc})") from exc
        data.pop(_HEADER_KEY, None)
        if header.get("version") != FORMAT_VERSION:
            raise DataFormatError(
                f"{path}: map format version {header.get('version')!r}, this code reads "
                f"version {FORMAT_VERSION}"
            )
        checksums = header.get("crc32")
        if not isinstance(checksums, dict) or set(checksums) != set(data):
            raise DataFormatError(f"{path}: array list does not match the header")
        for name, arr in data.items():
            if _crc32_parts(iter((arr,))) != checksums[name]:
                raise DataFormatError(f"{path}: array {name!r} is corrupt (checksum mismatch)")
        try:
            return cls._from_arrays(header, data, block_rows)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"{path}: inconsistent map file ({exc})") from exc

    @classmethod
    def _from_arrays(
        cls, header: dict[str, Any], data: dict[str, NDArray[Any]], block_rows: int
    ) -> SemanticMap:
        k = int(header["members_per_voxel"])
        smap = cls(float(header["voxel_size_m"]), members_per_voxel=k, block_rows=block_rows)
        smap.coords = data["coords"]
        smap.colors = data["colors"]
        smap.member_ids = data["member_ids"]
        smap.member_weights = data["member_weights"]
        smap.view_counts = data["view_counts"]
        m = smap.num_voxels
        expected: dict[str, tuple[tuple[int, ...], type]] = {
            "coords": ((m, 3), np.int32),
            "colors": ((m, 3), np.uint8),
            "member_ids": ((m, k), np.int32),
            "member_weights": ((m, k), np.float32),
            "view_counts": ((m,), np.int32),
        }
        for name, (shape, dtype) in expected.items():
            arr = data[name]
            if arr.shape != shape or arr.dtype != dtype:
                raise ValueError(f"{name} is {arr.shape} {arr.dtype}, expected {shape} {dtype}")
        kf = data["bank_keyframe_ids"]
        embeddings = {s: data[f"bank_embeddings/{s}"] for s in header["embedding_spaces"]}
        probs = data["bank_class_probs"] if header["has_class_probs"] else None
        num_masks = kf.shape[0]
        for s, e in embeddings.items():
            if e.ndim != 2 or e.shape[0] != num_masks:
                raise ValueError(f"bank embeddings {s} are {e.shape} for {num_masks} masks")
        if probs is not None and (probs.ndim != 2 or probs.shape[0] != num_masks):
            raise ValueError(f"bank class probabilities are {probs.shape}")
        if np.any(smap.member_ids >= num_masks) or np.any(smap.member_ids < -1):
            raise ValueError("memberships refer to masks that are not in the bank")
        smap.mask_bank = MaskBank.from_arrays(embeddings, kf, probs)
        for s in header["feature_spaces"]:
            f = data[f"features_3d/{s}"]
            if f.ndim != 2 or f.shape[0] != m or f.dtype != np.float16:
                raise ValueError(f"features_3d {s} is {f.shape} {f.dtype}")
            smap.features_3d[s] = f
        smap.metadata = dict(header.get("metadata") or {})
        return smap

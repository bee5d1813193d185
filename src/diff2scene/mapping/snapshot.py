"""Frozen, versioned views of a :class:`~diff2scene.mapping.semantic_map.SemanticMap`.

Queries and labelling read the map while mapping goes on in another thread. Copying the whole
map for every reader (1M voxels: ~70 MB of memberships, ~2 GB of 3D features) is what this
module avoids:

* Voxel coordinates, voxel centres, 3D features and the mask bank only ever grow, and rows
  that exist are never rewritten in place, so a snapshot holds views of their first M (or K)
  rows. (3D features are replaced wholesale when the 3D branch recomputes them.)
* Colours, memberships and view counts are written in place for the voxels a keyframe sees.
  They live in :class:`RowBlocks`: fixed-size row blocks, copied on write. A snapshot keeps
  references to the blocks; the map copies a block only when it writes into one that a
  snapshot holds, so a keyframe costs the blocks it touches, not the whole table.

Every mutation of a map takes a fresh number from one process-wide counter, so a version
identifies the state of one map uniquely (a map loaded in place of another never reuses an old
version) and a larger version is always newer.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numba
import numpy as np
from numpy.typing import DTypeLike, NDArray

from diff2scene.errors import InputError

#: Rows per block of :class:`RowBlocks` (64 Ki rows: 2 MiB of int32 ids at k = 8).
DEFAULT_BLOCK_ROWS = 1 << 16

_VERSIONS = itertools.count(1)
_VERSIONS_LOCK = threading.Lock()


def next_version() -> int:
    """A process-wide, strictly increasing map version."""
    with _VERSIONS_LOCK:
        return next(_VERSIONS)


def read_only(arr: NDArray[Any]) -> NDArray[Any]:
    """A read-only view of ``arr`` (the array itself stays writable for its owner)."""
    view = arr.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class FrozenRows:
    """The first ``num_rows`` rows of a :class:`RowBlocks` at the time it was frozen.

    A block that was spilled to disk at that time is None (see :meth:`RowBlocks.evict`).
    """

    blocks: tuple[NDArray[Any] | None, ...]
    num_rows: int
    block_rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype[Any]

    def block_sizes(self) -> list[int]:
        """Rows of each block that hold table rows (the last block may be partly used)."""
        return [
            max(0, min(self.block_rows, self.num_rows - j * self.block_rows))
            for j in range(len(self.blocks))
        ]

    def take_blocks(self, js: list[int]) -> FrozenRows:
        """The rows of blocks ``js`` only (ascending, resident), as a table of their own.

        Every block but the last of ``js`` must be full, so that the blocks keep the layout
        "block i holds rows [i * block_rows, (i + 1) * block_rows)" in the new table."""
        sizes = self.block_sizes()
        taken = []
        for pos, j in enumerate(js):
            block = self.blocks[j]
            if block is None:
                raise InputError("block_spilled", f"block {j} is not in memory")
            if pos < len(js) - 1 and sizes[j] != self.block_rows:
                raise InputError("row_blocks", f"block {j} is partly used but not the last")
            taken.append(block)
        rows = sum(sizes[j] for j in js)
        return FrozenRows(tuple(taken), rows, self.block_rows, self.row_shape, self.dtype)

    def row_blocks(self) -> list[NDArray[Any]]:
        """The table's rows as consecutive read-only views, block by block (no copy)."""
        out = []
        for block, rows in zip(self.blocks, self.block_sizes(), strict=True):
            if rows == 0:
                break
            if block is None:
                raise InputError("block_spilled", "a block is not in memory")
            out.append(read_only(block[:rows]))
        return out

    def to_array(self) -> NDArray[Any]:
        """(num_rows, *row_shape) contiguous copy (read-only); every block must be resident."""
        parts = []
        for j, block in enumerate(self.blocks):
            lo = j * self.block_rows
            if lo >= self.num_rows:
                break
            if block is None:
                raise InputError("block_spilled", f"block {j} is not in memory")
            parts.append(block[: min(self.block_rows, self.num_rows - lo)])
        out = (
            np.concatenate(parts)
            if parts
            else np.empty((0, *self.row_shape), dtype=self.dtype)
        )
        return read_only(out)


@dataclass(frozen=True, eq=False)
class RowPlan:
    """Rows of a :class:`RowBlocks` table grouped by block, once for several tables.

    A keyframe gathers and scatters the same visible voxels in three tables (ids, weights,
    view counts); grouping them by block is most of the cost of each of those six operations,
    so it is done once. Rows are visited in sorted order inside each block: the block is then
    read and written front to back instead of at random.
    """

    num_rows: int
    block_rows: int
    min_row: int
    max_row: int
    #: (block, positions in the original ``rows``, the rows local to the block in the same
    #: order, ascending).
    segments: tuple[tuple[int, NDArray[np.int64], NDArray[np.int64]], ...]

    @classmethod
    def of(cls, rows: NDArray[np.int64], block_rows: int) -> RowPlan:
        """The plan of ``rows`` (R,) for tables of ``block_rows``-row blocks (a power of 2)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return cls(0, block_rows, 0, -1, ())
        shift = block_rows.bit_length() - 1
        order = np.argsort(rows)
        ordered = rows[order]
        lo, hi = int(ordered[0]), int(ordered[-1])
        starts = np.arange(lo >> shift, (hi >> shift) + 2, dtype=np.int64) << shift
        bounds = np.searchsorted(ordered, starts)
        segments = tuple(
            (int(start >> shift), order[s:e], ordered[s:e] - start)
            for start, s, e in zip(starts[:-1], bounds[:-1], bounds[1:], strict=True)
            if e > s
        )
        return cls(rows.size, block_rows, lo, hi, segments)


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _gather_rows(
    block: NDArray[Any], local: NDArray[np.int64], pos: NDArray[np.int64], out: NDArray[Any]
) -> None:  # pragma: no cover - compiled; tested through RowBlocks
    for j in range(local.shape[0]):
        for c in range(block.shape[1]):
            out[pos[j], c] = block[local[j], c]


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def _scatter_rows(
    block: NDArray[Any], local: NDArray[np.int64], pos: NDArray[np.int64], values: NDArray[Any]
) -> None:  # pragma: no cover - compiled; tested through RowBlocks
    for j in range(local.shape[0]):
        for c in range(block.shape[1]):
            block[local[j], c] = values[pos[j], c]


class RowBlocks:
    """A growable (N, *row_shape) table stored in blocks, copy-on-write against snapshots.

    Appending never touches existing rows; :meth:`scatter` copies a block first when a
    :class:`FrozenRows` taken by :meth:`freeze` still references it. A block can leave memory
    (:meth:`evict`, for a spill store) and come back (:meth:`restore`); reading or writing a
    block that is out raises, so the owner brings blocks back before it touches them. Not
    thread-safe by itself: the map's owner serialises writers (the pipeline's lock); frozen
    views may be read from any thread.
    """

    def __init__(
        self,
        row_shape: tuple[int, ...],
        dtype: DTypeLike,
        fill: float | int,
        *,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> None:
        if block_rows < 1 or block_rows & (block_rows - 1):
            raise InputError("block_rows", f"must be a power of two, got {block_rows}")
        self.row_shape = tuple(row_shape)
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        self.fill = fill
        self.block_rows = block_rows
        self._shift = block_rows.bit_length() - 1
        #: Elements per row: the compiled row copies see every table as (rows, width).
        self._row_width = int(np.prod(self.row_shape, dtype=np.int64))
        self._blocks: list[NDArray[Any] | None] = []
        self._shared: list[bool] = []
        self._count = 0
        #: Blocks copied because a snapshot held them (for benchmarks).
        self.cow_copies = 0

    def __len__(self) -> int:
        return self._count

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row."""
        return self._row_width * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of every row, in memory or not."""
        return self._count * self.row_nbytes

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def block_nbytes(self, j: int) -> int:
        """Bytes block ``j`` holds in memory (its allocated rows; 0 when evicted)."""
        block = self._blocks[j]
        return 0 if block is None else int(block.nbytes)

    def is_resident(self, j: int) -> bool:
        return self._blocks[j] is not None

    def evict(self, j: int) -> NDArray[Any]:
        """Take block ``j`` out of memory and return its used rows (for the caller to store).

        A snapshot that holds the block keeps its own reference, so its readers are unaffected.
        """
        block = self._blocks[j]
        if block is None:
            raise InputError("block_spilled", f"block {j} is already out of memory")
        rows = min(self.block_rows, self._count - j * self.block_rows)
        if rows < block.shape[0] or j == len(self._blocks) - 1:
            raise InputError("row_blocks", f"block {j} is partly used: only full blocks leave")
        self._blocks[j] = None
        self._shared[j] = False
        return block

    def restore(self, j: int, rows: NDArray[Any]) -> None:
        """Put block ``j`` back from the rows :meth:`evict` returned (or a copy of them)."""
        if self._blocks[j] is not None:
            raise InputError("row_blocks", f"block {j} is in memory")
        rows = np.asarray(rows, dtype=self.dtype)
        if rows.shape != (self.block_rows, *self.row_shape):
            raise InputError("row_blocks", f"block {j}: rows {rows.shape} do not fit")
        self._blocks[j] = rows if rows.flags.writeable else rows.copy()
        self._shared[j] = False

    def _resident(self, b: int) -> NDArray[Any]:
        block = self._blocks[b]
        if block is None:
            raise InputError("block_spilled", f"block {b} is not in memory")
        return block

    def _new_block(self, rows: int) -> NDArray[Any]:
        return np.full((rows, *self.row_shape), self.fill, dtype=self.dtype)

    def append(self, n: int) -> None:
        """Add ``n`` rows holding the fill value."""
        if n < 0:
            raise InputError("row_count", f"cannot append {n} rows")
        target = self._count + n
        while n:
            j = self._count >> self._shift
            lo = j * self.block_rows
            if j == len(self._blocks):
                self._blocks.append(self._new_block(min(self.block_rows, max(256, n))))
                self._shared.append(False)
            block = self._resident(j)
            want = min(self.block_rows, target - lo)
            if block.shape[0] < want:
                # Grow the last block by doubling; a snapshot keeps the old one.
                grown = self._new_block(min(self.block_rows, max(want, 2 * block.shape[0])))
                grown[: self._count - lo] = block[: self._count - lo]
                self._blocks[j] = grown
                self._shared[j] = False
            step = min(want, self.block_rows) - (self._count - lo)
            self._count += step
            n -= step

    def assign(self, values: NDArray[Any]) -> None:
        """Replace the whole table by ``values`` (N, *row_shape)."""
        values = np.asarray(values, dtype=self.dtype)
        if values.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {values.shape[1:]}, expected {self.row_shape}")
        self._blocks, self._shared, self._count = [], [], 0
        self.append(values.shape[0])
        for j in range(len(self._blocks)):
            block = self._resident(j)
            lo = j * self.block_rows
            hi = min(values.shape[0], lo + block.shape[0])
            block[: hi - lo] = values[lo:hi]

    def plan(self, rows: NDArray[np.int64]) -> RowPlan:
        """``rows`` grouped by block, to gather from or scatter into this table (or any table
        with the same ``block_rows`` and at least as many rows) without grouping again."""
        plan = RowPlan.of(rows, self.block_rows)
        self._check_plan(plan)
        return plan

    def _check_plan(self, plan: RowPlan) -> None:
        if plan.block_rows != self.block_rows:
            raise InputError("row_plan", f"plan for {plan.block_rows}-row blocks")
        if plan.num_rows and (plan.min_row < 0 or plan.max_row >= self._count):
            raise InputError("row_index", f"rows outside [0, {self._count})")

    def gather(self, rows: NDArray[np.int64] | RowPlan) -> NDArray[Any]:
        """(len(rows), *row_shape) copy of the given rows."""
        plan = rows if isinstance(rows, RowPlan) else RowPlan.of(rows, self.block_rows)
        self._check_plan(plan)
        out = np.empty((plan.num_rows, *self.row_shape), dtype=self.dtype)
        # Compiled row copies: numpy's fancy indexing costs ~5x more per 32-byte row.
        flat_out = out.reshape(plan.num_rows, self._row_width)
        for b, pos, local in plan.segments:
            block = self._resident(b)
            _gather_rows(block.reshape(block.shape[0], self._row_width), local, pos, flat_out)
        return out

    def scatter(self, rows: NDArray[np.int64] | RowPlan, values: NDArray[Any]) -> None:
        """Write ``values`` (len(rows), *row_shape) into ``rows`` (copy-on-write per block)."""
        plan = rows if isinstance(rows, RowPlan) else RowPlan.of(rows, self.block_rows)
        self._check_plan(plan)
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape != (plan.num_rows, *self.row_shape):
            raise InputError(
                "row_values", f"{values.shape} for {plan.num_rows} rows of {self.row_shape}"
            )
        flat_values = values.reshape(plan.num_rows, self._row_width)
        for b, pos, local in plan.segments:
            block = self._resident(b)
            if self._shared[b]:
                block = self._blocks[b] = block.copy()
                self._shared[b] = False
                self.cow_copies += 1
            _scatter_rows(block.reshape(block.shape[0], self._row_width), local, pos, flat_values)

    def freeze(self) -> FrozenRows:
        """A view of the current rows that later writes do not change."""
        self._shared = [True] * len(self._blocks)
        return FrozenRows(
            blocks=tuple(self._blocks),
            num_rows=self._count,
            block_rows=self.block_rows,
            row_shape=self.row_shape,
            dtype=self.dtype,
        )

    def to_array(self) -> NDArray[Any]:
        """(N, *row_shape) read-only contiguous copy of the table."""
        return self.freeze().to_array()


@dataclass(frozen=True, eq=False)
class MapSnapshot:
    """Everything a query or a labelling reads of a map, frozen at one map version.

    Arrays are read-only. Colours, memberships and view counts are assembled from their blocks
    the first time they are read (once per snapshot, in the reader's thread, not under the map's
    lock); everything else is a view taken when the snapshot was made.
    """

    #: Map version (see the module doc): equal versions ⇔ equal contents.
    version: int
    voxel_size_m: float
    #: (M, 3) int32 integer voxel coordinates.
    coords: NDArray[np.int32]
    #: (M, 3) float32 voxel centres in the world frame, metres.
    points_m: NDArray[np.float32]
    #: Space name → (K, D) float32 mask embeddings.
    bank_embeddings: Mapping[str, NDArray[np.float32]]
    #: (K,) int32 keyframe each mask came from.
    bank_keyframe_ids: NDArray[np.int32]
    #: Space name → (M, D) float16 3D-branch features (empty without the 3D branch).
    features_3d: Mapping[str, NDArray[np.float16]]
    #: ``time.monotonic()`` when the snapshot was taken, seconds.
    taken_monotonic_s: float
    _colors: FrozenRows = field(repr=False)
    _member_ids: FrozenRows = field(repr=False)
    _member_weights: FrozenRows = field(repr=False)
    _view_counts: FrozenRows = field(repr=False)
    #: (M,) int64 the map's voxel number of each snapshot row, when the snapshot holds only
    #: the voxels in memory of a map that spilled some to disk; None: row i is voxel i.
    voxel_numbers: NDArray[np.int64] | None = field(default=None, repr=False)
    #: Voxels of the map that are not in the snapshot because they were on disk (spilled).
    #: A query over this snapshot did not search them and says so.
    voxels_not_searched: int = 0
    #: (S, 2, 3) float32 lowest and highest corner of each spilled run of voxels, metres.
    not_searched_boxes_m: NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((0, 2, 3), np.float32), repr=False
    )
    _cache: dict[str, NDArray[Any]] = field(default_factory=dict, repr=False, compare=False)
    _cache_lock: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    @classmethod
    def from_arrays(
        cls,
        *,
        voxel_size_m: float,
        coords: NDArray[np.int32],
        member_ids: NDArray[np.int32],
        member_weights: NDArray[np.float32],
        bank_embeddings: Mapping[str, NDArray[np.float32]],
        colors: NDArray[np.uint8] | None = None,
        view_counts: NDArray[np.int32] | None = None,
        bank_keyframe_ids: NDArray[np.int32] | None = None,
        features_3d: Mapping[str, NDArray[np.float16]] | None = None,
        version: int | None = None,
    ) -> MapSnapshot:
        """A snapshot of arrays that never were a :class:`SemanticMap` (procedural maps in
        benchmarks and tests). The arrays are copied into the snapshot's own storage only where
        their layout requires it; missing colours are grey, missing view counts 1."""
        coords = np.asarray(coords, dtype=np.int32)
        m = coords.shape[0]
        if coords.shape != (m, 3):
            raise InputError("snapshot_arrays", f"coords must be (M, 3), got {coords.shape}")
        if member_ids.shape != member_weights.shape or member_ids.shape[:1] != (m,):
            raise InputError(
                "snapshot_arrays",
                f"memberships {member_ids.shape}/{member_weights.shape} for {m} voxels",
            )
        k = num_rows_of(bank_embeddings)
        for space, f in (features_3d or {}).items():
            if f.shape[0] != m:
                raise InputError("snapshot_arrays", f"features_3d {space} {f.shape} for {m}")
        stores = []
        for arr, dtype, fill in (
            (np.full((m, 3), 128, np.uint8) if colors is None else colors, np.uint8, 0),
            (member_ids, np.int32, -1),
            (member_weights, np.float32, 0.0),
            (np.ones(m, np.int32) if view_counts is None else view_counts, np.int32, 0),
        ):
            store = RowBlocks(tuple(arr.shape[1:]), dtype, fill)
            store.assign(arr)
            stores.append(store.freeze())
        return cls(
            version=next_version() if version is None else version,
            voxel_size_m=float(voxel_size_m),
            coords=read_only(coords),
            points_m=read_only((coords.astype(np.float64) * voxel_size_m).astype(np.float32)),
            bank_embeddings=MappingProxyType(
                {s: read_only(np.asarray(e, np.float32)) for s, e in bank_embeddings.items()}
            ),
            bank_keyframe_ids=read_only(
                np.zeros(k, np.int32)
                if bank_keyframe_ids is None
                else np.asarray(bank_keyframe_ids, np.int32)
            ),
            features_3d=MappingProxyType(
                {s: read_only(np.asarray(f, np.float16)) for s, f in (features_3d or {}).items()}
            ),
            taken_monotonic_s=time.monotonic(),
            _colors=stores[0],
            _member_ids=stores[1],
            _member_weights=stores[2],
            _view_counts=stores[3],
        )

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    @property
    def num_masks(self) -> int:
        return num_rows_of(self.bank_embeddings)

    @property
    def members_per_voxel(self) -> int:
        return int(self._member_ids.row_shape[0])

    @property
    def age_s(self) -> float:
        """Seconds since the snapshot was taken."""
        return time.monotonic() - self.taken_monotonic_s

    def _assembled(self, name: str, rows: FrozenRows) -> NDArray[Any]:
        with self._cache_lock:
            out = self._cache.get(name)
            if out is None:
                out = rows.to_array()
                self._cache[name] = out
            return out

    def membership_blocks(self) -> tuple[list[NDArray[np.int32]], list[NDArray[np.float32]]]:
        """The memberships (ids, weights) as consecutive row blocks: views of the map's own
        blocks, for readers that go through them in order (the query engine) instead of
        assembling (M, k) copies."""
        return self._member_ids.row_blocks(), self._member_weights.row_blocks()

    @property
    def colors(self) -> NDArray[np.uint8]:
        """(M, 3) uint8 fused colours."""
        return self._assembled("colors", self._colors)

    @property
    def member_ids(self) -> NDArray[np.int32]:
        """(M, k) int32 mask ids of each voxel's strongest memberships, -1 = empty slot."""
        return self._assembled("member_ids", self._member_ids)

    @property
    def member_weights(self) -> NDArray[np.float32]:
        """(M, k) float32 the memberships B3d, strongest first, 0 in empty slots."""
        return self._assembled("member_weights", self._member_weights)

    @property
    def view_counts(self) -> NDArray[np.int32]:
        """(M,) int32 keyframes in which each voxel was visible."""
        return self._assembled("view_counts", self._view_counts)


def num_rows_of(embeddings: Mapping[str, NDArray[Any]]) -> int:
    """Rows of the first array of a space → array mapping (0 when empty)."""
    return next((int(e.shape[0]) for e in embeddings.values()), 0)

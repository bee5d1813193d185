"""Blocks of a map's per-voxel tables on disk while they are out of memory.

A map bigger than its memory budget keeps in RAM only the blocks of voxels the camera saw
recently (see :meth:`~diff2scene.mapping.semantic_map.SemanticMap.enforce_budget`); the others
wait here, one file per block, until a keyframe or a query needs them again.

The store is the process's overflow memory, not a map file: a map is what
:meth:`~diff2scene.mapping.semantic_map.SemanticMap.save` writes, with the spilled blocks read
back into it. So a kill at any moment leaves the last saved map as it was, and the files here
are written with a rename (a reader never sees half a block) but not fsync'ed (a block only
needs to survive as long as the process that wrote it). Each file's contents are checked
against a checksum kept in memory when it is read back.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import DataFormatError

#: Files of a store are named ``block-<block>-<generation>.npz``.
_PREFIX = "block-"
#: Directories a store makes for itself when given none.
_TEMP_PREFIX = "diff2scene-spill-"


@dataclass(frozen=True)
class SpillRecord:
    """Where one spilled block is and what it holds."""

    block: int
    path: Path
    #: Table name → (shape, dtype string, CRC-32 of the bytes).
    tables: dict[str, tuple[tuple[int, ...], str, int]]
    nbytes: int


def _crc(arr: NDArray[Any]) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data)


class SpillStore:
    """A directory of spilled blocks owned by one map (and one process)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        """Use ``directory`` (made if missing; spill files left in it by an earlier process
        are removed: they belong to no saved map), or a private temporary directory."""
        self._own_dir = directory is None or str(directory) == ""
        if self._own_dir:
            self.directory = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
        else:
            self.directory = Path(directory)  # type: ignore[arg-type]
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for stale in self.directory.glob(f"{_PREFIX}*"):
                stale.unlink(missing_ok=True)
            for stale in self.directory.glob(f".{_PREFIX}*"):
                stale.unlink(missing_ok=True)
        self._generation = 0
        self._records: dict[int, SpillRecord] = {}
        # Blocks belong to this process: they go when the store does, or at exit.
        self._finalizer = weakref.finalize(self, _clear, self.directory, self._own_dir)
        #: Bytes written and read back over the store's life.
        self.bytes_written = 0
        self.bytes_read = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks stored now."""
        return sum(r.nbytes for r in self._records.values())

    def __contains__(self, block: int) -> bool:
        return block in self._records

    def write(self, block: int, tables: dict[str, NDArray[Any]]) -> SpillRecord:
        """Store ``tables`` (name → array) as block ``block``, replacing what it held."""
        self._generation += 1
        path = self.directory / f"{_PREFIX}{block:07d}-{self._generation}.npz"
        tmp = path.with_name("." + path.name)
        with tmp.open("wb") as fh:
            np.savez(fh, **tables)  # type: ignore[arg-type]
        tmp.replace(path)
        record = SpillRecord(
            block=block,
            path=path,
            tables={n: (tuple(a.shape), a.dtype.str, _crc(a)) for n, a in tables.items()},
            nbytes=int(sum(a.nbytes for a in tables.values())),
        )
        old = self._records.get(block)
        self._records[block] = record
        if old is not None:
            old.path.unlink(missing_ok=True)
        self.bytes_written += record.nbytes
        return record

    def read(self, block: int) -> dict[str, NDArray[Any]]:
        """The tables of block ``block`` (it stays stored until :meth:`discard`)."""
        record = self._records[block]
        try:
            with np.load(record.path, allow_pickle=False) as npz:
                tables = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise DataFormatError(f"{record.path}: spilled block cannot be read ({exc})") from exc
        if set(tables) != set(record.tables):
            raise DataFormatError(f"{record.path}: spilled block holds other tables")
        for name, arr in tables.items():
            shape, dtype, crc = record.tables[name]
            if arr.shape != shape or arr.dtype.str != dtype or _crc(arr) != crc:
                raise DataFormatError(f"{record.path}: spilled table {name!r} is corrupt")
        self.bytes_read += record.nbytes
        return tables

    def discard(self, block: int) -> None:
        """Forget block ``block`` (its rows changed in memory) and remove its file."""
        record = self._records.pop(block, None)
        if record is not None:
            record.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove every stored block (and the directory, when the store made it)."""
        self._records.clear()
        self._finalizer()


def _clear(directory: Path, own_dir: bool) -> None:
    if own_dir:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for pattern in (f"{_PREFIX}*", f".{_PREFIX}*"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)


"""A failed write leaves the previous file intact; a finished one is fsync'ed with its directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from diff2scene.atomic_file import atomic_write
from diff2scene.errors import NotAMapError
from diff2scene.mapping import semantic_map
from diff2scene.mapping.semantic_map import SemanticMap


class DiskFullError(OSError):
    pass


def _half_then_fail(fh: BinaryIO) -> None:
    fh.write(b"x" * 1000)
    fh.flush()
    raise DiskFullError(28, "No space left on device")


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content")
    with pytest.raises(DiskFullError):
        atomic_write(target, _half_then_fail)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]  # no temp file left
    atomic_write(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kinds: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic_write(tmp_path / "a.bin", lambda fh: fh.write(b"abc"))
    assert kinds == ["file", "dir"]  # the data before the rename, the rename after it


def test_an_interrupted_map_save_keeps_the_previous_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "map.npz"
    SemanticMap(0.05).save(path)
    before = path.read_bytes()
    real_write = semantic_map._write_member

    def write_then_crash(archive: Any, name: str, *args: Any) -> None:
        real_write(archive, name, *args)
        if name == "coords":  # half the members written: what a full disk leaves behind
            raise DiskFullError(28, "No space left on device")

    monkeypatch.setattr(semantic_map, "_write_member", write_then_crash)
    with pytest.raises(DiskFullError):
        SemanticMap(0.1).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert SemanticMap.load(path).voxel_size_m == 0.05
    assert [p.name for p in tmp_path.iterdir()] == ["map.npz"]


def test_a_torn_temp_file_is_not_a_map(tmp_path: Path) -> None:
    """What a power cut leaves (a half temp file) is recognised as no map."""
    whole = SemanticMap(0.05).save(tmp_path / "map.npz").read_bytes()
    torn = tmp_path / "torn.npz"
    torn.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(NotAMapError, match="truncated"):
        SemanticMap.load(torn)

"""Write a file so that a crash leaves either the old content or the new one, never a mix.

A robot is switched off without warning; a map that was half rewritten at that moment is lost
together with the one it replaced. So the new content goes to a temporary file in the *same*
directory (a rename is atomic only within one file system), is flushed and fsync'ed, renamed over
the target with :func:`os.replace`, and the directory itself is fsync'ed so that the rename
survives a power cut too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Temporary files start with this so that a listing (and :class:`~diff2scene.mapping.mapfiles.
#: MapDir`) can tell them from finished files.
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def fsync_directory(directory: str | Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (no-op where directories cannot be
    opened, e.g. Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Replace ``path`` by what ``write`` puts into the open binary file it is given (its
    return value is ignored).

    If ``write`` (or the flush, fsync or rename) raises, the temporary file is removed, the
    exception propagates and ``path`` keeps its previous content. The new file gets the usual
    permissions of the process (``0o666`` less the umask), as a plain ``open`` would give it.
    """
    path = Path(path)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{token}{TEMP_SUFFIX}")
    # O_EXCL | O_NOFOLLOW: never write through a link or into a file someone placed there.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)  # os.replace: atomic, and overwrites on every platform
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)
    return path

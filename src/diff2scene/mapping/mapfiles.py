"""Map files named by a request: confined to one directory, never clobbering other files.

The node's ``save_map``/``load_map`` services take a path from any participant on the DDS
domain, so that path is untrusted input. :class:`MapDir` turns it into a file inside one
configured directory or refuses it with :class:`~diff2scene.errors.MapPathError`:

- the name is taken relative to the directory; an absolute path is accepted only if it lies
  inside it (so a path the node printed earlier can be passed back);
- ``..`` components are refused outright (a map name never needs one), as are symbolic links
  whose target lies outside the directory (the path is resolved before it is checked);
- names must end in ``.npz`` (the map format) and no component may start with ``.`` (temporary
  files of a save in progress, and hidden files, are not maps); empty names, NUL bytes, control
  characters (they would forge log lines), ``~`` (home-relative) and over-long names are
  refused;
- saving never creates directories and overwrites an existing file only if its header says it
  is a diff2scene map (:func:`check_overwritable`).

The directory itself is trusted: someone who can write into it can race these checks (replace a
checked file by a link between check and use); the rules protect against the service caller.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from diff2scene.errors import ConfigError, DataFormatError, MapPathError, NotAMapError
from diff2scene.mapping.semantic_map import read_map_header

#: Suffix every map file carries (the format is an .npz archive).
MAP_SUFFIX = ".npz"
#: Longest accepted request path, in characters (far above any sensible map name).
MAX_PATH_CHARS = 1024
#: Longest path component in bytes, the limit of common Linux file systems (NAME_MAX).
MAX_COMPONENT_BYTES = 255


def check_overwritable(path: str | Path) -> None:
    """Refuse with :class:`MapPathError` unless writing a map to ``path`` destroys no other
    file: ``path`` is absent, or it is a regular file whose header names the diff2scene map
    format (any version; only the header is read)."""
    path = Path(path)
    where = str(path)
    if path.is_symlink():
        raise MapPathError(where, "it is a symbolic link; name the file it points to")
    if not path.exists():
        return
    if not path.is_file():
        raise MapPathError(where, "it exists and is not a regular file")
    try:
        read_map_header(path)
    except NotAMapError as exc:
        raise MapPathError(where, f"it exists and is not a diff2scene map ({exc.why})") from None
    except DataFormatError as exc:
        raise MapPathError(where, f"it exists and cannot be read as a map ({exc})") from None


class MapDir:
    """The one directory whose ``.npz`` files the services may read and write."""

    def __init__(self, root: str | Path, *, create: bool = False) -> None:
        """``root`` must be a directory (``create``: made if missing). ``~`` is expanded here,
        because ``root`` comes from the operator's configuration, not from a request."""
        path = Path(root).expanduser()
        if not str(root).strip():
            raise ConfigError("map_dir is empty; set it to the directory maps are kept in")
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"map_dir {path} cannot be created: {exc}") from exc
        if not path.is_dir():
            raise ConfigError(f"map_dir {path} is not a directory")
        #: The directory, with every symbolic link resolved.
        self.root = path.resolve(strict=True)

    def __repr__(self) -> str:
        return f"MapDir({str(self.root)!r})"

    def resolve(self, name: str) -> Path:
        """The file ``name`` stands for, fully resolved and inside :attr:`root`.

        Checks the rules of the module docstring that need no file access beyond resolving
        links; whether the file exists is left to :meth:`for_save` / :meth:`for_load`.
        """
        if not isinstance(name, str):
            raise MapPathError(repr(name), "a map path must be a string")
        if "\x00" in name:
            raise MapPathError(name, "it contains a NUL byte")
        if not name.strip():
            raise MapPathError(name, "the name is empty")
        if len(name) > MAX_PATH_CHARS:
            raise MapPathError(name, f"it is longer than {MAX_PATH_CHARS} characters")
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise MapPathError(name, "it contains control characters")
        if name.startswith("~"):
            raise MapPathError(name, "home-relative paths are not taken; name a file in map_dir")
        requested = Path(name)
        if ".." in requested.parts:
            raise MapPathError(name, "'..' is not allowed in a map path")
        for part in requested.parts:
            if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
                raise MapPathError(name, f"a component is longer than {MAX_COMPONENT_BYTES} bytes")
        # realpath, not Path.resolve(strict=True): the file of a save does not exist yet, but
        # every link on the way to it must still be followed before the containment check.
        resolved = Path(os.path.realpath(self.root / requested))
        if not resolved.is_relative_to(self.root):
            why = (
                "it is outside map_dir"
                if requested.is_absolute()
                else "a symbolic link in it leads outside map_dir"
            )
            raise MapPathError(name, f"{why} ({self.root})")
        relative = resolved.relative_to(self.root)
        if not relative.parts:
            raise MapPathError(name, "it names map_dir itself, not a file in it")
        if any(part.startswith(".") for part in relative.parts):
            raise MapPathError(name, "names starting with '.' are not maps (hidden or temporary)")
        if resolved.suffix != MAP_SUFFIX:
            raise MapPathError(name, f"map files end in {MAP_SUFFIX}")
        return resolved

    def for_save(self, name: str) -> Path:
        """Where to save the map ``name``: :meth:`resolve`, the directory exists (none is
        created on request), and an existing file there is a map (:func:`check_overwritable`)."""
        path = self.resolve(name)
        if not path.parent.is_dir():
            raise MapPathError(
                name, f"directory {str(path.parent.relative_to(self.root))!r} is not in map_dir"
            )
        try:
            check_overwritable(path)
        except MapPathError as exc:
            raise MapPathError(name, exc.why) from None
        return path

    def for_load(self, name: str) -> Path:
        """The existing file to load for ``name`` (:meth:`resolve`; it must be a regular
        file). Whether it is a map is checked by :meth:`SemanticMap.load`, in our words."""
        path = self.resolve(name)
        if not path.exists():
            raise MapPathError(name, "no such map in map_dir")
        if not path.is_file():
            raise MapPathError(name, "it is not a regular file")
        return path

"""Where a model profile named in a config (``segmenter.profile: tiny``) is found.

The same name must work however diff2scene was installed, so the search does not assume a
repository next to the code:

1. ``$DIFF2SCENE_MODELS_DIR``, when set (a directory of your own profiles, searched first);
2. the profiles shipped with the Python package (``diff2scene/data/models``; in a source
   checkout that is a link to the repository's ``models/``, in a wheel a copy);
3. ``share/diff2scene/models`` of every ament prefix on ``$AMENT_PREFIX_PATH`` that holds the
   ``diff2scene`` package — a colcon install tree, whose copy of the Python package has no
   profiles of its own. The ament index is plain files (the marker
   ``share/ament_index/resource_index/packages/diff2scene``), so no ROS import is needed.

A value that is the path of an existing file, or that looks like one (a ``.yaml`` suffix or a
directory part), is taken as that path and not searched for. Nothing here imports torch: the
``diff2scene models`` listing stays instant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from diff2scene.errors import ConfigError

#: Environment variable naming a directory of extra profiles, searched before the bundled ones.
MODELS_DIR_ENV = "DIFF2SCENE_MODELS_DIR"
#: Profiles shipped inside the Python package.
PACKAGE_MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
#: The ament package whose share directory holds ``models/`` in a colcon install.
AMENT_PACKAGE = "diff2scene"
PROFILE_SUFFIX = ".yaml"


@dataclass(frozen=True)
class ProfileDir:
    """One place profiles are searched, with why it is searched (for listings and errors)."""

    path: Path
    #: e.g. ``$DIFF2SCENE_MODELS_DIR``, ``package data``, ``ament prefix /opt/ws/install/x``.
    origin: str


def search_dirs() -> list[ProfileDir]:
    """The directories searched for a profile name, first match wins (see the module doc).

    Only existing directories are returned, each once (a prefix listed twice, or the package
    data reached through a link, is searched once).
    """
    candidates: list[ProfileDir] = []
    env = os.environ.get(MODELS_DIR_ENV, "").strip()
    if env:
        candidates.append(ProfileDir(Path(env).expanduser().absolute(), f"${MODELS_DIR_ENV}"))
    candidates.append(ProfileDir(PACKAGE_MODELS_DIR, "package data"))
    for prefix in _ament_prefixes():
        marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / AMENT_PACKAGE
        if marker.is_file():
            share = prefix / "share" / AMENT_PACKAGE / "models"
            candidates.append(ProfileDir(share, f"ament prefix {prefix}"))
    found: list[ProfileDir] = []
    seen: set[Path] = set()
    for candidate in candidates:
        if not candidate.path.is_dir():
            continue
        real = candidate.path.resolve()
        if real not in seen:
            seen.add(real)
            found.append(candidate)
    return found


def known_profiles() -> dict[str, tuple[Path, ProfileDir]]:
    """Every profile name reachable by :func:`find_profile` → (its file, where it was found).

    A name present in several directories resolves to the first one, as the search does.
    """
    known: dict[str, tuple[Path, ProfileDir]] = {}
    for directory in search_dirs():
        for path in sorted(directory.path.glob(f"*{PROFILE_SUFFIX}")):
            if path.is_file():
                known.setdefault(path.stem, (path, directory))
    return dict(sorted(known.items()))


def find_profile(name_or_path: str | Path) -> Path:
    """The YAML file (absolute path) of a profile given by name (``tiny``) or by path.

    Raises :class:`ConfigError` naming the known profiles and the directories searched when a
    name is found nowhere, or the path when a path does not exist.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.absolute()
    text = str(name_or_path)
    if path.suffix == PROFILE_SUFFIX or os.sep in text or "/" in text:
        raise ConfigError(f"model profile file not found: {path.absolute()}")
    dirs = search_dirs()
    for directory in dirs:
        candidate = directory.path / f"{text}{PROFILE_SUFFIX}"
        if candidate.is_file():
            return candidate
    known = ", ".join(known_profiles()) or "none"
    looked = "; ".join(f"{d.path} ({d.origin})" for d in dirs) or "nowhere"
    env = os.environ.get(MODELS_DIR_ENV, "").strip()
    if not env:
        env_state = "unset"
    elif not Path(env).expanduser().is_dir():
        env_state = f"{env}: not a directory"
    else:
        env_state = env
    raise ConfigError(
        f"unknown model profile {text!r}; known: {known}. Searched: {looked}. Give a YAML "
        f"path, or put {text}{PROFILE_SUFFIX} in the directory ${MODELS_DIR_ENV} names "
        f"({env_state})."
    )


def _ament_prefixes() -> list[Path]:
    value = os.environ.get("AMENT_PREFIX_PATH", "")
    return [Path(p) for p in value.split(os.pathsep) if p]

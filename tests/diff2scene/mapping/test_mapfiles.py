"""Map paths from requests stay inside map_dir and never clobber files that are not maps."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diff2scene.errors import ConfigError, DataFormatError, MapPathError, NotAMapError
from diff2scene.mapping.mapfiles import MapDir, check_overwritable
from diff2scene.mapping.semantic_map import FORMAT_NAME, FORMAT_VERSION, SemanticMap


@pytest.fixture
def layout(tmp_path: Path) -> tuple[MapDir, Path]:
    """map_dir with a sub-directory, and a directory outside it holding a secret file."""
    root = tmp_path / "maps"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.npz").write_text("not yours")
    return MapDir(root), outside


def test_names_resolve_inside_map_dir(layout: tuple[MapDir, Path]) -> None:
    maps, _ = layout
    root = maps.root
    assert maps.resolve("kitchen.npz") == root / "kitchen.npz"
    assert maps.resolve("sub/kitchen.npz") == root / "sub" / "kitchen.npz"
    assert maps.resolve("./sub//kitchen.npz") == root / "sub" / "kitchen.npz"
    # An absolute path is fine as long as it lies inside map_dir (e.g. one a save reported).
    assert maps.resolve(str(root / "sub" / "kitchen.npz")) == root / "sub" / "kitchen.npz"
    # A link that stays inside map_dir is followed.
    (root / "alias").symlink_to(root / "sub", target_is_directory=True)
    assert maps.resolve("alias/kitchen.npz") == root / "sub" / "kitchen.npz"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (".", "map_dir itself"),
        ("a\x00b.npz", "NUL"),
        ("bad\nline.npz", "control"),
        ("~/kitchen.npz", "home-relative"),
        ("../kitchen.npz", "'..'"),
        ("sub/../../outside/secret.npz", "'..'"),
        ("sub/../kitchen.npz", "'..'"),  # harmless, but a map name never needs it
        ("k" * 1100 + ".npz", "longer than 1024"),
        ("k" * 300 + ".npz", "longer than 255 bytes"),
        (".hidden.npz", "starting with '.'"),
        (".kitchen.npz.123-abcd.tmp", "starting with '.'"),
        ("kitchen.txt", "end in .npz"),
        ("kitchen", "end in .npz"),
        ("sub", "end in .npz"),
    ],
)
def test_malformed_names_are_refused(layout: tuple[MapDir, Path], name: str, why: str) -> None:
    maps, _ = layout
    with pytest.raises(MapPathError, match=why) as info:
        maps.resolve(name)
    assert "refused" in str(info.value)


def test_paths_leaving_map_dir_are_refused(layout: tuple[MapDir, Path]) -> None:
    maps, outside = layout
    root = maps.root
    with pytest.raises(MapPathError, match="outside map_dir"):
        maps.resolve(str(outside / "secret.npz"))
    with pytest.raises(MapPathError, match="outside map_dir"):
        maps.resolve("/etc/passwd.npz")
    # Links that escape: a directory link and a file link, for saves and loads alike.
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "evil.npz").symlink_to(outside / "secret.npz")
    (root / "dangling.npz").symlink_to(outside / "new.npz")
    for name in ("out/secret.npz", "out/new.npz", "evil.npz", "dangling.npz"):
        with pytest.raises(MapPathError, match="symbolic link in it leads outside"):
            maps.for_save(name)
        with pytest.raises(MapPathError, match="outside"):
            maps.for_load(name)
    assert (outside / "secret.npz").read_text() == "not yours"
    assert not (outside / "new.npz").exists()


def test_map_dir_itself_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        MapDir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        MapDir(tmp_path / "file")
    with pytest.raises(ConfigError, match="empty"):
        MapDir("")
    made = MapDir(tmp_path / "new" / "maps", create=True)
    assert made.root.is_dir()


def test_save_needs_an_existing_directory(layout: tuple[MapDir, Path]) -> None:
    maps, _ = layout
    with pytest.raises(MapPathError, match="'nowhere' is not in map_dir"):
        maps.for_save("nowhere/kitchen.npz")
    assert not (maps.root / "nowhere").exists()
    assert maps.for_save("sub/kitchen.npz") == maps.root / "sub" / "kitchen.npz"


def _old_format_map(path: Path) -> None:
    """A map as the previous version wrote it: header member last (same header content)."""
    SemanticMap(0.05).save(path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = arrays.pop("header_json")
    np.savez(path, **arrays, header_json=header)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist()[-1] == "header_json.npy"


def _foreign_files(directory: Path) -> dict[str, Path]:
    """Files a caller might try to overwrite or load as a map, each named *.npz."""
    files = {
        "text": directory / "foreign.npz",
        "pickle": directory / "objects.npz",
        "arrays": directory / "arrays.npz",
        "zip": directory / "zip.npz",
        "object_header": directory / "object_header.npz",
        "other_format": directory / "other_format.npz",
    }
    files["text"].write_text("my notes\n")
    with files["pickle"].open("wb") as fh:
        np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(files["arrays"], coords=np.zeros((2, 3), np.int32))
    with zipfile.ZipFile(files["zip"], "w") as archive:
        archive.writestr("readme.txt", "hello")
    np.savez(
        files["object_header"], header_json=np.array([{"format": FORMAT_NAME}], dtype=object)
    )
    other = json.dumps({"format": "something-else", "version": 1}).encode()
    np.savez(files["other_format"], header_json=np.frombuffer(other, dtype=np.uint8))
    return files


def test_only_maps_are_overwritten(layout: tuple[MapDir, Path]) -> None:
    maps, _ = layout
    foreign = _foreign_files(maps.root)
    before = {kind: path.read_bytes() for kind, path in foreign.items()}
    for kind, path in foreign.items():
        with pytest.raises(MapPathError, match="is not a diff2scene map") as info:
            maps.for_save(path.name)
        assert "pickle" not in str(info.value), kind
        assert path.read_bytes() == before[kind], kind
    (maps.root / "dir.npz").mkdir()
    with pytest.raises(MapPathError, match="not a regular file"):
        maps.for_save("dir.npz")
    # Maps, old and new, may be replaced.
    SemanticMap(0.05).save(maps.root / "new.npz")
    _old_format_map(maps.root / "old.npz")
    for name in ("new.npz", "old.npz", "absent.npz"):
        path = maps.for_save(name)
        SemanticMap(0.1).save(path)
        assert SemanticMap.load(maps.for_load(name)).voxel_size_m == 0.1


def test_check_overwritable_refuses_links_and_truncated_maps(tmp_path: Path) -> None:
    target = tmp_path / "map.npz"
    SemanticMap(0.05).save(target)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    with pytest.raises(MapPathError, match="symbolic link"):
        check_overwritable(link)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(target.read_bytes()[:40])
    with pytest.raises(MapPathError, match="not a diff2scene map"):
        check_overwritable(truncated)
    check_overwritable(target)
    check_overwritable(tmp_path / "absent.npz")


def test_loading_a_foreign_file_says_so_in_our_words(layout: tuple[MapDir, Path]) -> None:
    maps, _ = layout
    for kind, path in _foreign_files(maps.root).items():
        with pytest.raises(NotAMapError, match="is not a diff2scene map") as info:
            SemanticMap.load(maps.for_load(path.name))
        assert "pickle" not in str(info.value).lower(), kind
        assert isinstance(info.value, DataFormatError)
    with pytest.raises(MapPathError, match="no such map"):
        maps.for_load("absent.npz")


def test_a_map_of_the_previous_layout_still_loads(tmp_path: Path) -> None:
    _old_format_map(tmp_path / "old.npz")
    loaded = SemanticMap.load(tmp_path / "old.npz")
    assert loaded.voxel_size_m == 0.05 and loaded.num_voxels == 0
    # New saves put the header first, so the format name sits near the start of the file.
    SemanticMap(0.05).save(tmp_path / "new.npz")
    with zipfile.ZipFile(tmp_path / "new.npz") as archive:
        assert archive.namelist()[0] == "header_json.npy"
    assert FORMAT_NAME.encode() in (tmp_path / "new.npz").read_bytes()[:512]
    assert FORMAT_VERSION == 1


def test_pickles_are_never_unpickled(tmp_path: Path) -> None:
    """A pickle that would run code on load is refused before anything is unpickled."""
    marker = tmp_path / "ran"
    payload = tmp_path / "payload.npz"

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    payload.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(NotAMapError):
        SemanticMap.load(payload)
    assert not marker.exists()

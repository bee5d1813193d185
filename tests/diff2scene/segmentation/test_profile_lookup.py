"""Profile lookup: $DIFF2SCENE_MODELS_DIR, then package data, then ament share dirs, by name.

Prefixes are fake ament prefixes made in tmp_path (marker file + ``share/diff2scene/models``);
the wheel test builds and installs the real package into tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from diff2scene.errors import ConfigError
from diff2scene.segmentation import profile_lookup
from diff2scene.segmentation.profile_lookup import find_profile, known_profiles, search_dirs

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFF2SCENE_MODELS_DIR", raising=False)
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)


def _ament_prefix(root: Path, *profiles: str, marker: bool = True) -> Path:
    """An install prefix as colcon lays out the diff2scene package, holding ``profiles``."""
    models = root / "share" / "diff2scene" / "models"
    models.mkdir(parents=True)
    for name in profiles:
        (models / f"{name}.yaml").write_text(f"name: {name}\n")
    if marker:
        index = root / "share" / "ament_index" / "resource_index" / "packages"
        index.mkdir(parents=True)
        (index / "diff2scene").write_text("")
    return root


def _prefixes(monkeypatch: pytest.MonkeyPatch, *roots: Path) -> None:
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join(str(r) for r in roots))


def test_package_data_holds_the_repository_profiles() -> None:
    shipped = {p.name for p in profile_lookup.PACKAGE_MODELS_DIR.glob("*.yaml")}
    assert shipped == {p.name for p in (REPO_ROOT / "models").glob("*.yaml")}
    assert {"tiny.yaml", "odise_sd15.yaml"} <= shipped
    assert find_profile("tiny") == profile_lookup.PACKAGE_MODELS_DIR / "tiny.yaml"
    assert [d.origin for d in search_dirs()] == ["package data"]


def test_env_dir_comes_first_and_shadows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "tiny.yaml").write_text("name: my tiny\n")
    (mine / "custom.yaml").write_text("name: custom\n")
    monkeypatch.setenv("DIFF2SCENE_MODELS_DIR", str(mine))
    assert find_profile("tiny") == mine / "tiny.yaml"
    assert find_profile("custom") == mine / "custom.yaml"
    # the bundled profiles stay reachable beside one's own
    assert find_profile("odise_sd15") == profile_lookup.PACKAGE_MODELS_DIR / "odise_sd15.yaml"
    known = known_profiles()
    assert known["tiny"][1].origin == "$DIFF2SCENE_MODELS_DIR"
    assert known["odise_sd15"][1].origin == "package data"


def test_package_data_comes_before_ament_prefixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = _ament_prefix(tmp_path / "install", "tiny", "only_in_share")
    _prefixes(monkeypatch, prefix)
    assert find_profile("tiny") == profile_lookup.PACKAGE_MODELS_DIR / "tiny.yaml"
    assert find_profile("only_in_share") == prefix / "share/diff2scene/models/only_in_share.yaml"
    assert known_profiles()["only_in_share"][1].origin == f"ament prefix {prefix}"


def test_colcon_copy_without_package_data_reads_the_share_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # colcon's copy of the Python package has no data/models: the share dir must answer.
    monkeypatch.setattr(profile_lookup, "PACKAGE_MODELS_DIR", tmp_path / "no_package_data")
    unmarked = _ament_prefix(tmp_path / "unmarked", "x", marker=False)
    first = _ament_prefix(tmp_path / "first", "x")
    second = _ament_prefix(tmp_path / "second", "x", "y")
    _prefixes(monkeypatch, unmarked, first, second, first)
    assert find_profile("x") == first / "share/diff2scene/models/x.yaml"
    assert find_profile("y") == second / "share/diff2scene/models/y.yaml"
    # a prefix without the ament index marker is not the diff2scene package; duplicates once
    assert [d.path for d in search_dirs()] == [
        first / "share/diff2scene/models",
        second / "share/diff2scene/models",
    ]


def test_unknown_name_lists_known_profiles_and_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = _ament_prefix(tmp_path / "install", "in_share")
    _prefixes(monkeypatch, prefix)
    with pytest.raises(ConfigError) as info:
        find_profile("nope")
    msg = str(info.value)
    assert "unknown model profile 'nope'" in msg
    assert "known: in_share, odise_sd15, tiny" in msg
    assert f"{profile_lookup.PACKAGE_MODELS_DIR} (package data)" in msg
    assert f"{prefix / 'share/diff2scene/models'} (ament prefix {prefix})" in msg
    assert "$DIFF2SCENE_MODELS_DIR names (unset)" in msg
    monkeypatch.setenv("DIFF2SCENE_MODELS_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="absent: not a directory"):
        find_profile("nope")


def test_paths_are_taken_as_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "own.yaml"
    own.write_text("name: own\n")
    assert find_profile(own) == own
    assert find_profile(str(own)) == own
    monkeypatch.chdir(tmp_path)
    assert find_profile("own.yaml") == own
    # a path that does not exist is reported as such, not searched for by name
    for missing in ("tiny.yaml", "sub/tiny", str(tmp_path / "gone.yaml")):
        with pytest.raises(ConfigError, match="model profile file not found"):
            find_profile(missing)


def _copy_project(dest: Path) -> Path:
    """The files a wheel is built from, links kept (data/models links to models/)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    for name in ("src", "diff2scene_ros", "models"):
        shutil.copytree(REPO_ROOT / name, dest / name, symlinks=True, ignore=ignore)
    return dest


def test_an_installed_wheel_finds_its_profiles(tmp_path: Path) -> None:
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "data/models/*.yaml" in setuptools["package-data"]["diff2scene"]
    project = _copy_project(tmp_path / "project")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist = tmp_path / "dist"
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(project)], check=True, capture_output=True)  # fmt: skip
    wheel = next(dist.glob("diff2scene-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"diff2scene/data/models/tiny.yaml", "diff2scene/data/models/odise_sd15.yaml"} <= names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH",
                                                            "DIFF2SCENE_MODELS_DIR")}  # fmt: skip
    env["PYTHONPATH"] = str(site)
    code = (
        "import diff2scene\nfrom diff2scene.segmentation.profile_lookup import find_profile\n"
        "print(diff2scene.__file__)\nprint(find_profile('odise_sd15'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out[0] == str(site / "diff2scene" / "__init__.py")
    assert out[1] == str(site / "diff2scene" / "data" / "models" / "odise_sd15.yaml")

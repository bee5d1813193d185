"""The colcon install tree finds the model profiles by name, as a sourced ROS user's shell does.

``make setup`` builds ros2_ws; its ``install/diff2scene`` holds a copy of the Python package
without the profiles, which are installed under ``share/diff2scene/models``. The command runs
after sourcing ``install/setup.bash`` (which puts that copy first on ``PYTHONPATH`` and the
prefix on ``AMENT_PREFIX_PATH``) from a directory that is not the repository, so neither the
source tree nor the working directory can answer for it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL = REPO_ROOT / "ros2_ws" / "install"
PREFIX = INSTALL / "diff2scene"
SHARE_MODELS = PREFIX / "share" / "diff2scene" / "models"
LOOKUP = Path("diff2scene") / "segmentation" / "profile_lookup.py"
PYTHON = shlex.quote(sys.executable)

if not (INSTALL / "setup.bash").is_file() or not PREFIX.is_dir():
    if os.environ.get("CI"):
        raise RuntimeError(f"ros2_ws is not built ({INSTALL}): `make setup` must run first")
    pytest.skip("ros2_ws is not built: run `make setup`", allow_module_level=True)


def _installed_copy() -> Path:
    copies = sorted(PREFIX.glob(f"lib/python3*/site-packages/{LOOKUP}"))
    source = REPO_ROOT / "src" / LOOKUP
    if not copies or copies[0].read_bytes() != source.read_bytes():
        pytest.fail(f"{PREFIX} is older than the sources ({LOOKUP}): run `make ws`")
    return copies[0].parents[2]


def _sourced(tmp_path: Path, command: str) -> subprocess.CompletedProcess[str]:
    """``command`` in bash after sourcing the workspace, with nothing of ours set beforehand."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "DIFF2SCENE_MODELS_DIR")}  # fmt: skip
    script = f"source {shlex.quote(str(INSTALL / 'setup.bash'))} && {command}"
    return subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_sourced_install_tree_finds_profiles_in_its_share_dir(tmp_path: Path) -> None:
    site_packages = _installed_copy()
    assert not (site_packages / "diff2scene" / "data" / "models").exists(), (
        "the colcon copy ships its own profiles: this test no longer reaches the share dir"
    )
    shown = _sourced(tmp_path, f"{PYTHON} -c 'import diff2scene; print(diff2scene.__file__)'")
    assert shown.returncode == 0, shown.stderr
    assert Path(shown.stdout.strip()).is_relative_to(site_packages), shown.stdout

    found = _sourced(tmp_path, f"{PYTHON} -m diff2scene.cli models tiny")
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == SHARE_MODELS / "tiny.yaml"

    listing = _sourced(tmp_path, f"{PYTHON} -m diff2scene.cli models")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines() if line[:1] != " "}
    for name in ("tiny", "odise_sd15"):
        assert str(SHARE_MODELS / f"{name}.yaml") in lines[name]
        assert f"(ament prefix {PREFIX})" in lines[name]

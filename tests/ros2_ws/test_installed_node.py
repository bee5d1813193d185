"""The colcon install tree works as a ROS user meets it: sourced, started, queried.

``make setup`` builds ros2_ws with colcon; these tests start the *installed* executable
(``install/diff2scene/lib/diff2scene/diff2scene_node``) after sourcing ``install/setup.bash``,
with the installed parameter file, as its own process, and call its ``~/text_query`` from
here over DDS. The node runs the tiny random 2D model (the real weights are not available in
CI); a fresh node has an empty map, so a clean "empty map" failure is the expected answer: what
is tested is that the installed node starts and its service answers. Readiness is polled with
timeouts; the node is killed in ``finally``.
"""

from __future__ import annotations

import ast
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL = REPO_ROOT / "ros2_ws" / "install"
PREFIX = INSTALL / "diff2scene"
SHARE = PREFIX / "share" / "diff2scene"
EXECUTABLE = PREFIX / "lib" / "diff2scene" / "diff2scene_node"

if not (INSTALL / "setup.bash").is_file() or not EXECUTABLE.is_file():
    if os.environ.get("CI"):
        raise RuntimeError(f"ros2_ws is not built ({INSTALL}): `make setup` must run first")
    pytest.skip("ros2_ws is not built: run `make setup`", allow_module_level=True)

from diff2scene_interfaces.srv import TextQuery  # noqa: E402  (built by `make setup`)

pytestmark = pytest.mark.ros

#: Start-up of the node on a loaded 2-core machine: Python, torch, Open3D, the tiny 2D model.
SERVICE_WAIT_S = 180.0
CALL_TIMEOUT_S = 60.0


def _sourced(command: str) -> list[str]:
    """``command`` run by bash after sourcing the workspace, as a ROS user's shell would."""
    return ["bash", "-c", f"source {shlex.quote(str(INSTALL / 'setup.bash'))} && {command}"]


def _profile_parameter() -> str:
    """The node's parameter naming its 2D model profile (one override: the tiny model)."""
    from diff2scene_ros.config import NodeConfig
    from diff2scene_ros.params import param_specs

    declared = {spec.name for spec in param_specs(NodeConfig())}
    for name in ("segmenter.profile", "segmenter_profile"):
        if name in declared:
            return name
    raise AssertionError(f"no 2D model profile parameter among {sorted(declared)}")


def _launch_references() -> tuple[set[str], set[tuple[str, ...]]]:
    """(diff2scene executables, paths under share/diff2scene) the installed launch file names.

    Read from its syntax tree: ``launch``/``launch_ros`` are not installable from PyPI.
    """
    tree = ast.parse((SHARE / "launch" / "bringup.launch.py").read_text())
    executables: set[str] = set()
    shared: set[tuple[str, ...]] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        if node.func.id == "Node":
            package, executable = kwargs.get("package"), kwargs.get("executable")
            if (isinstance(package, ast.Constant) and package.value == "diff2scene"
                    and isinstance(executable, ast.Constant)):
                executables.add(str(executable.value))
        elif node.func.id == "PathJoinSubstitution" and node.args:
            parts = node.args[0]
            # PathJoinSubstitution([share, "config", "x.yaml"]) with share = FindPackageShare(...)
            if (isinstance(parts, ast.List) and parts.elts
                    and all(isinstance(e, ast.Constant) for e in parts.elts[1:])):
                shared.add(tuple(str(e.value) for e in parts.elts[1:]))  # type: ignore[attr-defined]
    return executables, shared


def test_launch_file_references_exist_in_the_install_tree() -> None:
    executables, shared = _launch_references()
    assert executables == {"diff2scene_node"}
    for name in executables:
        path = PREFIX / "lib" / "diff2scene" / name
        assert path.is_file() and os.access(path, os.X_OK), f"{path} is not an executable"
    assert {("config", "diff2scene.yaml"), ("config", "diff2scene.rviz")} <= shared
    missing = [p for p in shared if not SHARE.joinpath(*p).is_file()]
    assert not missing, f"the launch file names files the install lacks: {missing}"
    # FindPackageShare("diff2scene") resolves through the ament index marker
    index = PREFIX / "share" / "ament_index" / "resource_index" / "packages"
    assert (index / "diff2scene").is_file()


def test_install_layout() -> None:
    """What the ament_python build installs besides the launch file's references."""
    site = PREFIX / "lib" / "python3.11" / "site-packages"
    expected = [
        SHARE / "package.xml",
        SHARE / "models" / "tiny.yaml",
        site / "diff2scene" / "pipeline.py",
        site / "diff2scene" / "data" / "scannet200.txt",
        site / "diff2scene_ros" / "node.py",
        site / "diff2scene_ros" / "detections.py",
    ]
    missing = [str(p.relative_to(PREFIX)) for p in expected if not p.is_file()]
    assert not missing, f"not installed: {missing}"
    entry_points = next(site.glob("diff2scene-*.egg-info")) / "entry_points.txt"
    assert "diff2scene_node = diff2scene_ros.node:main" in entry_points.read_text()


def test_sourced_workspace_imports_the_installed_copy() -> None:
    """After sourcing, Python finds the installed packages, not the source tree."""
    probe = (f"{shlex.quote(sys.executable)} -c 'import diff2scene, diff2scene_ros, "
             "diff2scene_interfaces, tf2_msgs, vision_msgs; "
             "print(diff2scene.__file__); print(diff2scene_ros.__file__)'")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # only the sourced workspace may supply them
    result = subprocess.run(_sourced(probe), env=env, cwd="/", capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    files = result.stdout.split()
    assert len(files) == 2
    for line in files:
        assert Path(line).is_relative_to(PREFIX), f"{line} is not from the install tree"


class RunningNode:
    """The installed node (a process group) and a TextQuery client in its own rclpy context."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, service: str,
                 domain_id: int) -> None:
        self.proc, self.log, self.service = proc, log, service
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node("installed_node_test_client", context=self.context)
        self.client = self.node.create_client(TextQuery, service)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _fail(self, why: str) -> None:
        pytest.fail(f"{why}; the node's output:\n{self.log.read_text(errors='replace')[-4000:]}")

    def wait_for_service(self) -> None:
        deadline = time.monotonic() + SERVICE_WAIT_S
        while not self.client.wait_for_service(timeout_sec=1.0):
            if self.proc.poll() is not None:
                self._fail(f"the installed node exited ({self.proc.returncode})")
            if time.monotonic() > deadline:
                self._fail(f"no {self.service} within {SERVICE_WAIT_S} s")

    def call(self, query: str) -> TextQuery.Response:
        future = self.client.call_async(TextQuery.Request(query=query))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while not future.done():
            self.executor.spin_until_future_complete(future, timeout_sec=1.0)
            if not future.done() and self.proc.poll() is not None:
                self._fail(f"the node exited ({self.proc.returncode}) before answering")
            if not future.done() and time.monotonic() > deadline:
                self._fail(f"no answer to {query!r} within {CALL_TIMEOUT_S} s")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def installed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    domain_id = 1 + (os.getpid() + 71) % 100
    namespace = f"/d2s_installed_{uuid.uuid4().hex[:10]}"
    log = tmp_path_factory.mktemp("installed_node") / "node.log"
    ros_args = [
        "--ros-args",
        "-r", f"__ns:={namespace}",
        "-r", "__node:=diff2scene",
        "--params-file", str(SHARE / "config" / "diff2scene.yaml"),
        "-p", f"{_profile_parameter()}:=tiny",
    ]
    command = " ".join(shlex.quote(a) for a in ["exec", str(EXECUTABLE), *ros_args])
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
    # Only the sourced workspace may supply the node's Python packages.
    env.pop("PYTHONPATH", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(_sourced(command), env=env, cwd=log.parent, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    running: RunningNode | None = None
    try:
        running = RunningNode(proc, log, f"{namespace}/diff2scene/text_query", domain_id)
        running.wait_for_service()
        yield running
    finally:
        if running is not None:
            running.close()
        elif proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_installed_node_answers_text_query(installed_node: RunningNode) -> None:
    response = installed_node.call("chair")
    # A fresh node has mapped nothing: it must say so cleanly rather than crash or hang.
    assert response.success or "empty" in response.message, response.message
    if not response.success:
        assert len(response.instances) == 0 and response.points.width == 0
    assert response.points.header.frame_id, "the answer names no frame"
    # and it stays up to answer the next one the same way
    assert installed_node.call("table").success == response.success
    text = installed_node.log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]

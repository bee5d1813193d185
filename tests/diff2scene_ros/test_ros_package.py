"""The colcon-facing files: manifests, the ament_python install, launch/param/rviz files agree.

``colcon``/``launch_ros``/``rviz2`` are not installable here, so what they would read is checked
directly: catkin_pkg parses the manifests as colcon does, setuptools installs the ament_python
package as colcon's ament_python build does, and the parameter file is loaded into a real node.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WS_SRC = REPO / "ros2_ws" / "src"


def test_manifests_parse_and_validate() -> None:
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    interfaces = catkin_pkg.parse_package(WS_SRC / "diff2scene_interfaces")
    interfaces.validate()
    assert interfaces.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in interfaces.member_of_groups]
    package = catkin_pkg.parse_package(WS_SRC / "diff2scene")
    package.validate()
    assert package.get_build_type() == "ament_python"
    assert "diff2scene_interfaces" in [d.name for d in package.exec_depends]


def test_cmakelists_generates_every_interface_file() -> None:
    root = WS_SRC / "diff2scene_interfaces"
    files = sorted(str(p.relative_to(root)) for p in [*root.glob("msg/*.msg"),
                                                        *root.glob("srv/*.srv")])
    listed = sorted(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"',
                               (root / "CMakeLists.txt").read_text()))
    assert files == listed
    assert {"msg/Instance.msg", "srv/TextQuery.srv", "srv/SetVocabulary.srv", "srv/SaveMap.srv",
            "srv/LoadMap.srv"} <= set(files)


def test_ament_python_install_layout(tmp_path: Path) -> None:
    """What `colcon build` would install for the package `diff2scene`."""
    pkg = WS_SRC / "diff2scene"
    prefix = tmp_path / "install"
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path / "build"),
         "egg_info", "--egg-base", str(tmp_path),
         "install", "--prefix", str(prefix), "--single-version-externally-managed",
         "--record", str(tmp_path / "record.txt")],
        cwd=pkg, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    site = next(prefix.glob("lib/python3*/site-packages"))
    share = prefix / "share" / "diff2scene"
    expected = [
        prefix / "lib" / "diff2scene" / "diff2scene_node",
        prefix / "share" / "ament_index" / "resource_index" / "packages" / "diff2scene",
        share / "package.xml",
        share / "launch" / "bringup.launch.py",
        share / "config" / "diff2scene.yaml",
        share / "config" / "diff2scene.rviz",
        share / "models" / "tiny.yaml",
        site / "diff2scene" / "pipeline.py",
        site / "diff2scene" / "data" / "scannet200.txt",
        site / "diff2scene_ros" / "node.py",
    ]
    missing = [str(p.relative_to(prefix)) for p in expected if not p.is_file()]
    assert not missing, f"not installed: {missing}"
    entry_points = next(site.glob("diff2scene-*.egg-info")) / "entry_points.txt"
    assert "diff2scene_node = diff2scene_ros.node:main" in entry_points.read_text()


def _launch_remaps() -> dict[str, str]:
    """Launch argument → node-relative topic, read from the launch file without importing it."""
    tree = ast.parse((REPO / "launch" / "bringup.launch.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "INPUT_TOPICS" for t in node.targets
        ):
            return {arg: topic for arg, topic, _ in ast.literal_eval(node.value)}
    raise AssertionError("no INPUT_TOPICS in the launch file")


def test_launch_remaps_the_node_inputs() -> None:
    pytest.importorskip("diff2scene_interfaces", reason="diff2scene_interfaces is not built")
    from diff2scene_ros import node

    remapped = set(_launch_remaps().values())
    assert remapped == {node.COLOR_TOPIC, node.DEPTH_TOPIC, node.CAMERA_INFO_TOPIC,
                        node.POSE_TOPIC, node.ODOM_TOPIC}
    source = (REPO / "launch" / "bringup.launch.py").read_text()
    assert 'executable="diff2scene_node"' in source
    assert '"config", "diff2scene.yaml"' in source and '"config", "diff2scene.rviz"' in source


def test_rviz_config_shows_the_node_outputs() -> None:
    pytest.importorskip("diff2scene_interfaces", reason="diff2scene_interfaces is not built")
    from diff2scene_ros.node import NodeConfig

    rviz = yaml.safe_load((REPO / "launch" / "config" / "diff2scene.rviz").read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == NodeConfig().world_frame
    displays = {d["Class"]: d for d in manager["Displays"]}
    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert cloud["Topic"]["Value"] == "/diff2scene/labelled_cloud"
    assert cloud["Color Transformer"] == "RGB8"
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == (
        "/diff2scene/query_markers"
    )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_shipped_parameter_file_configures_the_node() -> None:
    pytest.importorskip("diff2scene_interfaces", reason="diff2scene_interfaces is not built")
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    from diff2scene_ros.node import NodeConfig
    from diff2scene_ros.params import declare_config, load_params_yaml, param_specs

    values = _flatten(load_params_yaml(REPO / "launch" / "config" / "diff2scene.yaml"))
    declared = {spec.name for spec in param_specs(NodeConfig())}
    unknown = sorted(set(values) - declared)
    assert not unknown, f"parameters the node does not declare: {unknown}"

    # rcl's own YAML parser reads the file, as with `--params-file` from the launch file
    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file",
                                      str(REPO / "launch" / "config" / "diff2scene.yaml")])
    try:
        node = Node("diff2scene", context=context, namespace=f"/p{uuid.uuid4().hex[:8]}")
        config = declare_config(node, NodeConfig())
        node.destroy_node()
    finally:
        context.try_shutdown()
    assert config == NodeConfig()  # the shipped file states the defaults

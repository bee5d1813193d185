"""The colcon-facing files: manifests, interface lists, launch/param/rviz files agree.

``launch_ros`` and ``rviz2`` are not installable from PyPI, so what they would read is checked
directly: catkin_pkg parses the manifests as colcon does, and the parameter file is loaded into a
real node. The colcon build itself and its install tree are tested in tests/ros2_ws.
"""

from __future__ import annotations

import ast
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ros import REPO

WS_SRC = REPO / "ros2_ws" / "src"


WS_COMPAT = REPO / "ros2_ws" / "compat"
#: Message packages built from ros2_ws: ours and the compat ones (where ROS 2 lacks them).
INTERFACE_PACKAGES = [WS_SRC / "diff2scene_interfaces", WS_COMPAT / "tf2_msgs",
                      WS_COMPAT / "vision_msgs"]


@pytest.mark.parametrize("path", INTERFACE_PACKAGES, ids=lambda p: p.name)
def test_interface_manifests_parse_and_validate(path: Path) -> None:
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    package = catkin_pkg.parse_package(path)
    package.validate()
    assert package.name == path.name
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]


def test_node_package_manifest_parses_and_validates() -> None:
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    package = catkin_pkg.parse_package(WS_SRC / "diff2scene")
    package.validate()
    assert package.get_build_type() == "ament_python"
    assert {"diff2scene_interfaces", "tf2_msgs", "vision_msgs"} <= {
        d.name for d in package.exec_depends
    }


def test_compat_packages_are_hidden_from_a_plain_colcon_crawl() -> None:
    """On a system ROS 2, `colcon build` in ros2_ws must not shadow the real tf2_msgs."""
    assert (WS_COMPAT / "COLCON_IGNORE").is_file()


@pytest.mark.parametrize("root", INTERFACE_PACKAGES, ids=lambda p: p.name)
def test_cmakelists_generates_every_interface_file(root: Path) -> None:
    files = sorted(str(p.relative_to(root)) for p in [*root.glob("msg/*.msg"),
                                                        *root.glob("srv/*.srv")])
    listed = sorted(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"',
                               (root / "CMakeLists.txt").read_text()))
    assert files == listed
    assert files


def test_diff2scene_interfaces_has_the_node_services() -> None:
    root = WS_SRC / "diff2scene_interfaces"
    files = {str(p.relative_to(root)) for p in [*root.glob("msg/*"), *root.glob("srv/*")]}
    assert {"msg/Instance.msg", "srv/TextQuery.srv", "srv/SetVocabulary.srv", "srv/SaveMap.srv",
            "srv/LoadMap.srv"} <= files


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
                        node.POSE_TOPIC, node.ODOM_TOPIC, node.INSTANCE_TOPIC}
    source = (REPO / "launch" / "bringup.launch.py").read_text()
    assert 'executable="diff2scene_node"' in source
    assert '"config", "diff2scene.yaml"' in source and '"config", "diff2scene.rviz"' in source


def test_rviz_config_shows_the_node_outputs() -> None:
    pytest.importorskip("diff2scene_interfaces", reason="diff2scene_interfaces is not built")
    from diff2scene_ros.config import NodeConfig

    rviz = yaml.safe_load((REPO / "launch" / "config" / "diff2scene.rviz").read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == NodeConfig().input.world_frame
    displays = {d["Class"]: d for d in manager["Displays"]}
    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert cloud["Topic"]["Value"] == "/diff2scene/labelled_cloud"
    assert cloud["Color Transformer"] == "RGB8"
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == (
        "/diff2scene/query_markers"
    )
    # the display vision_msgs_rviz_plugins registers for vision_msgs/Detection3DArray
    detections = displays["vision_msgs_rviz_plugins/Detection3DArray"]
    assert detections["Topic"]["Value"] == "/diff2scene/detections"


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

    from diff2scene_ros.config import NodeConfig
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

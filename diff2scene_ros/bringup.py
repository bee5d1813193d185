"""``diff2scene bringup``: the node that ``ros2 launch diff2scene bringup.launch.py`` starts,
for environments without ``launch`` (the pip/venv install has rclpy but no ``ros2 launch``).

Nothing about the node is restated here: its name and the input topics it remaps are read from
the launch file itself (``NODE_NAME`` and ``INPUT_TOPICS``, plain literals read without
importing ``launch``), its default parameter file is the one the launch file uses, and each
launch argument has a flag of the same name (``color_topic:=X`` ↔ ``--color-topic X``). The
launch file's rviz arguments have no flag: this command starts the mapping node only.

A parameter file is checked against the node's declarations before the node starts, because
rclpy silently ignores a key that no parameter is declared for: a typo would otherwise leave a
default in place without a word.
"""

from __future__ import annotations

import ast
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diff2scene.errors import ConfigError

#: The ROS 2 package whose share directory holds the launch and parameter files when installed.
PACKAGE = "diff2scene"
#: Launch file, and default parameter file, relative to the package's share directory.
LAUNCH_FILE = Path("launch") / "bringup.launch.py"
PARAMS_FILE = Path("config") / "diff2scene.yaml"
#: Where those files live in a source checkout (share/launch ← launch/, share/config ←
#: launch/config/, as ros2_ws/src/diff2scene/setup.py installs them).
_CHECKOUT = Path(__file__).resolve().parents[1]
_CHECKOUT_FILES = {
    LAUNCH_FILE: _CHECKOUT / "launch" / "bringup.launch.py",
    PARAMS_FILE: _CHECKOUT / "launch" / "config" / "diff2scene.yaml",
}
#: Console script of the node (``ros2 run diff2scene diff2scene_node``) and what it runs.
NODE_EXECUTABLE = "diff2scene_node"
NODE_ENTRY_POINT = "diff2scene_ros.node:main"
#: Launch arguments (other than the input topics) → the flag of this command that sets them.
LAUNCH_ARGUMENT_FLAGS = {
    "params_file": "--params",
    "namespace": "--namespace",
    "use_sim_time": "--use-sim-time",
}
#: Launch arguments of rviz, which this command does not start.
RVIZ_ARGUMENTS = ("rviz", "rviz_config")


@dataclass(frozen=True)
class InputTopic:
    """One remappable input of the node, as the launch file declares it."""

    #: Launch argument (``color_topic``); the flag is ``--color-topic``.
    argument: str
    #: Topic name inside the node, relative (``camera/color/image_raw``).
    node_topic: str
    #: What the launch file remaps it to by default.
    default: str

    @property
    def flag(self) -> str:
        return "--" + self.argument.replace("_", "-")


@dataclass(frozen=True)
class LaunchTable:
    """What ``bringup.launch.py`` says about the node it starts."""

    path: Path
    node_name: str
    input_topics: tuple[InputTopic, ...]


def share_file(relative: Path) -> Path:
    """A file of the package: from the installed share directory (what ``ros2 launch`` uses)
    when the package is installed, else from this source checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)) / relative
    except (ImportError, LookupError, ValueError):
        installed = None
    if installed is not None and installed.is_file():
        return installed
    checkout = _CHECKOUT_FILES[relative]
    if checkout.is_file():
        return checkout
    raise ConfigError(
        f"cannot find {relative}: the ROS 2 package {PACKAGE!r} is not installed (source its "
        f"workspace's install/setup.bash) and {checkout} does not exist"
    )


def read_launch_table(path: Path | None = None) -> LaunchTable:
    """``NODE_NAME`` and ``INPUT_TOPICS`` of the launch file, read as literals (the file imports
    ``launch``, which need not be installed here)."""
    path = share_file(LAUNCH_FILE) if path is None else path
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError) as exc:
        raise ConfigError(f"cannot read launch file {path}: {exc}") from exc
    constants: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("NODE_NAME", "INPUT_TOPICS"):
                    try:
                        constants[target.id] = ast.literal_eval(node.value)  # type: ignore[arg-type]
                    except ValueError as exc:
                        raise ConfigError(f"{path}: {target.id} is not a literal") from exc
    name, topics = constants.get("NODE_NAME"), constants.get("INPUT_TOPICS")
    if not isinstance(name, str) or not isinstance(topics, tuple | list):
        raise ConfigError(f"{path}: no NODE_NAME string or INPUT_TOPICS table")
    try:
        inputs = tuple(InputTopic(str(a), str(t), str(d)) for a, t, d in topics)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: INPUT_TOPICS rows must be (argument, topic, default)") from exc
    return LaunchTable(path=path, node_name=name, input_topics=inputs)


@dataclass
class BringupOptions:
    """The launch arguments, as flags of ``diff2scene bringup``."""

    #: Parameter file (None: the package's ``config/diff2scene.yaml``, as the launch file).
    params_file: Path | None = None
    #: Node namespace ("" for none); ``robot1`` and ``/robot1`` are the same.
    namespace: str = ""
    use_sim_time: bool = False
    #: Launch argument of an input (``color_topic``) → topic it is remapped to; the launch
    #: file's default for the ones left out.
    topics: dict[str, str] = field(default_factory=dict)
    #: Further remappings ``from:=to``, applied after the input topics.
    remaps: list[str] = field(default_factory=list)
    #: Arguments appended after everything else (``-p name:=value``, ``--log-level debug``).
    ros_args: list[str] = field(default_factory=list)


def node_fqn(node_name: str, namespace: str) -> str:
    """Fully qualified node name, ``/robot1/diff2scene``."""
    ns = namespace.strip("/")
    return f"/{ns}/{node_name}" if ns else f"/{node_name}"


def params_file_of(options: BringupOptions) -> Path:
    """The parameter file the node gets: the given one, else the package's default."""
    return options.params_file or share_file(PARAMS_FILE)


def node_arguments(table: LaunchTable, options: BringupOptions) -> list[str]:
    """The node's command-line arguments (after the program name) that reproduce the launch
    file: parameter file, ``use_sim_time``, node name, namespace, input remappings, extras."""
    unknown = sorted(set(options.topics) - {t.argument for t in table.input_topics})
    if unknown:
        raise ConfigError(f"the launch file declares no input argument {unknown}")
    for remap in options.remaps:
        source, sep, target = remap.partition(":=")
        if not (sep and source and target):
            raise ConfigError(f"remapping {remap!r} is not FROM:=TO")
    args = [
        "--ros-args",
        "--params-file", str(params_file_of(options)),
        "-p", f"use_sim_time:={'true' if options.use_sim_time else 'false'}",
        "-r", f"__node:={table.node_name}",
    ]
    if options.namespace.strip("/"):
        args += ["-r", f"__ns:=/{options.namespace.strip('/')}"]
    for topic in table.input_topics:
        args += ["-r", f"{topic.node_topic}:={options.topics.get(topic.argument, topic.default)}"]
    for remap in options.remaps:
        args += ["-r", remap]
    ros_args = list(options.ros_args)
    if ros_args[:1] == ["--ros-args"]:
        ros_args = ros_args[1:]
    return args + ros_args


def check_params(params_file: Path, table: LaunchTable, namespace: str) -> None:
    """:class:`ConfigError` if the file sets keys the node does not declare."""
    from diff2scene_ros.config import NodeConfig
    from diff2scene_ros.params import check_params_file

    if not params_file.is_file():
        raise ConfigError(f"parameter file {params_file} does not exist")
    check_params_file(
        params_file, NodeConfig(), node_fqn=node_fqn(table.node_name, namespace)
    ).raise_for_unknown()


def command_line(args: Sequence[str]) -> str:
    """The equivalent ``ros2 run`` command, for the log and for ``--print``."""
    return shlex.join(["ros2", "run", PACKAGE, NODE_EXECUTABLE, *args])


def run(options: BringupOptions, *, dry_run: bool = False) -> int:
    """Start the node in this process (returns when it shuts down), or print its command."""
    table = read_launch_table()
    args = node_arguments(table, options)
    check_params(params_file_of(options), table, options.namespace)
    print(f"diff2scene bringup: launch file {table.path}\n  {command_line(args)}", flush=True)
    if dry_run:
        return 0
    from diff2scene_ros.node import main as node_main

    node_main([NODE_EXECUTABLE, *args])
    return 0

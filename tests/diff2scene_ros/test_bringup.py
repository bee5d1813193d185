"""``diff2scene bringup`` starts the node the launch file starts; the launch file, the shipped
parameter files and the node's declarations agree in both directions.

``launch`` is not installable here, so the launch file is read as source (its tables are plain
literals; its calls are found in the syntax tree). The declarations are generated from
``NodeConfig`` by :mod:`diff2scene_ros.params`, so these checks follow NodeConfig as it changes.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytest.importorskip(
    "diff2scene_interfaces",
    reason="diff2scene_interfaces is not built: run `make interfaces` and use the Makefile's "
    "RUN_ENV",
)

import rclpy
from rclpy.context import Context
from rclpy.node import Node

from diff2scene.cli import build_parser
from diff2scene.errors import ConfigError
from diff2scene_ros import bringup
from diff2scene_ros.config import NodeConfig
from diff2scene_ros.params import (
    GENERATOR_COMMAND,
    RCLPY_BUILTIN_PARAMETERS,
    check_params_file,
    node_params_file_text,
    param_specs,
    writable,
)
from tests.support.ros import REPO, child_env

LAUNCH = REPO / "launch" / "bringup.launch.py"
CONFIG = REPO / "launch" / "config"
SENSOR_FILES = sorted((CONFIG / "sensors").glob("*.yaml"))


def _declared() -> set[str]:
    return {spec.name for spec in param_specs(NodeConfig())} | set(RCLPY_BUILTIN_PARAMETERS)


# --------------------------------------------------------------------------- the launch file


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name) and n.func.id == name]


def _iterates_input_topics(tree: ast.AST, call: ast.Call) -> bool:
    """True if ``call`` is the element of a comprehension over ``INPUT_TOPICS``."""
    return any(
        isinstance(comp, ast.GeneratorExp | ast.ListComp) and comp.elt is call
        and isinstance(comp.generators[0].iter, ast.Name)
        and comp.generators[0].iter.id == "INPUT_TOPICS"
        for comp in ast.walk(tree)
    )


def _launch_arguments() -> set[str]:
    tree = ast.parse(LAUNCH.read_text())
    table = bringup.read_launch_table(LAUNCH)
    names: set[str] = set()
    for call in _calls(tree, "DeclareLaunchArgument"):
        first = call.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.add(first.value)
        else:
            assert _iterates_input_topics(tree, call), ast.unparse(call)
            names |= {t.argument for t in table.input_topics}
    return names


def _mapper_node_call() -> ast.Call:
    tree = ast.parse(LAUNCH.read_text())
    mappers = [c for c in _calls(tree, "Node") if any(
        k.arg == "executable" and isinstance(k.value, ast.Constant)
        and k.value.value == bringup.NODE_EXECUTABLE for k in c.keywords)]
    assert len(mappers) == 1, "one Node action runs diff2scene_node"
    return mappers[0]


def test_launch_table_is_read_without_launch() -> None:
    table = bringup.read_launch_table(LAUNCH)
    assert table.node_name == "diff2scene"
    topics = {t.argument: t for t in table.input_topics}
    assert topics["color_topic"].node_topic == "camera/color/image_raw"
    assert topics["color_topic"].default == "/camera/color/image_raw"
    assert topics["camera_info_topic"].flag == "--camera-info-topic"


def test_every_launch_argument_is_a_bringup_flag_and_back() -> None:
    table = bringup.read_launch_table(LAUNCH)
    covered = (set(bringup.LAUNCH_ARGUMENT_FLAGS) | {t.argument for t in table.input_topics}
               | set(bringup.RVIZ_ARGUMENTS))
    launch_args = _launch_arguments()
    assert launch_args - covered == set(), "launch arguments diff2scene bringup lacks"
    assert covered - launch_args == set(), "bringup flags for arguments the launch file lacks"

    parser = build_parser("bringup")
    flags = [*bringup.LAUNCH_ARGUMENT_FLAGS.values(), *(t.flag for t in table.input_topics)]
    help_text = parser._subparsers._group_actions[0].choices["bringup"].format_help()  # type: ignore[union-attr]
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", help_text), flag


def test_launch_node_matches_what_bringup_reproduces() -> None:
    """Name, parameters and remappings of the launch file's Node action: what bringup copies."""
    call = _mapper_node_call()
    keywords = {k.arg: k.value for k in call.keywords}
    assert ast.unparse(keywords["name"]) == "NODE_NAME"
    assert ast.unparse(keywords["namespace"]) == "LaunchConfiguration('namespace')"
    # the only remappings are the INPUT_TOPICS table, which bringup reads too
    remaps = keywords["remappings"]
    assert isinstance(remaps, ast.ListComp)
    assert ast.unparse(remaps.generators[0].iter) == "INPUT_TOPICS"
    # parameters: the params_file argument, then literal names, each one the node declares
    params = keywords["parameters"]
    assert isinstance(params, ast.List)
    assert ast.unparse(params.elts[0]) == "LaunchConfiguration('params_file')"
    names = {key.value for d in params.elts[1:] if isinstance(d, ast.Dict)
             for key in d.keys if isinstance(key, ast.Constant)}
    assert names == {"use_sim_time"}  # bringup sets exactly this one with -p
    assert names <= _declared()
    # the default parameter file is the same one bringup falls back to
    source = LAUNCH.read_text()
    assert '"config", "diff2scene.yaml"' in source
    assert Path("config", "diff2scene.yaml") == bringup.PARAMS_FILE


def test_bringup_runs_the_launch_files_executable() -> None:
    setup = (REPO / "ros2_ws" / "src" / "diff2scene" / "setup.py").read_text()
    assert f'"{bringup.NODE_EXECUTABLE} = {bringup.NODE_ENTRY_POINT}"' in setup
    module, _, function = bringup.NODE_ENTRY_POINT.partition(":")
    from diff2scene_ros import node

    assert module == node.__name__ and callable(getattr(node, function))


# --------------------------------------------------------------------------- parameter files


def test_shipped_parameter_file_is_what_the_generator_writes() -> None:
    assert (CONFIG / "diff2scene.yaml").read_text() == node_params_file_text(), (
        f"launch/config/diff2scene.yaml is stale: run `{GENERATOR_COMMAND}` (Makefile env)"
    )


def test_shipped_parameter_file_sets_every_declared_parameter_and_no_other() -> None:
    path = CONFIG / "diff2scene.yaml"
    check = check_params_file(path, NodeConfig(), node_fqn="/diff2scene")
    assert check.sections == ("/**",)
    assert check.unknown == (), "keys the node does not declare"
    unwritable = [s for s in param_specs(NodeConfig()) if not writable(s)]
    assert set(check.missing) == {s.name for s in unwritable}, "declared but not in the file"
    text = path.read_text()
    for spec in unwritable:  # stated as comments, where rcl cannot parse the value
        assert re.search(rf"^\s+# {spec.name.rsplit('.', 1)[-1]}: ", text, re.M), spec.name


def test_shipped_parameter_file_carries_descriptions_and_units() -> None:
    text = (CONFIG / "diff2scene.yaml").read_text()
    for spec in param_specs(NodeConfig()):
        note = f"# {spec.description}" + (f" [{spec.unit}]" if spec.unit else "")
        assert note in text, spec.name


@pytest.mark.parametrize("path", SENSOR_FILES, ids=lambda p: p.stem)
def test_sensor_files_set_only_declared_parameters(path: Path) -> None:
    check = check_params_file(path, NodeConfig(), node_fqn="/diff2scene")
    check.raise_for_unknown()
    assert len(check.missing) < len(param_specs(NodeConfig())), "sets nothing"


@pytest.mark.parametrize("path", SENSOR_FILES, ids=lambda p: p.stem)
def test_sensor_files_configure_a_node(path: Path) -> None:
    """rcl parses the file and the values pass the configs' own validation."""
    from diff2scene_ros.params import declare_config

    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(path)])
    try:
        node = Node("diff2scene", context=context, namespace=f"/s{uuid.uuid4().hex[:8]}")
        config = declare_config(node, NodeConfig())
        node.destroy_node()
    finally:
        context.try_shutdown()
    assert config != NodeConfig()


def _commands(text: str) -> list[str]:
    """Shell commands in a file's comments, continuation lines joined."""
    commands, current = [], ""
    for line in text.splitlines():
        body = line.lstrip("# ").rstrip()
        if not line.startswith("#"):
            break
        current += " " + body.removesuffix("\\")
        if not body.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


@pytest.mark.parametrize("path", SENSOR_FILES, ids=lambda p: p.stem)
def test_sensor_files_name_real_launch_arguments(path: Path) -> None:
    """The commands in a sensor file's header use arguments and flags that exist."""
    commands = _commands(path.read_text())
    launches = [c for c in commands if c.startswith("ros2 launch diff2scene bringup.launch.py")]
    bringups = [c for c in commands if c.startswith("diff2scene bringup")]
    assert len(launches) == 1 and len(bringups) == 1
    table = bringup.read_launch_table(LAUNCH)
    flags = {*bringup.LAUNCH_ARGUMENT_FLAGS.values(), *(t.flag for t in table.input_topics)}
    used_args = set(re.findall(r"(\w+):=", launches[0]))
    used_flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", bringups[0]))
    assert {"params_file", "color_topic"} <= used_args <= _launch_arguments()
    assert {"--params", "--color-topic"} <= used_flags <= flags
    # the two commands remap the same topics
    assert sorted(re.findall(r"_topic:=(\S+)", launches[0])) == sorted(
        re.findall(r"-topic (\S+)", bringups[0]))
    assert yaml.safe_load(path.read_text())  # a YAML document, not only comments


def test_realsense_file_uses_realsense_ros_4_topics() -> None:
    text = (CONFIG / "sensors" / "realsense_d435.yaml").read_text()
    for topic in ("/camera/camera/color/image_raw",
                  "/camera/camera/aligned_depth_to_color/image_raw",
                  "/camera/camera/color/camera_info"):
        assert topic in text


# --------------------------------------------------------------------------- the command


def test_node_arguments_reproduce_the_launch_defaults() -> None:
    table = bringup.read_launch_table(LAUNCH)
    args = bringup.node_arguments(table, bringup.BringupOptions())
    assert args[:7] == ["--ros-args", "--params-file", str(CONFIG / "diff2scene.yaml"),
                        "-p", "use_sim_time:=false", "-r", "__node:=diff2scene"]
    remaps = [args[i + 1] for i in range(7, len(args), 2)]
    assert all(args[i] == "-r" for i in range(7, len(args), 2))
    assert remaps == [f"{t.node_topic}:={t.default}" for t in table.input_topics]


def test_node_arguments_take_every_option(tmp_path: Path) -> None:
    table = bringup.read_launch_table(LAUNCH)
    options = bringup.BringupOptions(
        params_file=tmp_path / "p.yaml", namespace="robot1/", use_sim_time=True,
        topics={"color_topic": "/rs/color"}, remaps=["diagnostics:=/diag"],
        ros_args=["--ros-args", "--log-level", "debug"],
    )
    args = bringup.node_arguments(table, options)
    assert args[1:5] == ["--params-file", str(tmp_path / "p.yaml"), "-p", "use_sim_time:=true"]
    assert args[7:9] == ["-r", "__ns:=/robot1"]
    assert "camera/color/image_raw:=/rs/color" in args
    assert args[-4:] == ["-r", "diagnostics:=/diag", "--log-level", "debug"]
    with pytest.raises(ConfigError, match="FROM:=TO"):
        bringup.node_arguments(table, bringup.BringupOptions(remaps=["odom=/x"]))
    with pytest.raises(ConfigError, match="no input argument"):
        bringup.node_arguments(table, bringup.BringupOptions(topics={"colour_topic": "/x"}))


def test_rclpy_reads_the_arguments_as_the_launch_file_means_them() -> None:
    """A plain rclpy node started with bringup's arguments gets the launch file's name,
    namespace, remappings and parameter overrides."""
    table = bringup.read_launch_table(LAUNCH)
    options = bringup.BringupOptions(namespace="r2", topics={"depth_topic": "/rs/depth"})
    context = Context()
    rclpy.init(context=context, args=["diff2scene_node",
                                      *bringup.node_arguments(table, options)])
    try:
        node = Node("renamed_by_the_arguments", context=context)
        assert node.get_fully_qualified_name() == "/r2/diff2scene"
        assert node.resolve_topic_name("camera/depth/image_rect_raw") == "/rs/depth"
        assert node.resolve_topic_name("camera/color/image_raw") == "/camera/color/image_raw"
        overrides = node._parameter_overrides  # what declare_parameter will read
        assert overrides["use_sim_time"].value is False
        assert set(overrides) - {"use_sim_time"} <= _declared()
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_unknown_key_is_refused_before_the_node_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diff2scene.cli import main

    path = tmp_path / "typo.yaml"
    path.write_text("/**:\n  ros__parameters:\n    cloud_period: 0.5\n")
    assert main(["bringup", "--params", str(path), "--print"]) == 2
    err = capsys.readouterr().err
    assert "'cloud_period' (did you mean 'cloud_period_s'?)" in err

    other = tmp_path / "other.yaml"
    other.write_text("/camera:\n  ros__parameters:\n    fps: 30\n")
    assert main(["bringup", "--params", str(other), "--print"]) == 2
    assert "no section applies" in capsys.readouterr().err

    assert main(["bringup", "--params", str(tmp_path / "absent.yaml"), "--print"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_print_shows_the_ros2_run_command(capsys: pytest.CaptureFixture[str]) -> None:
    from diff2scene.cli import main

    sensor = CONFIG / "sensors" / "realsense_d435.yaml"
    assert main(["bringup", "--params", str(sensor), "--namespace", "r1", "--print"]) == 0
    out = capsys.readouterr().out
    assert f"ros2 run diff2scene diff2scene_node --ros-args --params-file {sensor}" in out
    assert "-r __ns:=/r1" in out


# --------------------------------------------------------------------------- end to end


def _tiny_model_parameter() -> str:
    """The parameter that picks the random-weight "tiny" 2D model, by its current name."""
    declared = _declared()
    return next(n for n in ("segmenter.profile", "segmenter_profile") if n in declared)


@dataclass(frozen=True)
class Started:
    node_fqn: str
    domain_id: int
    #: launch argument → the topic it was remapped to
    topics: dict[str, str]
    process: subprocess.Popen[bytes]


def _nested(values: dict[str, object]) -> dict[str, object]:
    tree: dict[str, object] = {}
    for name, value in values.items():
        *groups, leaf = name.split(".")
        branch = tree
        for group in groups:
            branch = branch.setdefault(group, {})  # type: ignore[assignment]
        branch[leaf] = value
    return tree


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    """``diff2scene bringup`` in its own process with every input remapped and a parameter
    file of ours (the tiny random-weight 2D model, a non-default cloud period)."""
    domain_id = 151 + os.getpid() % 80
    ns = f"b{uuid.uuid4().hex[:8]}"
    params = tmp_path / "robot.yaml"
    # colour over image_transport's compressed topic: its name must follow the remapping too
    overrides = _nested({"cloud_period_s": 0.75, _tiny_model_parameter(): "tiny",
                         "color_transport": "compressed"})
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": overrides}}))
    table = bringup.read_launch_table(LAUNCH)
    topics = {t.argument: f"/remapped_{ns}/{t.argument}" for t in table.input_topics}
    command = [sys.executable, "-m", "diff2scene.cli", "bringup", "--params", str(params),
               "--namespace", ns]
    for t in table.input_topics:
        command += [t.flag, topics[t.argument]]
    env = child_env(domain_id)
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        yield Started(f"/{ns}/diff2scene", domain_id, topics, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.slow
def test_bringup_starts_the_node_with_file_remaps_and_service(started: Started) -> None:
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor

    from diff2scene_ros.client import NodeUnavailableError, QueryClient

    fqn, topics, process = started.node_fqn, started.topics, started.process
    context = Context()
    rclpy.init(context=context, domain_id=started.domain_id)
    probe = Node("bringup_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(probe)
    try:
        with QueryClient(fqn, context=context, timeout_s=30.0) as client:
            try:
                client.wait_until_available(180.0)  # torch and the tiny model load first
            except NodeUnavailableError:
                process.kill()
                out = process.communicate(timeout=10)[0].decode(errors="replace")
                pytest.fail(f"the node never offered its service; its output:\n{out[-4000:]}")
            answer = client.query("chair")
            assert answer.query == "chair"  # an empty map may refuse; it must answer

        # every topic the node subscribes to is one of the launch file's remapped inputs (or
        # a global ROS topic): an input missing from INPUT_TOPICS would show up here
        ns, name = fqn.rsplit("/", 1)
        deadline = time.monotonic() + 30
        subscribed: set[str] = set()
        while time.monotonic() < deadline:
            subscribed = {t for t, _ in probe.get_subscriber_names_and_types_by_node(name, ns)}
            if {topics["depth_topic"], topics["camera_info_topic"]} <= subscribed:
                break
            time.sleep(0.2)
        inputs = subscribed - {"/parameter_events", "/tf", "/tf_static", "/clock"}

        # the parameter file reached the node
        get = probe.create_client(GetParameters, f"{fqn}/get_parameters")
        assert get.wait_for_service(timeout_sec=30)
        future = get.call_async(GetParameters.Request(names=["cloud_period_s", "use_sim_time"]))
        executor.spin_until_future_complete(future, timeout_sec=30)
        values = future.result().values
        assert values[0].double_value == 0.75
        assert values[1].bool_value is False
    finally:
        executor.shutdown()
        probe.destroy_node()
        context.try_shutdown()
    process.send_signal(signal.SIGINT)  # a clean shutdown, as Ctrl-C in a terminal
    out = process.communicate(timeout=60)[0].decode(errors="replace")
    assert process.returncode == 0, out[-4000:]
    assert "ros2 run diff2scene diff2scene_node --ros-args" in out

    # the inputs, raw and compressed (image_transport's <topic>/compressed of the remapped
    # colour topic), are the remapped ones, and nothing the launch file cannot remap
    assert {topics["depth_topic"], topics["camera_info_topic"]} <= inputs, sorted(inputs)
    assert f"{topics['color_topic']}/compressed" in inputs, sorted(inputs)
    remapped = set(topics.values())
    transports = {f"{v}/{t}" for v in remapped for t in ("compressed", "compressedDepth")}
    assert inputs <= remapped | transports, "inputs the launch file cannot remap"


# --------------------------------------------------------------------------- the docs


DOCS = [REPO / "README.md", REPO / "docker" / "README.md"]


def _doc_commands(text: str, program: str) -> list[str]:
    """``program ...`` command lines of a Markdown file's code blocks, continuations joined."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(blocks))
    return [m.group(0) for m in re.finditer(rf"(?<![\w/-]){re.escape(program)}\b[^\n#]*", joined)]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_use_declared_parameters_and_real_flags(path: Path) -> None:
    """Every ``-p NAME:=`` in the docs is a parameter the node declares, and every flag given to
    ``diff2scene bringup`` / ``diff2scene query`` exists."""
    text = path.read_text()
    names = set(re.findall(r"-p ([a-z][\w.]*):=", text))  # NAME:=VALUE is a placeholder
    assert names, "the docs set no parameter"
    assert names <= _declared(), "parameters the node does not declare"
    for command in ("bringup", "query"):
        parser = build_parser(command)
        sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        known = {o for a in sub._actions for o in a.option_strings}
        for line in _doc_commands(text, f"diff2scene {command}"):
            before_ros_args = line.split("--ros-args")[0]
            used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", before_ros_args))
            assert used <= known, f"{path.name}: {line}"

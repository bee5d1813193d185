"""ROS parameters generated from dataclass configs, on a real rclpy node (no graph needed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

pytest.importorskip("rclpy", reason="the ROS 2 Python wheels are not installed")

import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter

from diff2scene.errors import ConfigError
from diff2scene_ros import params


@dataclass
class Inner:
    """A nested component."""

    #: Edge length of one cell,
    #: in metres.
    cell_size_m: float = 0.05
    #: How many.
    count: int = 3
    #: Lower corner; None = unbounded.
    corner_m: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.cell_size_m <= 0:
            raise ConfigError("Inner.cell_size_m must be > 0")


@dataclass
class Outer:
    """The whole node."""

    inner: Inner = field(default_factory=Inner)
    #: Queue policy.
    policy: Literal["drop_oldest", "block"] = "drop_oldest"
    #: Where the map goes.
    map_path: Path = Path("/tmp/map.npz")
    #: Labels to use.
    labels: list[str] = field(default_factory=lambda: ["chair", "table"])
    #: Publish period, in seconds.
    period_s: float = 2.0
    enabled: bool = True


@pytest.fixture
def context() -> Iterator[Context]:
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    ctx.try_shutdown()


def _node(context: Context, overrides: list[Parameter] | None = None) -> Node:
    return Node(f"params_{uuid.uuid4().hex[:8]}", context=context,
                parameter_overrides=overrides or [])


def test_field_docs_join_comment_lines() -> None:
    docs = params.field_docs(Inner)
    assert docs["cell_size_m"] == "Edge length of one cell, in metres."
    assert docs["count"] == "How many."
    assert "enabled" not in params.field_docs(Outer)


def test_specs_flatten_with_types_units_and_choices() -> None:
    specs = {s.name: s for s in params.param_specs(Outer())}
    assert list(specs) == ["inner.cell_size_m", "inner.count", "inner.corner_m", "policy",
                           "map_path", "labels", "period_s", "enabled"]
    assert specs["inner.cell_size_m"].type == Parameter.Type.DOUBLE
    assert specs["inner.cell_size_m"].unit == "m"
    assert specs["inner.corner_m"].optional and specs["inner.corner_m"].default is None
    assert specs["inner.corner_m"].type == Parameter.Type.DOUBLE_ARRAY
    assert specs["policy"].choices == ("drop_oldest", "block")
    assert specs["map_path"].default == "/tmp/map.npz"
    assert specs["labels"].type == Parameter.Type.STRING_ARRAY
    assert specs["period_s"].unit == "s"
    assert specs["inner.count"].unit == ""
    assert specs["enabled"].description == "enabled"


def test_unsupported_field_type_is_a_config_error() -> None:
    @dataclass
    class Bad:
        table: dict[str, int] = field(default_factory=dict)

    with pytest.raises(ConfigError, match="table"):
        params.param_specs(Bad())


def test_declare_defaults_and_descriptors(context: Context) -> None:
    node = _node(context)
    cfg = params.declare_config(node, Outer(), prefix="d2s.")
    assert cfg == Outer()
    desc = node.describe_parameter("d2s.inner.cell_size_m")
    assert desc.read_only
    assert desc.description == "Edge length of one cell, in metres."
    assert "unit: m" in desc.additional_constraints
    assert "drop_oldest" in node.describe_parameter("d2s.policy").additional_constraints
    node.destroy_node()


def test_declare_reads_overrides_into_the_dataclass(context: Context) -> None:
    node = _node(context, [
        Parameter("inner.cell_size_m", value=0.1),
        Parameter("inner.corner_m", value=[0.0, -1.0, 0.5]),
        Parameter("policy", value="block"),
        Parameter("labels", value=["lamp"]),
        Parameter("map_path", value="/data/m.npz"),
    ])
    cfg = params.declare_config(node, Outer())
    assert cfg.inner.cell_size_m == 0.1
    assert cfg.inner.corner_m == (0.0, -1.0, 0.5)
    assert cfg.policy == "block"
    assert cfg.labels == ["lamp"]
    assert cfg.map_path == Path("/data/m.npz")
    node.destroy_node()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (Parameter("policy", value="sometimes"), "policy"),
        (Parameter("inner.cell_size_m", value=-1.0), "cell_size_m"),
    ],
)
def test_declare_rejects_invalid_values(context: Context, override: Parameter,
                                        message: str) -> None:
    node = _node(context, [override])
    with pytest.raises(ConfigError, match=message):
        params.declare_config(node, Outer())
    node.destroy_node()


def test_params_yaml_round_trips_through_a_node(context: Context, tmp_path: Path) -> None:
    changed = Outer(inner=Inner(cell_size_m=0.2, corner_m=(1.0, 2.0, 3.0)), policy="block")
    text = params.params_yaml(changed, node_name="mapper")
    assert "# Edge length of one cell, in metres. [m]" in text
    path = tmp_path / "p.yaml"
    path.write_text(text)
    loaded = params.load_params_yaml(path, "mapper")
    assert loaded["inner"]["cell_size_m"] == 0.2
    overrides = [Parameter(k, value=v) for k, v in _flatten(loaded).items()]
    node = _node(context, overrides)
    assert params.declare_config(node, Outer()) == changed
    node.destroy_node()


def test_unset_optional_is_commented_out() -> None:
    text = params.params_yaml(Outer())
    data = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert "corner_m" not in data["inner"]
    assert "# corner_m: null" in text


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_empty_list_from_a_parameter_file_is_a_clear_config_error(tmp_path: Path) -> None:
    """rcl's YAML parser cannot type ``[]``; the node must say which key, not crash."""
    path = tmp_path / "p.yaml"
    path.write_text("/**:\n  ros__parameters:\n    labels: []\n")
    ctx = Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(path)])
    try:
        node = _node(ctx)
        with pytest.raises(ConfigError, match="labels"):
            params.declare_config(node, Outer())
        node.destroy_node()
    finally:
        ctx.try_shutdown()


def test_empty_default_lists_are_commented_out() -> None:
    text = params.params_yaml(Outer(labels=[]))
    assert "# labels: []" in text
    assert "labels" not in yaml.safe_load(text)["/**"]["ros__parameters"]


def test_group_docs_go_above_their_key() -> None:
    @dataclass
    class Documented:
        #: The nested component,
        #: in two lines.
        inner: Inner = field(default_factory=Inner)
        other: Inner = field(default_factory=Inner)

    assert params.group_docs(Documented()) == {"inner": "The nested component, in two lines."}
    text = params.params_yaml(Documented(), with_group_docs=True)
    assert "    # The nested component, in two lines.\n    inner:\n" in text
    assert "    other:\n" in text
    assert "The nested component" not in params.params_yaml(Documented())


def test_rclpy_builtin_parameters_are_what_a_bare_node_declares(context: Context) -> None:
    node = _node(context)
    assert set(node.list_parameters([], 0).names) == set(params.RCLPY_BUILTIN_PARAMETERS)
    node.destroy_node()


@pytest.mark.parametrize(
    ("pattern", "fqn", "applies"),
    [
        ("/**", "/diff2scene", True),
        ("/**", "/robot1/diff2scene", True),
        ("diff2scene", "/diff2scene", True),
        ("/diff2scene", "/robot1/diff2scene", False),
        ("/robot1/diff2scene", "/robot1/diff2scene", True),
        ("/*/diff2scene", "/robot1/diff2scene", True),
        ("/*/diff2scene", "/diff2scene", False),
        ("/**/diff2scene", "/diff2scene", True),
        ("/**/diff2scene", "/a/b/diff2scene", True),
        ("/**/diff2*", "/a/diff2scene", True),
        ("/camera", "/diff2scene", False),
    ],
)
def test_node_name_patterns_follow_rcl(pattern: str, fqn: str, applies: bool) -> None:
    assert params.node_name_matches(pattern, fqn) is applies


def test_check_params_file_finds_unknown_and_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    inner:\n      cell_size: 0.1\n      count: 4\n"
        "    use_sim_time: true\n"
        "/robot1/mapper:\n  ros__parameters:\n    period_s: 1.0\n    bogus: 1\n"
        "/camera:\n  ros__parameters:\n    fps: 30\n"
    )
    check = params.check_params_file(path, Outer(), node_fqn="/robot1/mapper")
    assert check.sections == ("/**", "/robot1/mapper")
    assert check.unknown == ("inner.cell_size", "bogus")
    assert "inner.count" not in check.missing and "period_s" not in check.missing
    assert {"inner.cell_size_m", "policy", "enabled"} <= set(check.missing)
    with pytest.raises(ConfigError) as caught:
        check.raise_for_unknown()
    assert "'inner.cell_size' (did you mean 'inner.cell_size_m'?)" in str(caught.value)
    assert "'bogus'" in str(caught.value)

    elsewhere = params.check_params_file(path, Outer(), node_fqn="/other")
    assert elsewhere.sections == ("/**",)
    clean = params.check_params_file(
        params_file(tmp_path, params.params_yaml(Outer())), Outer(), node_fqn="/x")
    clean.raise_for_unknown()
    assert clean.missing == ("inner.corner_m",)  # None cannot be written, only commented


def params_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "generated.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list\n", "maps node names"),
        ("/**:\n  parameters:\n    a: 1\n", "no ros__parameters"),
        ("/**: [\n", "cannot read"),
        ("/other:\n  ros__parameters:\n    a: 1\n", "no section applies"),
    ],
)
def test_check_params_file_rejects_what_is_not_a_parameter_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        params.check_params_file(path, Outer(), node_fqn="/mapper").raise_for_unknown()


@pytest.mark.parametrize(
    ("name", "unit"),
    [("pipeline.mapper.voxel_size_m", "m"), ("max_speed_m_s", "m/s"),
     ("max_angular_speed_deg_s", "deg/s"), ("period_s", "s"), ("border_px", "px"),
     ("count", "")],
)
def test_units_come_from_name_suffixes(name: str, unit: str) -> None:
    assert params.unit_of(name) == unit

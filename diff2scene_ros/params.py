"""ROS 2 parameters generated from the core's dataclass configs: declared once, in the dataclass.

Every field of a config tree becomes one read-only parameter with a dotted name
(``pipeline.mapper.voxel_size_m``), its default, its ``#:`` field comment as description, its unit
(from the name suffix: units live in names) and, for ``Literal`` fields, the allowed values. Values
set from a YAML parameter file or a launch file are read back into the dataclass through
:func:`diff2scene.config.from_dict`, so a ROS user gets the same strict validation (unknown
choices, out-of-range values) as a YAML user of the core.
"""

from __future__ import annotations

import array
import dataclasses
import difflib
import fnmatch
import inspect
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from diff2scene.config import from_dict, to_dict
from diff2scene.errors import ConfigError

T = TypeVar("T")

#: Unit of a parameter by the suffix of its name (units live in names).
UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    # rates first: ``max_speed_m_s`` is in m/s, not in s
    ("_m_s", "m/s"),
    ("_deg_s", "deg/s"),
    ("_mm", "mm"),
    ("_m", "m"),
    ("_deg", "deg"),
    ("_rad", "rad"),
    ("_ms", "ms"),
    ("_ns", "ns"),
    ("_s", "s"),
    ("_px", "px"),
    ("_hz", "Hz"),
    ("_mb", "MiB"),
)

ParamValue = bool | int | float | str | list[bool] | list[int] | list[float] | list[str] | None


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter standing for one config field."""

    #: Dotted parameter name, e.g. ``pipeline.mapper.voxel_size_m``.
    name: str
    #: Default value in ROS form (tuples as lists, paths as strings, None when unset).
    default: ParamValue
    type: Parameter.Type
    description: str
    #: Unit from the name suffix, "" if none.
    unit: str
    #: Allowed values of a ``Literal`` field, else empty.
    choices: tuple[str, ...] = ()
    #: True if the field may be None; such parameters are dynamically typed and start unset.
    optional: bool = False

    def descriptor(self) -> ParameterDescriptor:
        constraints = []
        if self.unit:
            constraints.append(f"unit: {self.unit}")
        if self.choices:
            constraints.append(f"one of {list(self.choices)}")
        if self.optional:
            constraints.append("may be left unset")
        return ParameterDescriptor(
            name=self.name,
            type=(Parameter.Type.NOT_SET if self.optional else self.type).value,
            description=self.description,
            additional_constraints="; ".join(constraints),
            read_only=True,
            dynamic_typing=self.optional,
        )


def unit_of(name: str) -> str:
    """Unit of a field by its name suffix (``voxel_size_m`` → "m"), "" if it has none."""
    leaf = name.rsplit(".", 1)[-1].lower()
    for suffix, unit in UNIT_SUFFIXES:
        if leaf.endswith(suffix):
            return unit
    return ""


_FIELD_LINE = re.compile(r"^\s+([A-Za-z_]\w*)\s*:")


def field_docs(cls: type) -> dict[str, str]:
    """Field name → text of the ``#:`` comment lines right above it, for a dataclass and bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in source.splitlines():
            stripped = line.strip()
            if stripped.startswith("#:"):
                pending.append(stripped[2:].strip())
                continue
            match = _FIELD_LINE.match(line)
            if match and pending:
                docs[match.group(1)] = " ".join(pending)
            pending = []
    return docs


def _ros_form(hint: Any, where: str) -> tuple[Parameter.Type, tuple[str, ...], bool]:
    """(ROS type, Literal choices, optional) of a field type; ConfigError if unsupported."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(rest) == len(args):
            raise ConfigError(f"{where}: union {hint} cannot be a ROS parameter")
        ros_type, choices, _ = _ros_form(rest[0], where)
        return ros_type, choices, True
    if origin is typing.Literal:
        if not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where}: only string Literals can be ROS parameters")
        return Parameter.Type.STRING, tuple(args), False
    if origin in (list, tuple):
        items = {a for a in args if a is not Ellipsis}
        array_types = {
            bool: Parameter.Type.BOOL_ARRAY,
            int: Parameter.Type.INTEGER_ARRAY,
            float: Parameter.Type.DOUBLE_ARRAY,
            str: Parameter.Type.STRING_ARRAY,
        }
        if len(items) == 1 and (item := items.pop()) in array_types:
            return array_types[item], (), False
        raise ConfigError(f"{where}: {hint} cannot be a ROS parameter (mixed or nested items)")
    scalar_types = {
        bool: Parameter.Type.BOOL,
        int: Parameter.Type.INTEGER,
        float: Parameter.Type.DOUBLE,
        str: Parameter.Type.STRING,
        Path: Parameter.Type.STRING,
    }
    if hint in scalar_types:
        return scalar_types[hint], (), False
    raise ConfigError(f"{where}: {hint} cannot be a ROS parameter")


def param_specs(config: Any, *, prefix: str = "") -> list[ParamSpec]:
    """One :class:`ParamSpec` per leaf field of dataclass instance ``config`` (its values are
    the defaults), nested dataclasses flattened into dotted names."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{config!r} is not a dataclass instance")
    cls = type(config)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    specs: list[ParamSpec] = []
    for f in dataclasses.fields(cls):
        # ros_parameter=False marks settings that have no ROS parameter form (mappings); they
        # keep their defaults in the node and are set through the core's YAML configs.
        if not f.init or f.metadata.get("ros_parameter", True) is False:
            continue
        name = f"{prefix}{f.name}"
        value = getattr(config, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            specs.extend(param_specs(value, prefix=f"{name}."))
            continue
        ros_type, choices, optional = _ros_form(hint, name)
        default = to_dict(value)
        if ros_type == Parameter.Type.DOUBLE and default is not None:
            default = float(default)
        if ros_type == Parameter.Type.DOUBLE_ARRAY and default is not None:
            default = [float(v) for v in default]
        specs.append(
            ParamSpec(
                name=name,
                default=default,
                type=ros_type,
                description=docs.get(f.name, f.name.replace("_", " ")),
                unit=unit_of(name),
                choices=choices,
                optional=optional,
            )
        )
    return specs


def declare_config(node: Node, config: T, *, prefix: str = "") -> T:
    """Declare one read-only parameter per field of ``config`` and return the config as set.

    Values from parameter overrides (YAML file, launch arguments, ``--ros-args -p``) replace the
    defaults; the result is validated like a YAML config of the core and a
    :class:`ConfigError` names the offending parameter.
    """
    from rclpy.exceptions import InvalidParameterTypeException, ParameterUninitializedException

    specs = param_specs(config, prefix=prefix)
    values: dict[str, Any] = {}
    for spec in specs:
        default = spec.default
        try:
            if default is None:
                node.declare_parameter(spec.name, None, spec.descriptor())
            else:
                node.declare_parameter(spec.name, Parameter(spec.name, spec.type, default).value,
                                       spec.descriptor())
            value = node.get_parameter(spec.name).value
        except (InvalidParameterTypeException, ParameterUninitializedException) as exc:
            raise ConfigError(
                f"parameter {spec.name}: {exc} (expected {spec.type.name.lower()}; an empty "
                "list has no type in a parameter file: leave the key out instead)"
            ) from exc
        if isinstance(value, list | tuple | array.array):
            value = list(value)
        _insert(values, spec.name[len(prefix):].split("."), value)
    return from_dict(type(config), values, where=prefix.rstrip(".") or type(config).__name__)


def _insert(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def writable(spec: ParamSpec) -> bool:
    """True if a parameter file can state ``spec``'s default: rcl's parser cannot type an empty
    list and has no "unset", so those defaults are written commented out."""
    return spec.default is not None and spec.default != []


def group_docs(config: Any, *, prefix: str = "") -> dict[str, str]:
    """Dotted name of each nested config (``pipeline.mapper``) → its field comment, if any."""
    cls = type(config)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if f.init and dataclasses.is_dataclass(hints[f.name]):
            name = f"{prefix}{f.name}"
            if f.name in docs:
                out[name] = docs[f.name]
            out.update(group_docs(getattr(config, f.name), prefix=f"{name}."))
    return out


def params_yaml(
    config: Any, *, node_name: str = "/**", prefix: str = "", with_group_docs: bool = False
) -> str:
    """A ROS 2 parameter file of ``config`` with each parameter's description as a comment
    (and, with ``with_group_docs``, each nested config's description above its key)."""
    specs = param_specs(config, prefix=prefix)
    groups_doc = group_docs(config, prefix=prefix) if with_group_docs else {}
    lines = [f"{node_name}:", "  ros__parameters:"]
    previous_groups: list[str] = []
    for spec in specs:
        parts = spec.name.split(".")
        groups = parts[:-1]
        for depth in range(len(groups)):
            if previous_groups[: depth + 1] != groups[: depth + 1]:
                doc = groups_doc.get(".".join(groups[: depth + 1]))
                if doc:
                    lines.append(f"{'  ' * (depth + 2)}# {doc}")
                lines.append(f"{'  ' * (depth + 2)}{groups[depth]}:")
        indent = "  " * (len(parts) + 1)
        note = spec.description + (f" [{spec.unit}]" if spec.unit else "")
        if spec.choices:
            note += f" One of {', '.join(spec.choices)}."
        if spec.optional:
            note += " Leave commented out for none."
        unset = not writable(spec)
        if spec.default == []:
            note += " Empty by default (an empty list cannot be written here)."
        lines.append(f"{indent}# {note}")
        rendered = yaml.safe_dump({parts[-1]: spec.default}, default_flow_style=True,
                                  width=1000).strip()[1:-1]
        lines.append(f"{indent}{'# ' if unset else ''}{rendered}")
        previous_groups = groups
    return "\n".join(lines) + "\n"


def load_params_yaml(path: str | Path, node_name: str = "/**") -> Mapping[str, Any]:
    """The ``ros__parameters`` mapping of ``node_name`` in a ROS 2 parameter file."""
    data = yaml.safe_load(Path(path).read_text())
    try:
        params = data[node_name]["ros__parameters"]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: no {node_name}: ros__parameters: section") from exc
    if not isinstance(params, Mapping):
        raise ConfigError(f"{path}: ros__parameters must be a mapping")
    return params


#: Parameters every rclpy node declares by itself; a parameter file may set them too.
RCLPY_BUILTIN_PARAMETERS: tuple[str, ...] = ("use_sim_time", "start_type_description_service")


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted name → value of a nested ``ros__parameters`` mapping."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def node_name_matches(pattern: str, node_fqn: str) -> bool:
    """True if a parameter file's node key (``/**``, ``diff2scene``, ``/*/diff2scene``,
    ``/**/diff2scene``) applies to the node with fully qualified name ``node_fqn``.

    As in rcl: a key without a leading slash is absolute, ``*`` stands for one name and ``**``
    for any number of namespace levels, none included.
    """

    def match(pat: list[str], name: list[str]) -> bool:
        if not pat:
            return not name
        if pat[0] == "**":
            return any(match(pat[1:], name[i:]) for i in range(len(name) + 1))
        return bool(name) and fnmatch.fnmatchcase(name[0], pat[0]) and match(pat[1:], name[1:])

    return match([p for p in pattern.split("/") if p], [p for p in node_fqn.split("/") if p])


@dataclass(frozen=True)
class ParamsFileCheck:
    """How a parameter file's keys for one node compare with what the node declares."""

    path: Path
    #: Node keys of the file that apply to the node, in file order.
    sections: tuple[str, ...]
    #: Keys the node does not declare (a typo here would be silently ignored by rclpy).
    unknown: tuple[str, ...]
    #: Declared parameters the file does not set (they keep their defaults).
    missing: tuple[str, ...]
    #: Every parameter the node declares for the config, rclpy's own included.
    declared: tuple[str, ...]

    def raise_for_unknown(self) -> None:
        """:class:`ConfigError` naming each unknown key and the declared names closest to it."""
        if not self.sections:
            raise ConfigError(
                f"{self.path}: no section applies to this node (a section is a node name, "
                "e.g. /**: or /diff2scene:, holding ros__parameters:)"
            )
        if self.unknown:
            raise ConfigError(f"{self.path}: the node declares no parameter " + "; ".join(
                _with_suggestion(key, self.declared) for key in self.unknown
            ))


def _with_suggestion(key: str, declared: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, declared, n=1, cutoff=0.6)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def check_params_file(
    path: str | Path, config: Any, *, node_fqn: str, prefix: str = ""
) -> ParamsFileCheck:
    """Compare the keys a ROS 2 parameter file sets for ``node_fqn`` with the parameters
    :func:`declare_config` declares for ``config``; :class:`ConfigError` if the file is not a
    parameter file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read parameter file: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a parameter file maps node names to ros__parameters")
    declared = [spec.name for spec in param_specs(config, prefix=prefix)]
    sections: list[str] = []
    values: dict[str, Any] = {}
    for key, section in data.items():
        if not node_name_matches(str(key), node_fqn):
            continue
        params = section.get("ros__parameters") if isinstance(section, Mapping) else None
        if not isinstance(params, Mapping):
            raise ConfigError(f"{path}: {key}: has no ros__parameters: mapping")
        sections.append(str(key))
        values.update(flatten_params(params))
    known = set(declared) | set(RCLPY_BUILTIN_PARAMETERS)
    return ParamsFileCheck(
        path=path,
        sections=tuple(sections),
        unknown=tuple(k for k in values if k not in known),
        missing=tuple(name for name in declared if name not in values),
        declared=(*declared, *RCLPY_BUILTIN_PARAMETERS),
    )


#: The command that writes the node's parameter file (``launch/config/diff2scene.yaml``).
GENERATOR_COMMAND = "python scripts/gen_params_yaml.py"


def node_params_file_text() -> str:
    """The node's parameter file with every default, generated from ``NodeConfig``.

    ``launch/config/diff2scene.yaml`` is exactly this text (a test compares them); rerun
    :data:`GENERATOR_COMMAND` after changing ``NodeConfig`` or a config inside it.
    """
    from diff2scene_ros.config import NodeConfig

    header = (
        "# Parameters of the diff2scene node with their defaults, one per field of\n"
        "# diff2scene_ros.config.NodeConfig and the configs inside it; each comment is the\n"
        "# field's description, its unit in [brackets].\n"
        f"# Generated by `{GENERATOR_COMMAND}`: do not edit, rerun it after changing the configs.\n"
        "# For a robot, pass a file with only the keys you change (see sensors/ beside this\n"
        "# file): keys left out keep these defaults, unknown keys are refused by\n"
        "# `diff2scene bringup`, and bad values stop the node with the offending name.\n"
    )
    return header + params_yaml(NodeConfig(), with_group_docs=True)


def write_or_check(path: Path, text: str, *, check: bool, regenerate: str) -> int:
    """Write a generated file, or with ``check`` compare it: print a diff and return 1 if the
    committed ``path`` differs from ``text`` (``regenerate`` is the command that rewrites it).
    One routine for every generated file the tests keep current (parameter file, API page)."""
    current = path.read_text() if path.is_file() else ""
    if check:
        if current == text:
            print(f"{path} is up to date")
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=str(path), tofile="generated",
        ))
        print(f"\n{path} is stale: run {regenerate}", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path} ({len(text.splitlines())} lines)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Print the parameter file of a config class: ``python -m diff2scene_ros.params MOD:CLS``."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", help="config dataclass, e.g. diff2scene_ros.config:NodeConfig")
    parser.add_argument("--node-name", default="/**", help="node the parameters apply to")
    args = parser.parse_args(argv)
    module_name, _, class_name = args.config.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    print(
        f"# Parameters of {class_name}, generated by `python -m diff2scene_ros.params "
        f"{args.config}`;\n# edit freely: keys left out keep their defaults, unknown keys and "
        "bad values stop the node.\n" + params_yaml(cls(), node_name=args.node_name),
        end="",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

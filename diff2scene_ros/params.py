"""ROS 2 parameters generated from the core's dataclass configs: declared once, in the dataclass.

Every field of a config tree becomes one read-only parameter with a dotted name
(``pipeline.mapper.voxel_size_m``), its default, its ``#:`` field comment as description, its unit
(from the name suffix, STYLE rule 4) and, for ``Literal`` fields, the allowed values. Values
set from a YAML parameter file or a launch file are read back into the dataclass through
:func:`diff2scene.config.from_dict`, so a ROS user gets the same strict validation (unknown
choices, out-of-range values) as a YAML user of the core.
"""

from __future__ import annotations

import array
import dataclasses
import inspect
import re
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

#: Unit of a parameter by the suffix of its name (STYLE rule 4: units live in names).
UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
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
        if not f.init:
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


def params_yaml(config: Any, *, node_name: str = "/**", prefix: str = "") -> str:
    """A ROS 2 parameter file of ``config`` with each parameter's description as a comment."""
    specs = param_specs(config, prefix=prefix)
    lines = [f"{node_name}:", "  ros__parameters:"]
    previous_groups: list[str] = []
    for spec in specs:
        parts = spec.name.split(".")
        groups = parts[:-1]
        for depth in range(len(groups)):
            if previous_groups[: depth + 1] != groups[: depth + 1]:
                lines.append(f"{'  ' * (depth + 2)}{groups[depth]}:")
        indent = "  " * (len(parts) + 1)
        note = spec.description + (f" [{spec.unit}]" if spec.unit else "")
        if spec.choices:
            note += f" One of {', '.join(spec.choices)}."
        if spec.optional:
            note += " Leave commented out for none."
        # rcl's parser cannot type an empty list, so empty defaults stay commented out too
        unset = spec.default is None or spec.default == []
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


def main(argv: list[str] | None = None) -> int:
    """Print the parameter file of a config class: ``python -m diff2scene_ros.params MOD:CLS``."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", help="config dataclass, e.g. diff2scene_ros.node:NodeConfig")
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

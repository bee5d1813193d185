from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from diff2scene.config import from_dict, load_config, to_dict
from diff2scene.errors import ConfigError


@dataclass
class Inner:
    voxel_size_m: float = 0.02
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)
    path: Path | None = None


def test_nested_round_trip(tmp_path: Path) -> None:
    cfg = from_dict(Outer, {"inner": {"voxel_size_m": 1, "mode": "b"}, "sizes": [3], "path": "p"})
    assert cfg == Outer(inner=Inner(1.0, "b"), sizes=(3,), path=Path("p"))
    assert from_dict(Outer, to_dict(cfg)) == cfg
    f = tmp_path / "c.yaml"
    f.write_text("outer:\n  name: y\n")
    assert load_config(Outer, f, section="outer").name == "y"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"nmae": "typo"}, "unknown key"),
        ({"inner": {"voxel_size_m": "big"}}, "expected a number"),
        ({"inner": {"mode": "c"}}, "not one of"),
        ({"sizes": 3}, "expected a list"),
        ({"inner": 5}, "expected a mapping"),
    ],
)
def test_bad_values_are_rejected(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Outer, bad)

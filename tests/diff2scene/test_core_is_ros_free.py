"""The core must run without ROS: no module under src/diff2scene may import ROS packages."""

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "src" / "diff2scene"
FORBIDDEN_PREFIXES = ("rclpy", "rosidl", "launch", "diff2scene_ros", "diff2scene_interfaces",
                      "tf2_ros", "message_filters", "cv_bridge")
FORBIDDEN_SUFFIXES = ("_msgs", "_srvs")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _is_ros(name: str) -> bool:
    top = name.split(".", maxsplit=1)[0]
    return top.startswith(FORBIDDEN_PREFIXES) or top.endswith(FORBIDDEN_SUFFIXES)


def test_no_core_module_imports_ros() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 5
    offenders = {
        str(f.relative_to(CORE)): bad
        for f in files
        if (bad := [n for n in _imports(f) if _is_ros(n)])
    }
    assert offenders == {}


def test_the_check_catches_a_ros_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import os\nfrom sensor_msgs.msg import Image\ndef f():\n    import rclpy\n")
    assert [n for n in _imports(bad) if _is_ros(n)] == ["sensor_msgs.msg", "rclpy"]


def test_importing_the_core_loads_no_ros_module() -> None:
    modules = [
        "diff2scene." + ".".join(p.relative_to(CORE).with_suffix("").parts)
        for p in sorted(CORE.rglob("*.py"))
        if p.name != "__init__.py" and "__main__" not in p.name
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('rclpy', 'rosidl_runtime_py', 'sensor_msgs', 'std_msgs', 'geometry_msgs'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

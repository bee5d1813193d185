"""No import cycles among the modules of ``diff2scene`` and ``diff2scene_ros``.

A cycle means two modules each need the other: neither can be read, tested or replaced alone,
and whether it imports at all depends on which module is imported first. The graph is built
from the source with :mod:`ast`, so a cycle hidden in a function-level import (one that only
bites when that function first runs) counts too; imports under ``if TYPE_CHECKING:`` do not,
since they never run.

An edge goes to the most specific module an import names: ``from pkg import mod`` to
``pkg.mod`` when that is a module, ``from pkg import name`` to ``pkg`` (its ``__init__``).
Python also runs the parents' ``__init__`` on the way, but a package that imports its own
submodules is the normal shape of a package, not a cycle, so those implicit edges are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.ros import REPO

#: Import name → directory of each package whose modules are checked.
PACKAGES = {"diff2scene": REPO / "src" / "diff2scene", "diff2scene_ros": REPO / "diff2scene_ros"}


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name → source file, for every ``.py`` file under each package."""
    modules: dict[str, Path] = {}
    for name, root in packages.items():
        for path in sorted(root.rglob("*.py")):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at any depth (functions, methods, try blocks),
    except in the body of an ``if TYPE_CHECKING:`` (its ``else`` runs, so it counts)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing module that is one of ours (None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the modules of ours it imports (see the module docstring for the edges)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_known(alias.name, modules) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else _known(base, modules))
            graph[name].update(t for t in targets if t is not None and t != name)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, …, a]`` per group of modules that import each other (each strongly
    connected component of more than one module), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(_cycle_through(component, graph) for component in components)


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from the component's first module back to it, inside the component."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def test_modules_import_no_cycle() -> None:
    modules = module_files(PACKAGES)
    assert "diff2scene.pipeline" in modules and "diff2scene_ros.node" in modules
    cycles = import_cycles(import_graph(modules))
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_the_graph_sees_function_imports_and_skips_type_checking(tmp_path: Path) -> None:
    """The checker on a package made here: a cycle through a function-level relative import is
    found and named; one only under ``if TYPE_CHECKING:`` is not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import b\n")
    (pkg / "a.py").write_text("import pkg.sub.b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n    return g\n")
    (pkg / "c.py").write_text("from pkg import a\n\ndef g():\n    pass\n")
    (pkg / "d.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import e\nelse:\n    import json\n"
    )
    (pkg / "e.py").write_text("from pkg.d import TYPE_CHECKING\n")
    graph = import_graph(module_files({"pkg": pkg}))
    assert graph["pkg"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.d"] == set()
    assert graph["pkg.e"] == {"pkg.d"}
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]

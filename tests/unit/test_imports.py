"""Import hygiene of the ``rlhfkit`` package: every module imports in a fresh interpreter, no import
cycle among module-level imports, and no module imports another module's private name.

What lives here: three checks over the source tree (read with ``ast``; nothing is executed but the one
subprocess, which imports every module in turn, so that a module that needs an optional dependency or
a missing name shows up; an import that works only in some order is a cycle, which the ``ast`` check
finds whatever the order). What does not: tests of what any module does.

Imports inside functions are allowed to be lazy (they run after every module has loaded), so the cycle
check reads only module-level statements (``if TYPE_CHECKING:`` blocks, which never run, are left out).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "rlhfkit"
ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / PACKAGE



def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative ones resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.stmt) -> list[tuple[str, str | None]]:
    """(rlhfkit module, imported name or None) for every rlhfkit module an import statement loads."""
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in MODULES:
                found.append((alias.name, None))
    elif isinstance(node, ast.ImportFrom):
        source = _absolute(module, node)
        if source in MODULES:
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (source, alias.name))
    return found


def _module_level(body: list[ast.stmt]):
    """Statements that run when the module is imported (descending into if / try / with, not into
    functions, classes' methods or ``if TYPE_CHECKING:``)."""
    for node in body:
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                yield from _module_level(node.orelse)
                continue
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)
        elif isinstance(node, ast.ClassDef):
            yield from _module_level(node.body)
        else:
            yield node


def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))


def import_graph() -> dict[str, set[str]]:
    """module -> the rlhfkit modules its module-level statements import."""
    graph = {}
    for module in MODULES:
        edges = set()
        for node in _module_level(_tree(module).body):
            edges.update(target for target, _ in _targets(module, node) if target != module)
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each given as one
    concrete cycle ``a -> b -> ... -> a`` found in it."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:
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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first inside the component, back to start
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component without a cycle")


def private_imports() -> list[tuple[str, str, str]]:
    """(importer, module, name) wherever a module takes a ``_private`` name from another rlhfkit
    module, by ``from m import _name`` or by ``m._name`` on an imported module (at any depth:
    a lazy import of a private name is still a private import)."""
    found = set()
    for module in MODULES:
        tree = _tree(module)
        aliases: dict[str, str] = {}  # local name -> rlhfkit module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES:
                        aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                for target, name in _targets(module, node):
                    if name is None:
                        local = next(a.asname or a.name for a in node.names if f"{_absolute(module, node)}.{a.name}" == target)
                        aliases[local] = target
                    elif _private(name) and target != module:
                        found.add((module, target, name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                dotted = _dotted(node.value)
                target = aliases.get(dotted) if dotted else None
                if target is None and dotted in MODULES:
                    target = dotted  # import rlhfkit.a.b ... rlhfkit.a.b._x
                if target is not None and target != module:
                    found.add((module, target, node.attr))
    return sorted(found)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def test_every_module_imports_in_a_fresh_interpreter():
    # one interpreter that has imported nothing of rlhfkit; each module imported in turn, every failure reported
    code = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ':\\n' + traceback.format_exc(limit=3))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *MODULES], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"modules that do not import:\n{result.stdout}{result.stderr[-3000:]}"


def test_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles among module-level imports:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_imported_from_another_module():
    found = private_imports()
    assert not found, "private names imported across modules:\n" + "\n".join(
        f"{importer} takes {name} from {module}" for importer, module, name in found)


def test_the_checks_see_what_they_must():
    # the graph reader on a known edge, and the cycle finder on a made-up cycle
    assert "rlhfkit.config" in import_graph()["rlhfkit.cli"]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []

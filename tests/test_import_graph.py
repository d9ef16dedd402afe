"""The modules of ``lm`` import each other without cycles, counting imports inside functions.

An import inside a function still makes one module depend on another; hiding it there only
delays the failure to the first call. So the graph below holds every ``import`` statement of
every module, wherever it sits, and a strongly connected component of more than one module is
a cycle to break by moving the shared piece into a module both can import.
"""
from __future__ import annotations

import ast
import os

from tests.helpers import ROOT

PACKAGE = "lm"


def module_files(root: str, package: str) -> dict[str, str]:
    """Dotted module name -> file path for every .py file of ``package`` under ``root``."""
    modules = {}
    for folder, _, names in os.walk(os.path.join(root, package)):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            dotted = os.path.relpath(path, root)[:-len(".py")].replace(os.sep, ".")
            modules[dotted.removesuffix(".__init__")] = path
    return modules


def _existing_module(name: str, modules: dict[str, str]) -> str | None:
    """``name`` or its longest prefix that is a module (``import lm.a.b`` loads lm.a.b)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _absolute_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a ``from ... import`` reads from, with relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def _imported_modules(node: ast.AST, module: str, is_package: bool,
                      modules: dict[str, str]) -> list[str]:
    """The modules of ``modules`` that one import statement loads."""
    if isinstance(node, ast.Import):
        found = [_existing_module(alias.name, modules) for alias in node.names]
    else:
        base = _absolute_base(node, module, is_package)
        # 'from lm.x import y' loads the module lm.x.y when there is one, else takes y from lm.x.
        found = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                 else _existing_module(base, modules) for alias in node.names]
    return [name for name in found if name and name != module]


def import_graph(root: str = str(ROOT), package: str = PACKAGE) -> dict[str, dict[str, str]]:
    """Module -> {imported module: 'file:line' of the first such import}, for ``package``."""
    modules = module_files(root, package)
    graph: dict[str, dict[str, str]] = {}
    for module, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        is_package = path.endswith("__init__.py")
        edges = graph.setdefault(module, {})
        for node in ast.walk(tree):  # every statement, inside functions too
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for imported in _imported_modules(node, module, is_package, modules):
                    where = f"{os.path.relpath(path, root)}:{node.lineno}"
                    edges.setdefault(imported, where)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's algorithm without recursion; each component sorted, nodes outside ignored."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            successor = next((s for s in successors if s in graph), None)
            if successor is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    components.append(sorted(component))
            elif successor not in index:
                index[successor] = low[successor] = len(index)
                stack.append(successor)
                on_stack.add(successor)
                work.append((successor, iter(graph[successor])))
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
    return components


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    return [c for c in strongly_connected_components(graph) if len(c) > 1]


def describe_cycle(graph: dict[str, dict[str, str]], component: list[str]) -> str:
    """The modules of one cycle and the imports that join them."""
    members = set(component)
    edges = [f"    {a} -> {b}  ({graph[a][b]})"
             for a in component for b in sorted(graph[a]) if b in members]
    return f"  cycle of {len(component)}: {', '.join(component)}\n" + "\n".join(edges)


# ----------------------------------------------------------------------------- tests

def test_the_detector_finds_a_cycle_in_a_small_graph():
    graph = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:1"}, "c": {"a": "c.py:9", "d": "c.py:2"},
             "d": {}, "e": {"d": "e.py:1", "outside": "e.py:2"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert "c -> a  (c.py:9)" in describe_cycle(graph, ["a", "b", "c"])
    assert cycles({"a": {"b": ""}, "b": {}}) == []


def test_imports_inside_functions_and_relative_imports_are_edges(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("def f():\n    from ..top import name\n")
    (package / "top.py").write_text("from pkg.sub import leaf, missing\nname = 1\n")
    graph = import_graph(str(tmp_path), "pkg")
    assert set(graph["pkg.sub"]) == {"pkg.sub.leaf"}
    assert set(graph["pkg.sub.leaf"]) == {"pkg.top"}
    assert set(graph["pkg.top"]) == {"pkg.sub.leaf", "pkg.sub"}  # 'missing' is not a module
    assert cycles(graph) == [["pkg.sub", "pkg.sub.leaf", "pkg.top"]]


def test_lm_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    found = cycles(graph)
    assert not found, "import cycles in lm/ (imports inside functions count):\n" + "\n".join(
        describe_cycle(graph, component) for component in found)

"""The shape of the code: no function over 80 lines, no import cycle inside the package.

ruff (``make lint``) checks the style; it has no rule for either of these, so they are read here from the
source with ``ast``.  Imports inside functions count too: a cycle through a deferred import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "notelm"
MAX_FUNCTION_LINES = 80
# Functions being split by work that is still to be merged; each entry must go as soon as it is short.
PENDING_SPLIT: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def function_lengths(tree: ast.Module, prefix: str) -> dict[str, int]:
    """Qualified name -> lines from ``def`` to the function's last line, for every function and method."""
    out = {}

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{scope}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out[name] = child.end_lineno - child.lineno + 1
                visit(child, name)
            else:
                visit(child, scope)

    visit(tree, prefix)
    return out


def imported_modules(tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules a module imports, anywhere in it (``from a.b import c`` is ``a.b.c`` when that is
    a module, else ``a.b``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
    return out & known


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and modules importing themselves."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(v):
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
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def test_no_function_is_longer_than_80_lines():
    lengths = {}
    for name, tree in modules().items():
        lengths.update(function_lengths(tree, name))
    too_long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not set(too_long) - PENDING_SPLIT, f"functions over {MAX_FUNCTION_LINES} lines: " + \
        ", ".join(f"{name} ({n})" for name, n in sorted(too_long.items()) if name not in PENDING_SPLIT)
    done = PENDING_SPLIT - set(too_long)
    assert not done, f"{', '.join(sorted(done))}: now short enough, remove from PENDING_SPLIT"


def test_no_import_cycles():
    trees = modules()
    graph = {name: imported_modules(tree, set(trees)) for name, tree in trees.items()}
    assert import_cycles(graph) == []


def test_the_checks_find_what_they_look_for():
    """The two checks above on known answers, so that a broken check cannot pass silently."""
    tree = ast.parse("def f():\n" + "    x = 1\n" * 80 + "\nclass C:\n    def g(self):\n        pass\n")
    assert function_lengths(tree, "m") == {"m.f": 81, "m.C.g": 2}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["e"]]
    code = ast.parse("import a.b\nfrom a import c, d\ndef f():\n    from a.e import g\n")
    assert imported_modules(code, {"a", "a.b", "a.c", "a.e"}) == {"a", "a.b", "a.c", "a.e"}

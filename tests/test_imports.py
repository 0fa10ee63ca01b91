"""The project's import graph: no cycle among our modules, and the package boundaries of DESIGN.md.

The graph is read from the sources with `ast` (nothing is imported): every `import` counts, including those
inside functions (a late import only hides a cycle from the interpreter, not from a reader), except those
under `if TYPE_CHECKING:` (they exist for annotations only and never run).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "ledger", "iexec", "devnet", "worker")
#: DESIGN.md, "The parts": which of our packages each package may import (besides itself).
MAY_IMPORT = {
    "ledger": set(),
    "iexec": set(),
    "worker": set(),
    "bot": {"ledger", "iexec"},
    "devnet": {"iexec"},
}
SKIP_DIRS = {"node_modules", "__pycache__", ".venv"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
                found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """The absolute names `tree` imports (a `from a import b` gives `a.b` and `a`; the caller keeps those that
    are modules), skipping the bodies of `if TYPE_CHECKING:`."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (a package's name stands for its `__init__`); read once per
    run (the tests only read it)."""
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        names = _imported(tree, module, path.name == "__init__.py")
        graph[module] = {n for n in names if n in sources and n != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each one holds at least a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return sorted(components)


def test_the_graph_is_read() -> None:
    """A positive control: the graph sees top-level, late and relative imports, and skips TYPE_CHECKING."""
    graph = import_graph()
    assert "bot.pipeline" in graph and "ledger" in graph["bot.pipeline"]
    source = (
        "from typing import TYPE_CHECKING\n"
        "import a.b\n"
        "if TYPE_CHECKING:\n    import c\n"
        "def f():\n    from d import e\n"
        "from . import g\n"
    )
    names = _imported(ast.parse(source), "pkg.mod", is_package=False)
    assert {"a.b", "d", "d.e", "pkg", "pkg.g"} <= names
    assert "c" not in names


def test_find_cycle_finds_one() -> None:
    """A positive control for the checker: a cycle is found and printed as a path."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert all_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": set()}) == [["a", "b"]]


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = all_cycles(graph)
    if cycles:
        sub = {m: graph[m] & set(c) for c in cycles for m in c}
        shown = [f"{', '.join(c)} (e.g. {' -> '.join(find_cycle({m: sub[m] for m in c}) or c)})" for c in cycles]
        pytest.fail("import cycles among the project's modules:\n" + "\n".join(shown))


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_package_boundaries(package: str) -> None:
    """DESIGN.md's "may import" column: a package imports only the packages listed for it."""
    allowed = MAY_IMPORT[package] | {package}
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in allowed
    )
    assert not wrong, "\n".join(wrong)


def test_bot_never_imports_worker() -> None:
    graph = import_graph()
    assert not [m for m in graph if m.startswith("bot") and any(t.startswith("worker") for t in graph[m])]


#: The stand-ins for services our client talks to (market API, SMS, Telegram, result gateway, the TEE
#: post-compute): a stand-in that shared our client's code would agree with its bugs, so none of them may reach
#: `iexec` (or `bot`), directly or through another module. The workerpool and devnet/up.py are operators' tools
#: that use our client as a real workerpool uses the SDK; they are not stand-ins.
STAND_INS = ("devnet.market", "devnet.sms", "devnet.telegram", "devnet.gateway", "devnet.postcompute")
CLIENTS = ("iexec", "bot")


def _is_stand_in(module: str) -> bool:
    return any(module == s or module.startswith(s + "_") or module.startswith(s + ".") for s in STAND_INS)


def client_reaches(graph: dict[str, set[str]]) -> list[str]:
    """Each stand-in module that reaches a client package, with the import path that gets there."""
    found = []
    for start in sorted(m for m in graph if _is_stand_in(m)):
        seen, queue = {start: [start]}, [start]
        while queue:
            node = queue.pop(0)
            if node.split(".")[0] in CLIENTS:
                found.append(" -> ".join(seen[node]))
                break
            for nxt in sorted(graph.get(node, ())):
                if nxt not in seen:
                    seen[nxt] = [*seen[node], nxt]
                    queue.append(nxt)
    return found


def test_the_stand_in_check_finds_a_hidden_client_import() -> None:
    """A positive control: an import of our client through a helper module is found, with its path."""
    graph = {"devnet.market": {"devnet.helper"}, "devnet.helper": {"iexec.orders"}, "iexec.orders": set()}
    assert client_reaches(graph) == ["devnet.market -> devnet.helper -> iexec.orders"]
    assert client_reaches({"devnet.workerpool": {"iexec.tx"}, "devnet.sms": {"devnet.loopback"}}) == []


def test_stand_ins_never_import_the_client() -> None:
    graph = import_graph()
    assert {"devnet.market", "devnet.sms", "devnet.telegram_bot", "devnet.gateway", "devnet.postcompute"} <= set(graph)
    wrong = client_reaches(graph)
    assert not wrong, "stand-ins importing our client:\n" + "\n".join(wrong)

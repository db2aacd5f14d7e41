"""The package's shape, checked from its source: no import cycle, no oversized module, docs that name real files.

How the import graph is built (the decisions a reader needs to judge the cycle test):

- Nodes are the modules of ``swarmha/``: ``a/b.py`` is ``swarmha.a.b``, ``a/__init__.py`` is ``swarmha.a``.
- Every ``import`` statement counts wherever it stands: at module level, under ``if TYPE_CHECKING:`` and inside
  functions. A deferred import only hides a cycle from the interpreter, not from the reader.
- ``import swarmha.a.b`` and ``from swarmha.a.b import name`` depend on ``swarmha.a.b``; ``from swarmha.a import b``
  depends on ``swarmha.a.b`` when ``b`` is a submodule, on ``swarmha.a`` (its ``__init__``) otherwise. Relative
  imports are resolved against the importing module's package.
- The parent packages Python initialises on the way (``swarmha``, ``swarmha.a`` for ``import swarmha.a.b``) are
  NOT counted as dependencies. Python runs those ``__init__`` files first, but a package ``__init__`` that re-exports
  its children is the public face of the package, not a part the children depend on; counting it would make every
  re-exporting package a "cycle" with each of its modules. Naming a package's ``__init__`` explicitly (importing a
  name it defines or re-exports) is counted.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "swarmha"

# The longest a module under swarmha/ may be, in lines (``wc -l``).
MAX_LINES = 600

# Known exceptions, being removed by work in progress elsewhere (the election core's rewrite); this list is
# emptied once that lands. Nothing new goes here.
KNOWN_EXCEPTIONS: dict[str, frozenset[str]] = {
    # modules over MAX_LINES
    "oversized": frozenset(),
    # import cycles, each as the sorted set of modules in one strongly connected component
    "cycles": frozenset(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The swarmha modules ``name`` (at ``path``) imports, by the rules in this module's docstring."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (each one is at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as a path that ends where it starts."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{component} is not strongly connected")


def test_the_import_graph_sees_relative_type_checking_and_deferred_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"  # a submodule through its package
        "from .sibling import name\n"  # a name of a submodule
        "from .. import facade\n"  # a name of the parent package's __init__
        "import swarmha.pkg.deep\n"  # an absolute import: the module, not its packages
        "if TYPE_CHECKING:\n"
        "    from swarmha.pkg.typing_only import T\n"
        "def later():\n"
        "    from swarmha.pkg import deferred\n"
    )
    names = ["swarmha", "swarmha.pkg", "swarmha.pkg.sub", "swarmha.pkg.sub.sibling", "swarmha.pkg.deep"]
    names += ["swarmha.pkg.typing_only", "swarmha.pkg.deferred", "swarmha.pkg.sub.m"]
    modules = dict.fromkeys(names, source)
    assert imports_of("swarmha.pkg.sub.m", source, modules) == {
        "swarmha.pkg.sub.sibling",
        "swarmha.pkg",
        "swarmha.pkg.deep",
        "swarmha.pkg.typing_only",
        "swarmha.pkg.deferred",
    }
    graph = import_graph()
    assert "swarmha.discovery._base" in graph["swarmha.discovery.memory"]
    assert all(w in graph for deps in graph.values() for w in deps)


def test_strongly_connected_finds_a_cycle_and_prints_it() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_swarmha() -> None:
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if " ".join(c) not in KNOWN_EXCEPTIONS["cycles"]]
    assert not cycles, "import cycles in swarmha/:\n" + "\n".join(
        " -> ".join(one_cycle(graph, c)) + f"   (all of: {' '.join(c)})" for c in cycles
    )


def test_no_module_in_swarmha_is_longer_than_the_limit() -> None:
    too_long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
        and str(p.relative_to(ROOT)) not in KNOWN_EXCEPTIONS["oversized"]
    }
    assert not too_long, f"modules over {MAX_LINES} lines (split them): {too_long}"


def design_table_names() -> set[str]:
    """The files docs/manager-design.md's module table names, relative to swarmha/manager/.

    A row's first column names modules (`` `cluster.py` ``) or packages (`` `api/` ``); a package row's description
    names the package's modules and subpackages (`` `containers.py` ``, `` `filter/` ``), which count as
    ``api/containers.py`` and ``scheduler/filter/``."""
    text = (ROOT / "docs" / "manager-design.md").read_text()
    lines = text.splitlines()
    start = lines.index("| module | does |")
    named: set[str] = set()
    for row in lines[start + 2 :]:
        if not row.startswith("|"):
            break
        _, first, does, *_ = row.split("|")
        names = re.findall(r"`([\w/]+(?:\.py|/))`", first)
        named.update(names)
        for package in (n for n in names if n.endswith("/")):
            named.update(package + m for m in re.findall(r"`([\w/]+(?:\.py|/))`", does))
    return named


def test_manager_design_module_table_matches_the_tree() -> None:
    """docs/manager-design.md's module table names every module of swarmha/manager/, and only files that exist."""
    named = design_table_names()
    manager = PACKAGE / "manager"
    missing = sorted(n for n in named if not (manager / n).exists())
    assert not missing, f"docs/manager-design.md's module table names files not under swarmha/manager/: {missing}"
    packages = {n for n in named if n.endswith("/")}
    unnamed = sorted(
        m
        for p in manager.rglob("*.py")
        if (m := str(p.relative_to(manager))) not in named
        and not (p.name == "__init__.py" and (m.removesuffix("__init__.py") in packages or p.parent == manager))
    )
    assert not unnamed, f"modules of swarmha/manager/ missing from docs/manager-design.md's module table: {unnamed}"


ISSUE_REFERENCE = re.compile(r"(?i)\bissues?\s*#?\d|(?<![\w&/])#\d+\b")


def test_user_docs_name_no_issue_numbers() -> None:
    """Docs are for users: what is true now, not the tracker's numbering (``issue 5``, ``#16``)."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ISSUE_REFERENCE.search(line)
    ]
    assert not found, "issue numbers in user docs:\n" + "\n".join(found)


def test_the_issue_reference_pattern_catches_the_usual_forms() -> None:
    for text in ("as issue 5 asked", "issues 12-16", "(#16)", "Issue #3"):
        assert ISSUE_REFERENCE.search(text), text
    for text in ("see backends.md#client", "# Heading", "&#8203;", "fd 1024", "v1.41"):
        assert not ISSUE_REFERENCE.search(text), text

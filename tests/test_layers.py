"""The import layers of docs/design.md, checked against the code: no undeclared arrow, no cycle.

The tables in ``docs/design.md`` ("Packages and what each may import") are the allowed-import
data; this test parses them and every import in the tree (``ast``: imports inside functions
count; imports under ``if TYPE_CHECKING:`` are "types only").
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("router", "models", "experiments", "gateway", "benchmarks", "tests")
ANYTHING = "*"


@dataclass(frozen=True)
class Rule:
    may: frozenset[str]
    types: frozenset[str]


def _tables() -> list[dict[str, Rule]]:
    """The design doc's three tables: top level, gateway/ packages, gateway/http modules."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## Packages and what each may import", 1)[1].split("\n## ", 1)[0]
    tables: list[dict[str, Rule]] = []
    head = r"\| package \| owns \| may import \| types only \|\n\|[-|]+\|\n"
    for block in re.findall(head + r"((?:\|.*\n)+)", section):
        rows: dict[str, Rule] = {}
        for line in block.splitlines():
            name, _owns, may, types = (cell.strip() for cell in line.strip().strip("|").split("|"))
            (key,) = re.findall(r"`([\w.]+)`", name)
            names = [re.findall(r"`([\w.]+)`", cell) for cell in (may, types)]
            if may == "anything":
                names[0] = [ANYTHING]
            rows[key] = Rule(frozenset(names[0]), frozenset(names[1]))
        tables.append(rows)
    assert len(tables) == 3, "docs/design.md should hold the three import tables"
    return tables


TOP_RULES, GATEWAY_RULES, HTTP_RULES = _tables()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (absolute)
    types_only: bool
    where: str


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                targets = [".".join([*base, node.module] if node.module else base)]
            else:
                targets = [node.module or ""]
        else:
            continue
        for target in targets:
            yield Import(module, target, id(node) in typing_only, f"{path.relative_to(ROOT)}:{node.lineno}")


def _all_imports() -> list[Import]:
    return [imp for top in TOP for path in sorted((ROOT / top).rglob("*.py")) for imp in _imports(path)]


IMPORTS = _all_imports()


def _gateway_node(module: str) -> str:
    """The gateway/ row a module belongs to: its subpackage, or the top-level module itself."""
    return ".".join(module.split(".")[:2])


def _check(rules: dict[str, Rule], edges: list[tuple[str, str, Import]]) -> list[str]:
    wrong = []
    for source, target, imp in edges:
        rule = rules[source]
        allowed = rule.may | rule.types if imp.types_only else rule.may
        if target not in allowed and ANYTHING not in allowed:
            kind = "types-only import" if imp.types_only else "import"
            wrong.append(f"{imp.where}: {kind} of {imp.target} ({source} -> {target}), not in docs/design.md")
    return wrong


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_package_and_module_has_a_row() -> None:
    assert set(TOP_RULES) == set(TOP)
    on_disk = {_gateway_node(_module_name(p)) for p in (ROOT / "gateway").rglob("*.py")} - {"gateway"}
    assert on_disk == set(GATEWAY_RULES), "a gateway/ package or module without a row in docs/design.md"
    http = {p.stem for p in (ROOT / "gateway" / "http").glob("_*.py")} - {"__init__"}
    assert http == set(HTTP_RULES)


def test_the_top_level_imports_only_what_design_md_allows() -> None:
    edges = [
        (imp.source.split(".")[0], imp.target.split(".")[0], imp)
        for imp in IMPORTS
        if imp.target.split(".")[0] in TOP and imp.target.split(".")[0] != imp.source.split(".")[0]
    ]
    assert len(edges) > 50  # the scan sees the imports
    wrong = _check(TOP_RULES, edges)
    assert not wrong, "\n".join(wrong)


def test_gateway_packages_import_only_what_design_md_allows() -> None:
    edges = []
    for imp in IMPORTS:
        if not imp.source.startswith("gateway.") or imp.source == "gateway":
            continue
        source, top = _gateway_node(imp.source), imp.target.split(".")[0]
        if top == "gateway":
            target = _gateway_node(imp.target)
            if target != source and target != "gateway":
                edges.append((source, target, imp))
        elif top in TOP:
            edges.append((source, top, imp))
    assert len(edges) > 50
    wrong = _check(GATEWAY_RULES, edges)
    assert not wrong, "\n".join(wrong)


def test_the_engine_modules_import_only_what_design_md_allows() -> None:
    edges = []
    for imp in IMPORTS:
        if imp.source.startswith("gateway.http._") and imp.target.startswith("gateway.http._"):
            edges.append((imp.source.split(".")[-1], imp.target.split(".")[-1], imp))
    assert len(edges) > 10
    wrong = _check(HTTP_RULES, edges)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("rules", [TOP_RULES, GATEWAY_RULES], ids=["top", "gateway"])
def test_the_declared_package_graph_has_no_cycle_even_through_annotations(rules: dict[str, Rule]) -> None:
    graph = {name: set(rule.may | rule.types) & set(rules) for name, rule in rules.items() if name != "tests"}
    assert _cycle(graph) is None, f"cycle: {' -> '.join(_cycle(graph) or ())}"


def test_the_engine_modules_have_no_runtime_cycle() -> None:
    graph = {name: set(rule.may) for name, rule in HTTP_RULES.items()}
    assert _cycle(graph) is None, f"cycle: {' -> '.join(_cycle(graph) or ())}"


def test_a_new_cycle_is_caught() -> None:
    graph = {name: set(rule.may) & set(GATEWAY_RULES) for name, rule in GATEWAY_RULES.items()}
    graph["gateway.http"].add("gateway.dataplane")  # the engine reaching up into the data plane
    cycle = _cycle(graph)
    assert cycle is not None and set(cycle) == {"gateway.dataplane", "gateway.http"}
    imp = Import("gateway.http._server", "gateway.dataplane.plane", False, "x.py:1")
    assert _check(GATEWAY_RULES, [("gateway.http", "gateway.dataplane", imp)])

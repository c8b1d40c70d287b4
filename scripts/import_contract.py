#!/usr/bin/env python3
"""The import contract of agent/: layers import only downwards, and a few modules keep to themselves.

Reads every `import` with `ast` (those under `if TYPE_CHECKING:` and inside functions included: a type-level
arrow is an arrow), so it needs nothing installed. `make lint` runs it; exit status 1 with one line per broken
rule. The layers are documented in docs/decisions.md ("Import layers"); change both together.

    scripts/import_contract.py [ROOT]     ROOT: the directory that holds agent/ (default: this checkout)
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Lowest first. A module may import its own layer and those below it; the groups of one layer (tuples) are
# siblings and may not import each other. A prefix names a module and everything under it.
LAYERS: list[tuple[str, list[tuple[str, ...]]]] = [
    ("base", [("agent.__init__", "agent.durations", "agent.files", "agent.health.credentials", "agent.logs",
               "agent.protocols", "agent.stop_kind", "agent.interpreter")]),
    ("config", [("agent.config",)]),
    ("discovery", [("agent.discovery", "agent.state")]),
    ("health | cluster", [("agent.health",), ("agent.cluster",)]),
    ("lease", [("agent.lease",)]),
    ("sync", [("agent.sync",)]),
    ("api", [("agent.api",)]),
    ("daemon", [("agent.daemon",)]),
    ("cli | plugin", [("agent.cli", "agent.__main__"), ("agent.plugin",)]),
]

# Third-party packages a module may import only where named here (prefix of the importing module).
ONLY_IN = {"kubernetes_asyncio": ("agent.cluster.kube",)}
# What the config layer may import: the standard library and the base layer (never the checks: pymysql, aiohttp).
STDLIB_ONLY = ("agent.config",)
# Said explicitly, with its own message, though the layers already forbid it.
FORBIDDEN = [("agent.api", "agent.daemon", "the API sees the agent through agent.api.agent_view.AgentView only")]


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports (a module, or a package's name)
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1 and parts[:-1] != ["agent"]:
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> Iterator[Import]:
    for path in sorted((root / "agent").rglob("*.py")):
        module = module_name(root, path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        if module == "agent.__init__":
            package = "agent"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    known = (root / Path(*sub.split("."))).with_suffix(".py").exists() or \
                        (root / Path(*sub.split(".")) / "__init__.py").exists()
                    yield Import(module, sub if known else base, node.lineno)


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def place(module: str) -> tuple[int, int] | None:
    """(layer, group) of a module of agent/, the longest prefix winning."""
    if module == "agent":
        module = "agent.__init__"
    best: tuple[int, int, int] | None = None
    for layer, (_name, groups) in enumerate(LAYERS):
        for group, prefixes in enumerate(groups):
            for prefix in prefixes:
                if _matches(module, prefix) and (best is None or len(prefix) > best[2]):
                    best = (layer, group, len(prefix))
    return None if best is None else best[:2]


def check(root: Path) -> list[str]:
    problems: list[str] = []
    stdlib = sys.stdlib_module_names
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "agent").rglob("*.py")):
        if place(module_name(root, path)) is None:
            problems.append(f"{module_name(root, path)} is in no layer: add it to LAYERS in scripts/import_contract.py")
    for imp in imports(root):
        where = f"{imp.module} (line {imp.line}) imports {imp.target}"
        top = imp.target.split(".")[0]
        for package, allowed in ONLY_IN.items():
            if top == package and not any(_matches(imp.module, a) for a in allowed):
                problems.append(f"{where}: only {', '.join(allowed)} may import {package}")
        for source, target, why in FORBIDDEN:
            if _matches(imp.module, source) and _matches(imp.target, target):
                problems.append(f"{where}: {why}")
        if top != "agent":
            if any(_matches(imp.module, m) for m in STDLIB_ONLY) and top not in stdlib and top != "__future__":
                problems.append(f"{where}: {imp.module} may import only the standard library and the base layer")
            continue
        source, target = place(imp.module), place(imp.target)
        if source is None:
            continue
        if target is None:
            problems.append(f"{where}: {imp.target} is in no layer")
            continue
        graph.setdefault(imp.module, set()).add(imp.target)
        if any(_matches(imp.module, m) for m in STDLIB_ONLY) and target[0] > 0:
            problems.append(f"{where}: {imp.module} may import only the standard library and the base layer")
        elif target[0] > source[0]:
            problems.append(f"{where}: layer {LAYERS[source[0]][0]!r} may not import the higher layer "
                            f"{LAYERS[target[0]][0]!r}")
        elif target[0] == source[0] and target[1] != source[1]:
            problems.append(f"{where}: siblings in layer {LAYERS[source[0]][0]!r} may not import each other")
    problems.extend(f"import cycle among {', '.join(cycle)}" for cycle in _cycles(graph))
    return list(dict.fromkeys(problems))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of modules (Tarjan): each one, sorted, is a cycle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"import contract: {len(problems)} problem(s); the layers are in docs/decisions.md", file=sys.stderr)
        return 1
    print("import contract: kept")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The layering of docs/architecture.md holds: who may import whom, and no cycles."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mycelium", "registry", "node", "viz", "sim")
NODE_ROLES = ("learning", "federation", "p2p", "runtime", "cli", "gossip")
SHARED_REGISTRY = ("schemas", "server", "settings", "wire")

# Units a unit may import (besides itself). Mirrors the table in docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "registry": {"registry.schemas", "registry.settings", "registry.wire"},
    "registry.schemas": set(),
    "registry.settings": set(),
    "registry.wire": set(),
    "registry.server": {"registry", "registry.settings"},
    # The registry's shared contract: request/response models and the snapshot format.
    "node": {"registry.schemas", "registry.wire"},
    "node.learning": {"node", "registry.wire"},
    "node.federation": {"node", "node.learning"},
    "node.p2p": {"node", "node.learning"},
    "node.runtime": {"node", "node.learning", "node.federation"},
    "node.cli": {"node", "node.learning", "node.federation", "node.p2p", "node.runtime"},
    # The gossip API's one import (QuinkGL's shape) over p2p's member and learning's wrappers.
    "node.gossip": {"node", "node.learning", "node.p2p"},
    "viz": {"node", "registry.schemas"},
    "sim": {
        "node",
        "node.learning",
        "node.federation",
        "node.p2p",
        "registry.server",
        "registry.settings",
    },
}
# Entry points (``python -m``) may start any command of their package.
ENTRY_POINTS = {"__main__"}


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "node" and len(parts) > 1 and parts[1] in NODE_ROLES:
        return ".".join(parts[:2])
    if parts[0] == "registry" and len(parts) > 1 and parts[1] in SHARED_REGISTRY:
        return ".".join(parts[:2])
    return parts[0]


def _imports() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files that import it."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "migrations" in rel.parts or path.stem in ENTRY_POINTS:
                continue
            source = _unit(".".join(rel.with_suffix("").parts))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in PACKAGES and _unit(name) != source:
                        edges[source][_unit(name)].add(str(rel))
    return edges


def test_every_import_follows_the_layering() -> None:
    # Execute
    edges = _imports()

    # Assert: mycelium (the composition) may import anything; others only what is allowed
    broken = [
        f"{src} imports {dst} ({', '.join(sorted(files))})"
        for src, targets in edges.items()
        if src != "mycelium"
        for dst, files in targets.items()
        if dst not in ALLOWED.get(src, set())
    ]
    assert not broken, "\n".join(broken)


def test_no_unit_imports_another_in_a_circle() -> None:
    # Prepare
    graph = {src: set(targets) for src, targets in _imports().items()}

    # Execute: depth-first search for a back edge
    cycles: list[list[str]] = []

    def visit(unit: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(unit, ())):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif len(path) < len(graph) + 1:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])

    # Assert
    assert not cycles, cycles

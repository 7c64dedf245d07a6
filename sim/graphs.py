"""Small graphs for pre-configured networks, pure and seeded: ring, star, grid, random
geometric, small world (Watts-Strogatz).

Each function takes the node ids (any order; they are sorted) and returns the
undirected edges as sorted ``(a, b)`` pairs with ``a < b``, sorted. Random ones draw
from the ``numpy`` Generator they are given, so one seed gives one graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["GRAPHS", "grid", "random_geometric", "ring", "small_world", "star"]

Edge = tuple[int, int]


def _edges(pairs: Iterable[tuple[int, int]]) -> list[Edge]:
    return sorted({(min(a, b), max(a, b)) for a, b in pairs if a != b})


def ring(nodes: Iterable[int]) -> list[Edge]:
    """Each node linked to the next, the last to the first (no edge below two nodes)."""
    ids = sorted(nodes)
    return _edges((ids[i], ids[(i + 1) % len(ids)]) for i in range(len(ids)))


def star(nodes: Iterable[int]) -> list[Edge]:
    """The lowest id is the hub, linked to every other node."""
    ids = sorted(nodes)
    return _edges((ids[0], other) for other in ids[1:])


def grid(nodes: Iterable[int]) -> list[Edge]:
    """Nodes row by row on a ``ceil(sqrt(n))``-wide grid, each linked to its right and
    lower neighbour (the last row may be short)."""
    ids = sorted(nodes)
    width = max(1, math.ceil(math.sqrt(len(ids))))
    pairs = []
    for i, node in enumerate(ids):
        if (i + 1) % width and i + 1 < len(ids):
            pairs.append((node, ids[i + 1]))
        if i + width < len(ids):
            pairs.append((node, ids[i + width]))
    return _edges(pairs)


def random_geometric(nodes: Iterable[int], radius: float, rng: np.random.Generator) -> list[Edge]:
    """Nodes at uniform random points of the unit square, linked when at most ``radius`` apart.

    Raises ValueError unless ``0 < radius <= sqrt(2)``.
    """
    if not 0 < radius <= math.sqrt(2):
        raise ValueError(f"radius must be in (0, 1.414], got {radius}")
    ids = sorted(nodes)
    points = rng.random((len(ids), 2))
    pairs = [
        (ids[i], ids[j])
        for i in range(len(ids))
        for j in range(i + 1, len(ids))
        if float(np.hypot(*(points[i] - points[j]))) <= radius
    ]
    return _edges(pairs)


def small_world(nodes: Iterable[int], k: int, p: float, rng: np.random.Generator) -> list[Edge]:
    """Watts-Strogatz: a ring where each node links to its ``k`` nearest (``k // 2`` each
    side), then each edge's far end is rewired with probability ``p`` to a random node it
    is not linked to yet.

    Raises ValueError unless ``k`` is even and at least 2, and ``0 <= p <= 1``.
    """
    if k < 2 or k % 2:
        raise ValueError(f"k must be even and at least 2, got {k}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be between 0 and 1, got {p}")
    ids = sorted(nodes)
    n = len(ids)
    lattice = [(i, (i + j) % n) for j in range(1, k // 2 + 1) for i in range(n)]
    edges = {(min(a, b), max(a, b)) for a, b in lattice if a != b}
    for a, b in lattice:
        # Every draw happens whatever its outcome, so one edge does not shift the others.
        rewire = float(rng.random()) < p
        target = int(rng.integers(n)) if n else 0
        key = (min(a, b), max(a, b))
        if not rewire or key not in edges:
            continue
        new = (min(a, target), max(a, target))
        if target == a or new in edges:
            continue
        edges.discard(key)
        edges.add(new)
    return _edges((ids[a], ids[b]) for a, b in edges)


GRAPHS = ("ring", "star", "grid", "geometric", "smallworld")
"""The names `topology` accepts for these graphs."""

"""How well a network's groups match the hidden clusters: group purity and sibling ARI, pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

from sklearn.metrics import adjusted_rand_score

__all__ = ["group_labels", "group_purity", "sibling_ari", "sibling_clusters"]


def group_labels(groups: Sequence[Hashable | None]) -> list[Hashable]:
    """Each node's group, an ungrouped node (``None``) standing in a singleton group of its own."""
    return [g if g is not None else ("ungrouped", i) for i, g in enumerate(groups)]


def group_purity(clusters: Sequence[int], groups: Sequence[Hashable | None]) -> float:
    """The share of nodes whose group's majority cluster is their own, in [0, 1].

    ``clusters[i]`` is node ``i``'s true hidden cluster, ``groups[i]`` its group id or
    ``None`` when ungrouped (a singleton group, hence pure). This is cluster purity
    (Manning, Raghavan & Schütze, *Introduction to Information Retrieval*, 16.3):
    ``sum over groups of the largest cluster count / nodes``, so a tie counts one
    cluster only. Unlike ARI it does not punish a cluster split over several pure
    groups, which a capacity limit forces. Raises ``ValueError`` when the lengths
    differ or there are no nodes.
    """
    if len(clusters) != len(groups):
        raise ValueError(f"{len(clusters)} clusters but {len(groups)} groups")
    if not clusters:
        raise ValueError("purity of an empty network is undefined")
    counts: dict[Hashable, Counter[int]] = {}
    for cluster, label in zip(clusters, group_labels(groups), strict=True):
        counts.setdefault(label, Counter())[cluster] += 1
    return sum(max(c.values()) for c in counts.values()) / len(clusters)


def sibling_clusters(
    groups: Iterable[Hashable], links: Iterable[tuple[Hashable, Hashable]]
) -> dict[Hashable, int]:
    """Connected components of the group-to-group sibling-link graph.

    ``groups``: every group id; ``links``: ``(group_a, group_b)`` pairs, undirected
    (a link to a group not in ``groups`` adds that group). Returns ``{group: component}``
    with components numbered 0, 1, ... in order of each one's smallest-listed group.
    """
    parent: dict[Hashable, Hashable] = {}

    def find(g: Hashable) -> Hashable:
        parent.setdefault(g, g)
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    order: list[Hashable] = []
    for g in groups:
        if g not in parent:
            order.append(g)
        find(g)
    for a, b in links:
        for g in (a, b):
            if g not in parent:
                order.append(g)
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    numbers: dict[Hashable, int] = {}
    out: dict[Hashable, int] = {}
    for g in order:
        out[g] = numbers.setdefault(find(g), len(numbers))
    return out


def sibling_ari(
    clusters: Sequence[int],
    groups: Sequence[Hashable | None],
    links: Iterable[tuple[Hashable, Hashable]],
) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985; ``sklearn.metrics.adjusted_rand_score``)
    between the true clusters and each node's sibling cluster.

    A node's sibling cluster is the connected component of its group in the sibling-link
    graph (``sibling_clusters``); an ungrouped node is a component of its own. 1.0 when
    the linked groups reproduce the hidden clusters exactly, about 0 for chance.
    Raises ``ValueError`` when the lengths differ.
    """
    if len(clusters) != len(groups):
        raise ValueError(f"{len(clusters)} clusters but {len(groups)} groups")
    labels = group_labels(groups)
    components = sibling_clusters(labels, links)
    return float(adjusted_rand_score(list(clusters), [components[g] for g in labels]))

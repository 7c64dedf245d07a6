"""The scenario graphs and the topology's wiring, partition and heal, pure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim import graphs
from sim.network import Topology


def _degrees(edges: list[tuple[int, int]], nodes: list[int]) -> list[int]:
    return sorted(sum(n in e for e in edges) for n in nodes)


def test_ring_star_and_grid_have_their_shapes() -> None:
    nodes = list(range(10, 19))  # nine nodes, ids need not start at 0

    ring, star, grid = graphs.ring(nodes), graphs.star(nodes), graphs.grid(nodes)

    assert _degrees(ring, nodes) == [2] * 9 and (10, 18) in ring
    assert _degrees(star, nodes) == [1] * 8 + [8] and all(10 in e for e in star)
    # 3x3: corners 2, edges 3, centre 4; 12 links
    assert _degrees(grid, nodes) == [2] * 4 + [3] * 4 + [4] and len(grid) == 12


def test_random_geometric_is_seeded_and_follows_the_radius() -> None:
    nodes = list(range(20))

    first = graphs.random_geometric(nodes, 0.4, np.random.default_rng(7))
    again = graphs.random_geometric(nodes, 0.4, np.random.default_rng(7))
    other = graphs.random_geometric(nodes, 0.4, np.random.default_rng(8))
    everyone = graphs.random_geometric(nodes, math.sqrt(2), np.random.default_rng(7))
    fewer = graphs.random_geometric(nodes, 0.2, np.random.default_rng(7))

    assert first == again and first != other
    assert len(everyone) == 20 * 19 // 2
    assert set(fewer) < set(first)  # same points, a smaller radius keeps a subset
    with pytest.raises(ValueError, match="radius"):
        graphs.random_geometric(nodes, 0.0, np.random.default_rng(0))


def test_small_world_keeps_its_links_and_rewires_with_p() -> None:
    nodes = list(range(12))

    lattice = graphs.small_world(nodes, 4, 0.0, np.random.default_rng(1))
    rewired = graphs.small_world(nodes, 4, 0.5, np.random.default_rng(1))

    assert _degrees(lattice, nodes) == [4] * 12  # p = 0: the ring lattice itself
    assert len(rewired) == len(lattice) == 24  # rewiring moves links, never adds
    assert set(rewired) != set(lattice)
    with pytest.raises(ValueError, match="even"):
        graphs.small_world(nodes, 3, 0.1, np.random.default_rng(1))


def test_wiring_replaces_areas_and_a_cut_holds_until_healed() -> None:
    # Prepare: six nodes in one area, everyone linked
    topo = Topology(1)
    for n in range(6):
        topo.add_node(n, 0)

    # Execute / Assert: a ring replaces the area's links
    topo.wire(graphs.ring(range(6)))
    assert topo.neighbours(0) == [1, 5]
    assert topo.reachable(0) == [1, 2, 3, 4, 5]

    # a partition: nobody crosses, whatever the links say
    topo.link(0, 3)
    assert topo.cut([[0, 1, 2], [3, 4, 5]]) == 9
    assert topo.neighbours(0) == [1] and not topo.linked(0, 3)
    assert topo.reachable(0) == [1, 2]

    # saved and loaded, the cut and the wiring stay
    loaded = Topology.from_dict(topo.to_dict())
    assert loaded.neighbours(0) == [1] and loaded.wired

    assert topo.heal() == 9
    assert topo.neighbours(0) == [1, 3, 5]

    # areas again: contiguous, linked inside, links forgotten
    topo.use_areas(2)
    assert topo.members(0) == [0, 1, 2] and topo.neighbours(0) == [1, 2]

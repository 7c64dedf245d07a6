"""The network model alone: delivery steps from latency, jitter and bandwidth; loss; topology."""

from __future__ import annotations

import numpy as np
import pytest

from sim.network import (
    Conditions,
    ConditionsOverride,
    Network,
    Topology,
    delivery_step,
    transfer_ms,
)


def _network(nodes: int = 4, areas: int = 1, **kwargs: object) -> Network[str]:
    topo = Topology(areas)
    for i in range(nodes):
        topo.add_node(i, i * areas // nodes)
    return Network(topo, **kwargs)  # type: ignore[arg-type]


def _run_until_delivered(net: Network[str], limit: int = 50) -> int:
    for _ in range(limit):
        due = net.advance()
        for m in due:
            net.delivered(m)
        if due:
            return net.step
    raise AssertionError("nothing was delivered")


@pytest.mark.parametrize(
    ("latency_ms", "steps"), [(0, 1), (50, 1), (100, 1), (101, 2), (250, 3), (1000, 10)]
)
def test_latency_delays_delivery_by_whole_steps(latency_ms: float, steps: int) -> None:
    # Prepare
    net = _network(step_ms=100.0)
    net.conditions = Conditions(latency_ms=latency_ms)
    net.advance()  # send from step 1, not 0

    # Execute
    net.send(0, 1, 1000, "model", "share")
    delivered_at = _run_until_delivered(net)

    # Assert
    assert delivered_at - 1 == steps


def test_bandwidth_adds_the_transfer_time_of_the_real_size() -> None:
    # Prepare: 25,000 bytes at 1,000 kbit/s take 200 ms
    net = _network(step_ms=100.0)
    net.set_link_conditions(0, 1, ConditionsOverride(bandwidth_kbps=1000))

    # Execute
    slow = net.send(0, 1, 25_000, "big", "share")
    fast = net.send(0, 2, 25_000, "big", "share")

    # Assert
    assert transfer_ms(25_000, 1000) == 200.0
    assert slow is not None and slow.deliver_step == 2
    assert fast is not None and fast.deliver_step == 1


def test_loss_of_one_drops_every_message_and_counts_it() -> None:
    # Prepare
    net = _network()
    net.conditions = Conditions(loss=1.0)

    # Execute
    for dst in (1, 2, 3):
        net.send(0, dst, 500, "m", "share")
    for _ in range(5):
        assert net.advance() == []

    # Assert
    assert net.counters.as_dict() == {
        "sent": 3,
        "dropped": 3,
        "delivered": 0,
        "bytes_sent": 1500,
        "bytes_delivered": 0,
    }


def test_jitter_and_loss_are_the_same_for_the_same_seed() -> None:
    # Prepare
    def run(seed: int) -> list[tuple[int, int, float]]:
        net = _network(seed=seed)
        net.conditions = Conditions(latency_ms=100, jitter_ms=300, loss=0.3)
        for i in range(40):
            net.send(i % 4, (i + 1) % 4, 100, "m", "share")
        return [(m.seq, m.deliver_step, m.due_ms) for m in net.queued()]

    # Execute / Assert
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_link_and_unlink_override_the_neighbourhoods() -> None:
    # Prepare: nodes 0,1 in area 0 and 2,3 in area 1
    topo = _network(nodes=4, areas=2).topology

    # Execute
    topo.link(1, 2)
    topo.unlink(0, 1)

    # Assert
    assert topo.neighbours(0) == []
    assert topo.neighbours(1) == [2]
    assert topo.neighbours(2) == [1, 3]
    assert topo.reachable(1) == [2, 3]


def test_mobility_moves_nodes_to_other_areas_deterministically() -> None:
    # Prepare
    def moves(seed: int) -> list[tuple[int, int, int]]:
        topo = _network(nodes=12, areas=3).topology
        return topo.mobility_moves(np.random.default_rng(seed), 0.25)

    # Execute
    first = moves(1)

    # Assert
    assert first == moves(1)
    assert len(first) == 3
    assert all(old != new for _, old, new in first)


def test_delivery_is_never_in_the_step_a_message_was_sent() -> None:
    # Execute / Assert
    assert delivery_step(5, 500.0, 100.0) == 6
    assert delivery_step(5, 300.0000000001, 100.0) == 6
    assert delivery_step(5, 700.5, 100.0) == 8

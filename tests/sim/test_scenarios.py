"""Shipped scenarios: each runs on digits and leaves its network; a partition holds and
heals; a lossy bridge loses only what crosses it; `--scenario` from the command line."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from sim.commands import complete
from sim.commands.scenarios import scenario_names
from sim.network import Message, pair
from sim.repl import _drain
from sim.state import Payload, SimConfig
from tests.sim.helpers import Transcript, run_sims

NODES = 6
SCENARIOS = (
    "grid",
    "lossy-bridge",
    "partition-heal",
    "random-geometric",
    "ring",
    "small-world",
    "star",
)


def _run(name: str) -> tuple[Transcript, list[str]]:
    """Scenario ``name`` on six digits nodes (40 examples each), no registry."""
    t = Transcript(SimConfig(nodes=NODES, samples_per_node=40))
    t.session.execute(f"scenario {name}")
    _drain(t.session)
    return t, t.lines


def _degrees(t: Transcript) -> list[int]:
    topo = t.session.sim.network.topology
    return sorted(len(topo.neighbours(i)) for i in t.session.sim.alive)


SHAPES: dict[str, Callable[[Transcript], bool]] = {
    "ring": lambda t: _degrees(t) == [2] * NODES,
    "star": lambda t: _degrees(t) == [1] * (NODES - 1) + [NODES - 1],
    "grid": lambda t: _degrees(t) == [2, 2, 2, 2, 3, 3],  # 3 wide, 2 rows
    "random-geometric": lambda t: t.session.sim.network.topology.wired,
    "small-world": lambda t: sum(_degrees(t)) == NODES * 4,  # k = 4: rewiring keeps links
    "lossy-bridge": lambda t: _degrees(t) == [2, 2, 2, 2, 3, 3],  # two areas of 3 + bridge
    "partition-heal": lambda t: _degrees(t) == [NODES - 1] * NODES,  # healed: one area
}


def test_the_shipped_scenarios_are_listed_with_a_line_each() -> None:
    # Execute
    t = Transcript(SimConfig(nodes=2, samples_per_node=40))
    listing = t.run("scenario")
    unknown = t.run("scenario nowhere")

    # Assert
    assert tuple(scenario_names()) == SCENARIOS
    assert [line.split()[0] for line in listing] == list(SCENARIOS)
    assert all(len(line.split()) > 3 for line in listing)  # a description follows
    assert unknown[0] == f"error: no scenario 'nowhere'; known: {', '.join(SCENARIOS)}"
    assert complete(t.session, "scenario ", "") == [f"{n} " for n in SCENARIOS]
    assert complete(t.session, "scenario sm", "sm") == ["small-world "]
    assert complete(t.session, "topology pa", "pa") == ["partition "]


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_scenario_trains_on_its_network(name: str) -> None:
    # Execute
    t, lines = _run(name)

    # Assert: no line failed, models moved and were tested, the network has its shape
    assert t.session.errors == 0, "\n".join(lines)
    steps = [line for line in lines if re.match(r"steps \d+-\d+", line)]
    assert steps and all("autonet trained" in line for line in steps)
    assert any(line.startswith("mean accuracy") for line in lines)
    assert t.session.sim.network.counters.delivered > 0
    assert SHAPES[name](t), "\n".join(lines)


def test_a_partition_stops_every_crossing_until_it_heals() -> None:
    # Prepare: record each delivery (step, from, to)
    t = Transcript(SimConfig(nodes=NODES, samples_per_node=40))
    net = t.session.sim.network
    deliveries: list[tuple[int, int, int]] = []
    count = net.delivered

    def record(message: Message[Payload]) -> None:
        deliveries.append((net.step, message.src, message.dst))
        count(message)

    net.delivered = record  # type: ignore[method-assign]

    # Execute
    t.session.execute("scenario partition-heal")
    _drain(t.session)

    # Assert: the sides as printed; crossings before, none during, some after
    lines = t.lines
    assert t.session.errors == 0, "\n".join(lines)
    assert "partition: n000-n002 | n003-n005" in lines
    side = {n: n // 3 for n in range(NODES)}
    during = next(line for line in lines if line.startswith("steps 3-5"))
    assert int(re.search(r"dropped (\d+)", during).group(1)) > 0  # type: ignore[union-attr]

    def crossings(first: int, last: int) -> int:
        return sum(1 for s, a, b in deliveries if first <= s <= last and side[a] != side[b])

    assert crossings(1, 2) > 0
    assert crossings(3, 5) == 0
    assert crossings(6, 8) > 0


def test_the_lossy_bridge_loses_messages_on_the_bridge_only() -> None:
    # Prepare
    t, lines = _run("lossy-bridge")
    net = t.session.sim.network
    bridge = re.search(r"bridge n(\d+) - n(\d+)", "\n".join(lines))
    assert bridge, lines
    bridge_pair = pair(int(bridge.group(1)), int(bridge.group(2)))
    links = {pair(a, b) for a in t.session.sim.alive for b in net.topology.neighbours(a)}

    # Execute: 200 messages over every link
    lost: dict[tuple[int, int], int] = {}
    for a, b in sorted(links):
        lost[(a, b)] = sum(net.send(a, b, 10, None, "probe") is None for _ in range(200))  # type: ignore[arg-type]

    # Assert: the bridge loses some, not all (loss 0.5); no other link loses any
    assert 0 < lost.pop(bridge_pair) < 200
    assert set(lost.values()) == {0}


def test_scenario_from_the_command_line() -> None:
    # Execute
    ring, unknown = run_sims(
        ("--no-registry", "--nodes", "4", "--samples-per-node", "40", "--scenario", "ring"),
        ("--no-registry", "--scenario", "moebius"),
    )

    # Assert
    assert ring.returncode == 0, ring.stdout + ring.stderr
    assert "ring: 4 nodes, 4 links, degree 2-2" in ring.stdout
    assert "sim> stats" in ring.stdout
    assert unknown.returncode == 2
    assert f"error: no scenario 'moebius'; known: {', '.join(SCENARIOS)}" in unknown.stderr
    assert "Traceback" not in ring.stderr + unknown.stderr

"""The simulation: node Learners on partitioned data, groups, and the simulated network.

Learning is the nodes' own code: ``Learner.train``/``evaluate``,
``node.learning.merge.weighted_mean`` to aggregate what a node received,
``node.federation.round.run_group_round`` for a group round (over Flower, in memory),
and ``node.p2p.codecs`` for the real serialized size of every model sent. Nothing here
prints; every operation returns plain data for the command layer to show. An optional
``Mirror`` (the registry) hears about nodes and groups.

A node is in at most one group, as in the registry: adding it to another moves it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from node.learning.data import DATASET_NAMES, Dataset, load_dataset
from node.learning.learner import Learner
from node.learning.merge import weighted_mean
from node.learning.models import build_model
from node.learning.partition import (
    CLUSTER_MODES,
    MIN_SAMPLES_PER_NODE,
    SCHEMES,
    NodeData,
    PartitionSpec,
)
from node.p2p.codecs import Codec, DenseCodec, QuantizeCodec
from sim import graphs
from sim.network import ConditionsOverride, Message, Network, Topology
from sim.scope import GROUP_NAME_PATTERN, node_name

if TYPE_CHECKING:
    from node.federation.round import GroupRegistry, PerformanceReporter

__all__ = [
    "CODECS",
    "GroupLink",
    "GroupRound",
    "Mirror",
    "NeighbourRow",
    "Payload",
    "SimConfig",
    "SimNode",
    "Simulation",
    "StatsRow",
    "StepReport",
    "TestRow",
]

log = logging.getLogger(__name__)

DENSE = "dense"
Q8 = "q8"
Q4 = "q4"
CODECS: dict[str, Codec] = {
    DENSE: DenseCodec(),
    Q8: QuantizeCodec(bits=8),
    Q4: QuantizeCodec(bits=4),
}

# Message kinds.
SHARE = "share"
EXCHANGE = "exchange"
FLOOD = "flood"
GROUP = "group"

DEFAULT_AREA_SIZE = 8


@dataclass(frozen=True)
class SimConfig:
    """What a simulation is built from; the same config and seed build the same nodes."""

    nodes: int = 4
    dataset: str = "digits"
    partition: str = "iid"
    clusters: int = 2
    cluster_mode: str = "rotation"
    alpha: float = 0.5
    samples_per_node: int | None = None
    seed: int = 0
    areas: int | None = None
    step_ms: float = 100.0
    codec: str = DENSE
    learning_rate: float = 0.05
    batch_size: int = 32
    local_epochs: int = 1
    strategy: str = "fedavg"

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"need at least one node, got {self.nodes}")
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"unknown data set {self.dataset!r}; choose {DATASET_NAMES}")
        if self.partition not in SCHEMES:
            raise ValueError(f"unknown partition {self.partition!r}; choose {SCHEMES}")
        if self.cluster_mode not in CLUSTER_MODES:
            raise ValueError(f"unknown cluster mode {self.cluster_mode!r}")
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose {', '.join(CODECS)}")
        if self.areas is not None and self.areas < 1:
            raise ValueError("areas must be at least 1")
        if self.step_ms <= 0 or self.local_epochs < 0:
            raise ValueError("step_ms must be positive and local_epochs non-negative")

    @property
    def area_count(self) -> int:
        """Neighbourhoods: as given, else one per ``DEFAULT_AREA_SIZE`` nodes."""
        return self.areas or max(1, math.ceil(self.nodes / DEFAULT_AREA_SIZE))


@dataclass(frozen=True)
class Payload:
    """A model on the wire: weights as received, example count, who made it."""

    weights: list[np.ndarray]
    num_examples: int
    origin: int
    flood: int | None = None


@dataclass
class SimNode:
    """One node: its learner, its group, what it received, the floods it has seen."""

    index: int
    learner: Learner
    group: str | None = None
    inbox: dict[int, Payload] = field(default_factory=dict)
    seen_floods: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        """Printed id."""
        return node_name(self.index)


class Mirror(Protocol):
    """Whoever else should know about nodes and groups (the registry)."""

    def add_node(self, node: int) -> None:
        """A node joined the simulation."""

    def remove_node(self, node: int) -> None:
        """A node left the simulation."""

    def create_group(self, name: str) -> None:
        """A group was created."""

    def join(self, node: int, group: str) -> None:
        """A node moved into a group."""

    def leave(self, node: int) -> None:
        """A node left its group."""

    def group_link(self, group: str, members: Sequence[int]) -> GroupLink | None:
        """The registry's side of a group round (None: the group is not mirrored)."""


@dataclass(frozen=True)
class GroupLink:
    """Where a group round's registry calls go: the group's id at the registry, the
    host's calls (upload, contributions) and each member's performance reports."""

    group_id: int
    host: GroupRegistry
    reporters: dict[int, PerformanceReporter]


@dataclass(frozen=True)
class TestRow:
    """One node's model on its test split."""

    node: int
    group: str | None
    loss: float
    accuracy: float
    examples: int


@dataclass(frozen=True)
class StatsRow:
    """The network at one moment."""

    step: int
    time_ms: float
    nodes: int
    groups: int
    sent: int
    dropped: int
    delivered: int
    in_flight: int
    bytes_sent: int
    mean_accuracy: float
    worst_accuracy: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


@dataclass(frozen=True)
class NeighbourRow:
    """Who one node reaches."""

    node: int
    area: int
    neighbours: list[int]
    reachable: int


@dataclass
class StepReport:
    """What one step did."""

    step: int
    delivered: int = 0
    dropped: int = 0
    left: list[int] = field(default_factory=list)
    joined: list[int] = field(default_factory=list)
    moves: list[tuple[int, int, int]] = field(default_factory=list)
    trained: int = 0
    sent: int = 0


@dataclass(frozen=True)
class GroupRound:
    """One Flower round in a group."""

    group: str
    members: list[int]
    round: int
    val_accuracy: float
    train_loss: float


@dataclass
class Schedules:
    """Automatic behaviour of ``step``: autonet, churn, mobility."""

    autonet: bool = False
    churn_rate: float = 0.0
    mobility_every: int = 0
    mobility_fraction: float = 0.1


class Simulation:
    """An in-process decentralized network, advanced one command at a time."""

    def __init__(self, config: SimConfig, mirror: Mirror | None = None, *, populate: bool = True):
        self.config = config
        self.mirror = mirror
        self.dataset: Dataset = load_dataset(config.dataset)
        if config.samples_per_node is None and (
            len(self.dataset) < config.nodes * MIN_SAMPLES_PER_NODE
        ):
            raise ValueError(
                f"{config.dataset} has {len(self.dataset)} examples: too few for "
                f"{config.nodes} disjoint nodes of {MIN_SAMPLES_PER_NODE}; set samples per "
                "node (--samples-per-node) and nodes' samples overlap"
            )
        self.base: list[NodeData] = PartitionSpec(
            dataset=config.dataset,
            scheme=config.partition,
            num_partitions=config.nodes,
            clusters=config.clusters,
            cluster_mode=config.cluster_mode,
            alpha=config.alpha,
            samples_per_node=config.samples_per_node,
            seed=config.seed,
        ).split(self.dataset)
        self._template = build_model(config.dataset, seed=config.seed)
        self.codec = CODECS[config.codec]
        self.nodes: dict[int, SimNode] = {}
        self.groups: dict[str, list[int]] = {}
        self.group_rounds: dict[str, int] = {}
        self.network: Network[Payload] = Network(
            Topology(config.area_count), seed=config.seed, step_ms=config.step_ms
        )
        self.schedules = Schedules()
        self.next_index = 0
        self.flood_seq = 0
        if populate:
            areas = config.area_count
            for i in range(config.nodes):
                self._add_node(i, area=i * areas // config.nodes)
            self.next_index = config.nodes

    # --- nodes ---------------------------------------------------------------------

    @property
    def alive(self) -> list[int]:
        """Live node ids, sorted."""
        return sorted(self.nodes)

    def make_learner(self, index: int) -> Learner:
        """A fresh learner for node ``index``, on its share of the data.

        Nodes beyond the initial partition reuse its shares (arrays shared, not copied).
        """
        data = replace(self.base[index % len(self.base)], index=index)
        cfg = self.config
        return Learner(
            self._template,  # the learner copies its weights
            data,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            epochs=cfg.local_epochs,
            seed=cfg.seed + index,
        )

    def _add_node(self, index: int, area: int) -> SimNode:
        node = SimNode(index, self.make_learner(index))
        self.nodes[index] = node
        self.network.topology.add_node(index, area)
        if self.mirror:
            self.mirror.add_node(index)
        return node

    def _emptiest_area(self) -> int:
        topo = self.network.topology
        return min(range(topo.areas), key=lambda a: (len(topo.members(a)), a))

    def add_nodes(self, count: int) -> list[int]:
        """Start ``count`` fresh nodes, each in the least crowded neighbourhood."""
        if count < 1:
            raise ValueError("add at least one node")
        added = []
        for _ in range(count):
            self._add_node(self.next_index, self._emptiest_area())
            added.append(self.next_index)
            self.next_index += 1
        return added

    def remove_nodes(self, ids: Iterable[int]) -> list[int]:
        """Stop nodes: they leave their groups, the topology and the statistics."""
        removed = []
        for index in sorted(set(ids)):
            node = self.nodes.pop(index)
            if node.group is not None:
                self.groups[node.group].remove(index)
            self.network.topology.remove_node(index)
            for key in [k for k in self.network.link_conditions if index in k]:
                del self.network.link_conditions[key]
            if self.mirror:
                self.mirror.remove_node(index)
            removed.append(index)
        return removed

    # --- learning ------------------------------------------------------------------

    def train(self, ids: Sequence[int], epochs: int | None = None) -> list[tuple[int, float]]:
        """Train each node on its own data; returns (node, mean training loss)."""
        epochs = self.config.local_epochs if epochs is None else epochs
        return [(i, self.nodes[i].learner.train(epochs)["loss"]) for i in ids]

    def test(self, ids: Sequence[int]) -> list[TestRow]:
        """Each node's current model on its own test split."""
        rows = []
        for i in ids:
            node = self.nodes[i]
            result = node.learner.evaluate("test")
            rows.append(TestRow(i, node.group, result.loss, result.accuracy, result.num_examples))
        return rows

    def aggregate(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """Average each node's model with what it received (weighted by examples).

        Returns (node, models merged in); the inbox is emptied.
        """
        out = []
        for i in ids:
            node = self.nodes[i]
            if not node.inbox:
                out.append((i, 0))
                continue
            received = [node.inbox[src] for src in sorted(node.inbox)]
            merged = weighted_mean(
                [node.learner.get_weights()] + [p.weights for p in received],
                [node.learner.num_train_examples] + [p.num_examples for p in received],
            )
            node.learner.set_weights(merged)
            node.inbox.clear()
            out.append((i, len(received)))
        return out

    # --- communication -------------------------------------------------------------

    def _payload(self, index: int, flood: int | None = None) -> tuple[Payload, int]:
        learner = self.nodes[index].learner
        weights = learner.get_weights()
        encoded = self.codec.encode(weights)
        if self.codec.lossy:
            weights = self.codec.decode(encoded)
        return Payload(weights, learner.num_train_examples, index, flood), encoded.nbytes

    def share_targets(self, index: int) -> list[int]:
        """Where ``share`` sends a node's model: its neighbours and its group mates."""
        targets = set(self.network.topology.neighbours(index))
        group = self.nodes[index].group
        if group is not None:
            targets.update(self.groups[group])
        targets.discard(index)
        return sorted(targets)

    def share(self, ids: Sequence[int]) -> int:
        """Each node sends its model to its neighbours and group mates; returns messages sent."""
        sent = 0
        for i in ids:
            targets = self.share_targets(i)
            if targets:
                payload, nbytes = self._payload(i)
                for dst in targets:
                    self.network.send(i, dst, nbytes, payload, SHARE)
                sent += len(targets)
        return sent

    def exchange(self, a: int, b: int) -> int:
        """``a`` and ``b`` send each other their models; returns messages sent."""
        if a == b:
            raise ValueError("exchange needs two different nodes")
        for src, dst in ((a, b), (b, a)):
            payload, nbytes = self._payload(src)
            self.network.send(src, dst, nbytes, payload, EXCHANGE)
        return 2

    def flood(self, ids: Sequence[int]) -> int:
        """Each node floods its model: neighbours forward it on first sight; returns first sends."""
        sent = 0
        for i in ids:
            flood_id = self.flood_seq
            self.flood_seq += 1
            self.nodes[i].seen_floods.add(flood_id)
            neighbours = self.network.topology.neighbours(i)
            if neighbours:
                payload, nbytes = self._payload(i, flood=flood_id)
                for dst in neighbours:
                    self.network.send(i, dst, nbytes, payload, FLOOD)
                sent += len(neighbours)
        return sent

    def _deliver(self, message: Message[Payload], report: StepReport) -> None:
        node = self.nodes.get(message.dst)
        if node is None or self.network.topology.is_cut(message.src, message.dst):
            self.network.dropped(message)
            report.dropped += 1
            return
        self.network.delivered(message)
        report.delivered += 1
        payload = message.payload
        if payload.flood is None:
            node.inbox[payload.origin] = payload
            return
        if payload.flood in node.seen_floods:
            return
        node.seen_floods.add(payload.flood)
        node.inbox[payload.origin] = payload
        for dst in self.network.topology.neighbours(node.index):
            if dst not in (message.src, payload.origin):
                self.network.send(node.index, dst, message.nbytes, payload, FLOOD)

    # --- time ----------------------------------------------------------------------

    def step(self, ids: Sequence[int] | None = None) -> StepReport:
        """One tick: deliver due messages, churn, mobility, then autonet on ``ids`` (all)."""
        due = self.network.advance()
        report = StepReport(self.network.step)
        for message in due:
            self._deliver(message, report)
        sched = self.schedules
        rng = self.network.rng
        if sched.churn_rate > 0:
            leaving = [i for i in self.alive if float(rng.random()) < sched.churn_rate]
            if leaving:
                report.left = self.remove_nodes(leaving)
                report.joined = self.add_nodes(len(leaving))
        if sched.mobility_every and self.network.step % sched.mobility_every == 0:
            report.moves = self.network.topology.mobility_moves(rng, sched.mobility_fraction)
        if sched.autonet:
            scope = self.alive if ids is None else [i for i in ids if i in self.nodes]
            self.train(scope)
            report.trained = len(scope)
            sent_before = self.network.counters.sent
            self.share(scope)
            report.sent = self.network.counters.sent - sent_before
            self.aggregate(scope)
        return report

    # --- topology ------------------------------------------------------------------

    def neighbourhood(self, ids: Sequence[int]) -> list[NeighbourRow]:
        """Who each node reaches directly, and how many over any number of hops."""
        topo = self.network.topology
        return [
            NeighbourRow(i, topo.area_of[i], topo.neighbours(i), len(topo.reachable(i)))
            for i in ids
        ]

    def link(self, a: int, b: int) -> None:
        """Let ``a`` and ``b`` reach each other."""
        self.network.topology.link(a, b)

    def unlink(self, a: int, b: int) -> None:
        """Keep ``a`` and ``b`` apart."""
        self.network.topology.unlink(a, b)

    def wire(
        self, kind: str, *, radius: float = 0.5, k: int = 4, p: float = 0.1
    ) -> list[tuple[int, int]]:
        """Replace every link by a graph over the live nodes; returns its edges.

        ``kind`` is one of ``sim.graphs.GRAPHS``: ring, star, grid, geometric (points in
        the unit square linked within ``radius``), smallworld (Watts-Strogatz, ``k``
        nearest, rewired with probability ``p``). Random graphs draw from the network's
        seeded stream. Nodes added later start unlinked. Raises ValueError for an
        unknown kind or bad parameters.
        """
        nodes = self.alive
        rng = self.network.rng
        if kind == "ring":
            edges = graphs.ring(nodes)
        elif kind == "star":
            edges = graphs.star(nodes)
        elif kind == "grid":
            edges = graphs.grid(nodes)
        elif kind == "geometric":
            edges = graphs.random_geometric(nodes, radius, rng)
        elif kind == "smallworld":
            edges = graphs.small_world(nodes, k, p, rng)
        else:
            raise ValueError(f"unknown graph {kind!r}; known: {', '.join(graphs.GRAPHS)}")
        self.network.topology.wire(edges)
        return edges

    def use_areas(self, areas: int) -> None:
        """Split the live nodes, in id order, into ``areas`` areas that link inside;
        earlier links, unlinks and wiring are forgotten. Raises ValueError below 1."""
        self.network.topology.use_areas(areas)

    def bridge(self, first: int, second: int) -> tuple[int, int]:
        """Link the last node of area ``first`` with the first node of area ``second``;
        returns that pair. Raises ValueError for an unknown or empty area."""
        topo = self.network.topology
        ends = []
        for area in (first, second):
            if not 0 <= area < topo.areas:
                raise ValueError(f"no area {area}; areas are 0-{topo.areas - 1}")
            members = topo.members(area)
            if not members:
                raise ValueError(f"area {area} has no node")
            ends.append(members)
        if first == second:
            raise ValueError("a bridge joins two different areas")
        a, b = ends[0][-1], ends[1][0]
        topo.link(a, b)
        return a, b

    def partition(self, sides: int) -> list[list[int]]:
        """Split the live nodes, in id order, into ``sides`` contiguous sides kept apart
        until ``heal`` (messages in flight across the cut are lost); returns the sides.
        Raises ValueError unless 2 <= sides <= live nodes."""
        nodes = self.alive
        if not 2 <= sides <= len(nodes):
            raise ValueError(f"sides must be 2..{len(nodes)} (the live nodes), got {sides}")
        parts: list[list[int]] = [[] for _ in range(sides)]
        for i, node in enumerate(nodes):
            parts[i * sides // len(nodes)].append(node)
        self.network.topology.cut(parts)
        return parts

    def heal(self) -> int:
        """End every partition; returns how many node pairs were kept apart."""
        return self.network.topology.heal()

    def set_conditions(self, override: ConditionsOverride, link: tuple[int, int] | None) -> None:
        """Change the global conditions, or one link's."""
        if link is None:
            self.network.conditions = override.apply(self.network.conditions)
        else:
            self.network.set_link_conditions(link[0], link[1], override)

    # --- groups --------------------------------------------------------------------

    def create_group(self, name: str) -> None:
        """A new, empty group."""
        if not GROUP_NAME_PATTERN.match(name):
            raise ValueError(f"bad group name {name!r}: letters, digits, _ and -, up to 32")
        if name in self.groups:
            raise ValueError(f"group {name} already exists")
        self.groups[name] = []
        self.group_rounds[name] = 0
        if self.mirror:
            self.mirror.create_group(name)

    def _group(self, name: str) -> list[int]:
        if name not in self.groups:
            raise ValueError(f"no such group: {name}")
        return self.groups[name]

    def group_add(self, name: str, ids: Sequence[int]) -> list[int]:
        """Move nodes into a group (out of their old one); returns the nodes that moved."""
        members = self._group(name)
        moved = []
        for i in ids:
            node = self.nodes[i]
            if node.group == name:
                continue
            if node.group is not None:
                self.groups[node.group].remove(i)
            node.group = name
            members.append(i)
            moved.append(i)
            if self.mirror:
                self.mirror.join(i, name)
        members.sort()
        return moved

    def group_remove(self, name: str, ids: Sequence[int]) -> list[int]:
        """Take nodes out of a group; returns the nodes that were in it."""
        members = self._group(name)
        removed = [i for i in ids if self.nodes[i].group == name]
        for i in removed:
            members.remove(i)
            self.nodes[i].group = None
            if self.mirror:
                self.mirror.leave(i)
        return removed

    def roster(self, name: str) -> list[int]:
        """A group's members."""
        return list(self._group(name))

    def group_share(self, name: str) -> int:
        """Every member sends its model to every other member; returns messages sent."""
        members = self._group(name)
        sent = 0
        for i in members:
            others = [m for m in members if m != i]
            if others:
                payload, nbytes = self._payload(i)
                for dst in others:
                    self.network.send(i, dst, nbytes, payload, GROUP)
                sent += len(others)
        return sent

    def group_train(self, name: str, epochs: int | None = None) -> GroupRound:
        """One group round among the members, from the mean of their models.

        The same group round as every runtime's (``node.federation.round``), over the
        in-memory Flower transport, so it is not delayed or lost by the network model;
        its traffic (model out and back per member) is still counted. With a mirror the
        round's snapshot and reports go to the registry.
        """
        members = list(self._group(name))
        if not members:
            raise ValueError(f"group {name} has no members")
        # Flower loads here, when a group first trains: the REPL starts without it.
        from node.federation.inprocess import InMemoryFederation
        from node.federation.round import GroupMember, run_group_round

        learners = [self.nodes[i].learner for i in members]
        initial = weighted_mean(
            [learner.get_weights() for learner in learners],
            [learner.num_train_examples for learner in learners],
        )
        self.group_rounds[name] += 1
        link = self.mirror.group_link(name, members) if self.mirror else None
        group_members = [
            GroupMember(
                self.nodes[i].name,
                self.nodes[i].learner,
                reporter=link.reporters.get(i) if link else None,
            )
            for i in members
        ]
        result = run_group_round(
            InMemoryFederation(group_members, strategy=self.config.strategy),
            initial,
            group_id=link.group_id if link else 0,
            round_=self.group_rounds[name],
            local_epochs=self.config.local_epochs if epochs is None else epochs,
            registry=link.host if link else None,
            measure_contribution=False,
        )
        nbytes = self.codec.encode(result.weights).nbytes
        counters = self.network.counters
        counters.sent += 2 * len(members)
        counters.delivered += 2 * len(members)
        counters.bytes_sent += 2 * len(members) * nbytes
        counters.bytes_delivered += 2 * len(members) * nbytes
        losses = [u.train_loss for u in result.updates]
        return GroupRound(
            name,
            members,
            self.group_rounds[name],
            result.accuracy if result.accuracy is not None else 0.0,
            float(np.mean(losses)) if losses else 0.0,
        )

    # --- records -------------------------------------------------------------------

    def stats(self) -> StatsRow:
        """Counters and the nodes' test accuracy, now."""
        accuracies = [row.accuracy for row in self.test(self.alive)]
        c = self.network.counters
        return StatsRow(
            step=self.network.step,
            time_ms=self.network.now_ms,
            nodes=len(self.nodes),
            groups=len(self.groups),
            sent=c.sent,
            dropped=c.dropped,
            delivered=c.delivered,
            in_flight=self.network.in_flight,
            bytes_sent=c.bytes_sent,
            mean_accuracy=float(np.mean(accuracies)) if accuracies else 0.0,
            worst_accuracy=float(np.min(accuracies)) if accuracies else 0.0,
        )

    def reseed(self, seed: int) -> None:
        """Restart the network's random stream (loss, jitter, churn, mobility)."""
        self.network.reseed(seed)

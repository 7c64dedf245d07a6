"""The simulated network, pure: a topology of neighbourhoods and a discrete-event message queue.

Time is counted in steps of ``step_ms`` simulated milliseconds. A message sent at step
``s`` is due ``latency + jitter + size / bandwidth`` ms later and is delivered at the
first step whose time has reached that, and never before step ``s + 1``. Loss drops
whole messages when they are sent. Every random draw (loss, jitter, mobility, churn)
comes from one seeded ``numpy`` Generator, so the same seed and the same calls give
the same deliveries. Payloads are opaque to this module: the simulation decides what
a message carries and how big it is.

Topology: every node lives in one neighbourhood (an area); nodes of one area reach
each other. ``link``/``unlink`` force a pair linked or unlinked, whatever the areas,
and mobility moves nodes between areas. ``wire`` replaces the areas' links by an
explicit graph (``sim.graphs``), ``use_areas`` goes back to areas. A partition
(``cut``) keeps two sides apart over any link until ``heal``; messages in flight
across a cut are lost when due.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

__all__ = [
    "Conditions",
    "ConditionsOverride",
    "Counters",
    "Message",
    "Network",
    "Topology",
    "delivery_step",
    "pair",
    "transfer_ms",
]

P = TypeVar("P")


def pair(a: int, b: int) -> tuple[int, int]:
    """An undirected link's key: the two node ids, smaller first."""
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class Conditions:
    """How a link behaves. ``bandwidth_kbps`` is in kilobits per second; 0 is unlimited."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    bandwidth_kbps: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0 or self.bandwidth_kbps < 0:
            raise ValueError("latency, jitter and bandwidth must be non-negative")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be between 0 and 1, got {self.loss}")


@dataclass(frozen=True)
class ConditionsOverride:
    """One link's own conditions; ``None`` fields fall back to the global ones."""

    latency_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None
    bandwidth_kbps: float | None = None

    def apply(self, base: Conditions) -> Conditions:
        """``base`` with this override's set fields."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in changes.items() if v is not None})

    def merged(self, other: ConditionsOverride) -> ConditionsOverride:
        """This override with ``other``'s set fields on top."""
        changes = {f.name: getattr(other, f.name) for f in fields(other)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def transfer_ms(nbytes: int, bandwidth_kbps: float) -> float:
    """Milliseconds to push ``nbytes`` through ``bandwidth_kbps`` (0: instantly)."""
    if bandwidth_kbps <= 0:
        return 0.0
    return nbytes * 8 / bandwidth_kbps  # bits / (kbit/s) = ms


def delivery_step(sent_step: int, due_ms: float, step_ms: float) -> int:
    """The first step at or after ``due_ms``, and at least the step after sending."""
    # The epsilon keeps 300.0000000001 ms from slipping into the next step.
    return max(sent_step + 1, math.ceil(due_ms / step_ms - 1e-9))


@dataclass
class Message(Generic[P]):
    """One message in flight."""

    seq: int
    src: int
    dst: int
    kind: str
    nbytes: int
    sent_step: int
    due_ms: float
    deliver_step: int
    payload: P


@dataclass
class Counters:
    """Totals since the simulation started."""

    sent: int = 0
    dropped: int = 0
    delivered: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain data."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


class Topology:
    """Who reaches whom: areas (neighbourhoods) plus forced links and unlinks."""

    def __init__(self, areas: int) -> None:
        if areas < 1:
            raise ValueError(f"need at least one area, got {areas}")
        self.areas = areas
        self.area_of: dict[int, int] = {}
        self._members: dict[int, set[int]] = {a: set() for a in range(areas)}
        self.forced: dict[tuple[int, int], bool] = {}
        self._forced_by_node: dict[int, set[int]] = {}
        self.wired = False  # True: only forced links count, areas link nobody
        self.cuts: set[tuple[int, int]] = set()
        self._cut_by_node: dict[int, set[int]] = {}

    @property
    def nodes(self) -> list[int]:
        """Every node, sorted."""
        return sorted(self.area_of)

    def add_node(self, node: int, area: int) -> None:
        """Place a new node in ``area``."""
        if node in self.area_of:
            raise ValueError(f"node {node} is already placed")
        self._check_area(area)
        self.area_of[node] = area
        self._members[area].add(node)

    def remove_node(self, node: int) -> None:
        """Take a node and its forced links out."""
        area = self.area_of.pop(node)
        self._members[area].discard(node)
        for other in self._forced_by_node.pop(node, set()):
            self.forced.pop(pair(node, other), None)
            self._forced_by_node.get(other, set()).discard(node)
        for other in self._cut_by_node.pop(node, set()):
            self.cuts.discard(pair(node, other))
            self._cut_by_node.get(other, set()).discard(node)

    def move(self, node: int, area: int) -> None:
        """Move a node to another area; its forced links and unlinks stay."""
        self._check_area(area)
        self._members[self.area_of[node]].discard(node)
        self.area_of[node] = area
        self._members[area].add(node)

    def members(self, area: int) -> list[int]:
        """The nodes of one area, sorted."""
        return sorted(self._members[area])

    def link(self, a: int, b: int) -> None:
        """Force ``a`` and ``b`` to reach each other."""
        self._force(a, b, True)

    def unlink(self, a: int, b: int) -> None:
        """Force ``a`` and ``b`` apart."""
        self._force(a, b, False)

    def linked(self, a: int, b: int) -> bool:
        """Whether ``a`` and ``b`` reach each other directly."""
        if a == b:
            return False
        key = pair(a, b)
        if key in self.cuts:
            return False
        if key in self.forced:
            return self.forced[key]
        return not self.wired and self.area_of[a] == self.area_of[b]

    def neighbours(self, node: int) -> list[int]:
        """Nodes ``node`` reaches directly, sorted."""
        out = set() if self.wired else set(self._members[self.area_of[node]])
        out.discard(node)
        for other in self._forced_by_node.get(node, ()):
            if self.forced[pair(node, other)]:
                out.add(other)
            else:
                out.discard(other)
        out.difference_update(self._cut_by_node.get(node, ()))
        return sorted(out)

    def wire(self, edges: Iterable[tuple[int, int]]) -> None:
        """Links become exactly ``edges`` (pairs of placed nodes); areas stop linking.

        Earlier links and unlinks are forgotten; cuts stay. Raises ValueError for an
        edge to an unknown node or to itself.
        """
        edges = list(edges)
        for a, b in edges:
            for n in (a, b):
                if n not in self.area_of:
                    raise ValueError(f"no node {n}")
            if a == b:
                raise ValueError("a node cannot link to itself")
        self._clear_forced()
        self.wired = True
        for a, b in edges:
            self._force(a, b, True)

    def use_areas(self, areas: int) -> None:
        """Split the nodes, in id order, into ``areas`` contiguous areas that link inside.

        Earlier links, unlinks and wiring are forgotten; cuts stay. Raises ValueError
        unless ``areas`` is at least 1.
        """
        if areas < 1:
            raise ValueError(f"need at least one area, got {areas}")
        nodes = self.nodes
        self._clear_forced()
        self.wired = False
        self.areas = areas
        self._members = {a: set() for a in range(areas)}
        self.area_of = {}
        for i, node in enumerate(nodes):
            area = i * areas // len(nodes)
            self.area_of[node] = area
            self._members[area].add(node)

    def cut(self, sides: Sequence[Iterable[int]]) -> int:
        """Keep the ``sides`` apart until ``heal``: no pair across two sides is linked,
        whatever areas, links and wiring say. Returns how many pairs are newly cut."""
        groups = [sorted(set(side)) for side in sides]
        added = 0
        for i, side in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in side:
                    for b in other:
                        if a == b or pair(a, b) in self.cuts:
                            continue
                        self.cuts.add(pair(a, b))
                        self._cut_by_node.setdefault(a, set()).add(b)
                        self._cut_by_node.setdefault(b, set()).add(a)
                        added += 1
        return added

    def heal(self) -> int:
        """Undo every cut; returns how many pairs were cut."""
        count = len(self.cuts)
        self.cuts.clear()
        self._cut_by_node.clear()
        return count

    def is_cut(self, a: int, b: int) -> bool:
        """Whether a partition keeps ``a`` and ``b`` apart."""
        return pair(a, b) in self.cuts

    def reachable(self, node: int) -> list[int]:
        """Nodes ``node`` reaches over any number of hops (not itself), sorted."""
        seen = {node}
        todo = deque([node])
        while todo:
            for other in self.neighbours(todo.popleft()):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        seen.discard(node)
        return sorted(seen)

    def mobility_moves(
        self, rng: np.random.Generator, fraction: float
    ) -> list[tuple[int, int, int]]:
        """Move a random ``fraction`` of nodes (at least one) to a random other area.

        Returns ``(node, from_area, to_area)`` for each move; nothing moves with one area.
        """
        nodes = self.nodes
        if self.areas < 2 or not nodes or fraction <= 0:
            return []
        count = max(1, round(fraction * len(nodes)))
        chosen = sorted(
            int(n) for n in rng.choice(nodes, size=min(count, len(nodes)), replace=False)
        )
        moves: list[tuple[int, int, int]] = []
        for node in chosen:
            old = self.area_of[node]
            new = int(rng.integers(self.areas - 1))
            new = new + 1 if new >= old else new
            self.move(node, new)
            moves.append((node, old, new))
        return moves

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for saving."""
        return {
            "areas": self.areas,
            "area_of": [[n, a] for n, a in sorted(self.area_of.items())],
            "forced": [[a, b, v] for (a, b), v in sorted(self.forced.items())],
            "wired": self.wired,
            "cuts": [[a, b] for a, b in sorted(self.cuts)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Topology:
        """Rebuild from ``to_dict``'s output."""
        topo = cls(int(data["areas"]))
        for node, area in data["area_of"]:
            topo.add_node(int(node), int(area))
        for a, b, linked in data["forced"]:
            topo._force(int(a), int(b), bool(linked))
        topo.wired = bool(data.get("wired", False))  # absent in saves before wiring
        for a, b in data.get("cuts", []):
            topo.cut([[int(a)], [int(b)]])
        return topo

    def _clear_forced(self) -> None:
        self.forced.clear()
        self._forced_by_node.clear()

    def _force(self, a: int, b: int, linked: bool) -> None:
        if a == b:
            raise ValueError("a node cannot link to itself")
        for n in (a, b):
            if n not in self.area_of:
                raise ValueError(f"no node {n}")
        self.forced[pair(a, b)] = linked
        self._forced_by_node.setdefault(a, set()).add(b)
        self._forced_by_node.setdefault(b, set()).add(a)

    def _check_area(self, area: int) -> None:
        if not 0 <= area < self.areas:
            raise ValueError(f"no area {area}; areas are 0-{self.areas - 1}")


@dataclass
class Network(Generic[P]):
    """The clock, link conditions, the queue of messages in flight and the counters."""

    backend: ClassVar[str] = "deterministic"  # sim.netns.NetnsNetwork: "netns"
    topology: Topology
    seed: int = 0
    step_ms: float = 100.0
    step: int = 0
    conditions: Conditions = field(default_factory=Conditions)
    link_conditions: dict[tuple[int, int], ConditionsOverride] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    rng: np.random.Generator = field(init=False)
    _queue: list[tuple[int, float, int, Message[P]]] = field(default_factory=list, init=False)
    _seq: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.step_ms <= 0:
            raise ValueError(f"step_ms must be positive, got {self.step_ms}")
        self.rng = np.random.default_rng(self.seed)

    @property
    def now_ms(self) -> float:
        """Simulated time of the current step."""
        return self.step * self.step_ms

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet delivered."""
        return len(self._queue)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed``."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def conditions_between(self, a: int, b: int) -> Conditions:
        """The conditions a message from ``a`` to ``b`` meets."""
        override = self.link_conditions.get(pair(a, b))
        return override.apply(self.conditions) if override else self.conditions

    def set_link_conditions(self, a: int, b: int, override: ConditionsOverride) -> None:
        """Override some conditions of one link (others keep following the global ones)."""
        key = pair(a, b)
        current = self.link_conditions.get(key, ConditionsOverride())
        merged = current.merged(override)
        merged.apply(self.conditions)  # validates the combination
        self.link_conditions[key] = merged

    def send(self, src: int, dst: int, nbytes: int, payload: P, kind: str) -> Message[P] | None:
        """Send one message now; returns it, or None when loss dropped it."""
        cond = self.conditions_between(src, dst)
        # Both draws always happen, so one link's loss does not shift others' jitter.
        lost = float(self.rng.random()) < cond.loss
        jitter = float(self.rng.random()) * cond.jitter_ms
        self.counters.sent += 1
        self.counters.bytes_sent += nbytes
        if lost:
            self.counters.dropped += 1
            return None
        due = self.now_ms + cond.latency_ms + jitter + transfer_ms(nbytes, cond.bandwidth_kbps)
        message = Message(
            seq=self._seq,
            src=src,
            dst=dst,
            kind=kind,
            nbytes=nbytes,
            sent_step=self.step,
            due_ms=due,
            deliver_step=delivery_step(self.step, due, self.step_ms),
            payload=payload,
        )
        self._seq += 1
        self._push(message)
        return message

    def advance(self) -> list[Message[P]]:
        """Move the clock one step; return the messages due now, in due-time order.

        The caller delivers them and calls ``delivered`` or ``dropped`` for each.
        """
        self.step += 1
        due: list[Message[P]] = []
        while self._queue and self._queue[0][0] <= self.step:
            due.append(heapq.heappop(self._queue)[3])
        return due

    def delivered(self, message: Message[P]) -> None:
        """Count a message as delivered."""
        self.counters.delivered += 1
        self.counters.bytes_delivered += message.nbytes

    def dropped(self, message: Message[P]) -> None:
        """Count a message as dropped on arrival (its receiver is gone)."""
        self.counters.dropped += 1

    def queued(self) -> Iterator[Message[P]]:
        """Messages in flight, in delivery order."""
        for item in sorted(self._queue, key=lambda entry: entry[:3]):
            yield item[3]

    def restore_queue(self, messages: Iterable[Message[P]], next_seq: int) -> None:
        """Put saved messages back in flight."""
        self._queue = []
        for message in messages:
            self._push(message)
        self._seq = next_seq

    @property
    def next_seq(self) -> int:
        """The sequence number the next message gets."""
        return self._seq

    def _push(self, message: Message[P]) -> None:
        heapq.heappush(self._queue, (message.deliver_step, message.due_ms, message.seq, message))

"""Synthetic snapshots of a plausible run, for benchmarks and trying the drawing offline."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from viz.snapshot import EventRecord, GroupState, NodeState, Snapshot

__all__ = ["synthetic_run"]


@dataclass
class _Sim:
    rng: random.Random
    capacity: int
    events: list[EventRecord] = field(default_factory=list)
    next_event: int = 1
    groups: dict[int, str] = field(default_factory=dict)
    member_of: dict[str, int | None] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    node_acc: dict[str, float | None] = field(default_factory=dict)
    group_round: dict[int, int] = field(default_factory=dict)
    group_acc: dict[int, float | None] = field(default_factory=dict)

    def emit(self, type_: str, node: str | None, group: int | None, **data: Any) -> None:
        self.events.append(EventRecord(self.next_event, type_, node, group, data, ""))
        self.next_event += 1

    def size(self, gid: int) -> int:
        return sum(1 for g in self.member_of.values() if g == gid)


def synthetic_run(
    nodes: int = 16, groups: int = 4, steps: int = 30, *, seed: int = 0, interval: float = 1.0
) -> list[Snapshot]:
    """`steps` snapshots of `nodes` nodes settling into `groups` groups, with migrations,
    late arrivals and expiries: enough variety to exercise every part of a frame."""
    rng = random.Random(seed)
    cap = max(2, math.ceil(nodes / groups) + 2)
    sim = _Sim(rng, cap)
    ids = [f"node-{i:03d}" for i in range(nodes)]
    late = set(rng.sample(ids, max(0, nodes // 8)))
    skill = {gid: 0.7 + 0.25 * rng.random() for gid in range(1, groups + 1)}
    snaps: list[Snapshot] = []
    for step in range(steps):
        if step == 0:
            for nid in ids:
                if nid not in late:
                    sim.member_of[nid] = None
                    sim.status[nid] = "active"
                    sim.node_acc[nid] = None
                    sim.emit("registered", nid, None)
        if step == max(1, steps // 3):
            for nid in sorted(late):
                sim.member_of[nid] = None
                sim.status[nid] = "active"
                sim.node_acc[nid] = None
                sim.emit("registered", nid, None)
        # Groups appear over the first steps; waiting nodes join the least full one.
        if step >= 1 and len(sim.groups) < groups:
            gid = len(sim.groups) + 1
            sim.groups[gid] = f"cluster-{gid}"
            sim.group_round[gid] = 0
            sim.group_acc[gid] = None
            sim.emit("group_created", None, gid, name=sim.groups[gid])
        if sim.groups:
            for nid in sorted(n for n, g in sim.member_of.items() if g is None):
                if sim.status[nid] != "active" or rng.random() < 0.3:
                    continue
                gid = min(sim.groups, key=lambda g: (sim.size(g), g))
                if sim.size(gid) < cap:
                    sim.member_of[nid] = gid
                    sim.emit("joined", nid, gid)
        # A few migrations once rounds are under way.
        if step >= 4 and len(sim.groups) > 1:
            for _ in range(rng.choice((0, 0, 1, 1, 2))):
                members = sorted(n for n, g in sim.member_of.items() if g is not None)
                if not members:
                    break
                nid = rng.choice(members)
                src = sim.member_of[nid]
                dst = rng.choice([g for g in sim.groups if g != src])
                if src is not None and sim.size(dst) < cap:
                    sim.member_of[nid] = dst
                    sim.emit("migrated", nid, dst, from_group=src)
        # An occasional expiry.
        if step >= 6 and step % 7 == 6:
            live = sorted(n for n, s in sim.status.items() if s == "active")
            if live:
                nid = rng.choice(live)
                sim.status[nid] = "inactive"
                was_in = sim.member_of[nid]
                sim.member_of[nid] = None
                sim.emit("expired", nid, was_in)
        # One training round per group with members.
        for gid in list(sim.groups):
            if sim.size(gid) == 0:
                continue
            r = sim.group_round[gid] = sim.group_round[gid] + 1
            acc = skill[gid] * (1 - math.exp(-r / 4)) + 0.1 * math.exp(-r / 4)
            acc = min(0.99, max(0.0, acc + rng.uniform(-0.015, 0.015)))
            sim.group_acc[gid] = round(acc, 4)
            sim.emit(
                "performance_reported",
                None,
                gid,
                metric="accuracy",
                round=r,
                value=acc,
                group_value=sim.group_acc[gid],
            )
        for nid, at in sim.member_of.items():
            if at is not None and sim.group_acc[at] is not None:
                own = (sim.group_acc[at] or 0.0) + rng.uniform(-0.05, 0.03)
                sim.node_acc[nid] = round(min(1.0, max(0.0, own)), 4)
        snaps.append(
            Snapshot(
                index=step,
                time=round(step * interval, 3),
                groups=tuple(
                    GroupState(
                        gid,
                        name,
                        tuple(sorted(n for n, g in sim.member_of.items() if g == gid)),
                        sim.group_acc[gid],
                        sim.group_round[gid],
                        cap,
                    )
                    for gid, name in sorted(sim.groups.items())
                ),
                nodes=tuple(
                    NodeState(nid, sim.member_of[nid], sim.status[nid], sim.node_acc[nid])
                    for nid in sorted(sim.member_of)
                ),
                events=tuple(sim.events),
            )
        )
        sim.events = []
    return snaps

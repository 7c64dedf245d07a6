"""In-process runtime: N nodes in one process against a real registry over HTTP.

Time is counted in rounds, so a demo is fast: every round each group runs one group
round (``node.federation.round.run_group_round`` over the in-memory Flower transport)
among its current members: its host (first member) uploads the new snapshot and submits
contributions, every member reports how the group model does on its own data. Nodes
heartbeat every ``heartbeat_every_rounds`` rounds and re-evaluate their group every
``evaluate_every_rounds`` rounds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from node.credentials import CredentialStore
from node.errors import RegistryClientError
from node.federation.inprocess import InMemoryFederation
from node.federation.round import GroupMember, latest_group_model, run_group_round
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import NodeData
from node.learning.weights import SnapshotCache
from node.registry_client import RegistryClient
from node.runtime.agent import NodeAgent
from node.runtime.policy import Leave, Migrate, PolicyConfig

__all__ = ["InProcessNetwork", "NetworkConfig", "RoundStats", "local_only_accuracy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkConfig:
    """How an in-process network runs; intervals in rounds."""

    dataset: str = "digits"
    domain: str = "digits"
    policy: str = "local"
    strategy: str = "fedavg"
    local_epochs: int = 2
    warmup_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.05
    max_capacity: int = 5
    switch_threshold: float = 0.05
    cooldown_rounds: int = 3
    top_k: int = 3
    evaluate_every_rounds: int = 2
    heartbeat_every_rounds: int = 1
    seed: int = 0
    # Leave-one-out contribution of every member per group round, sent to the ledger.
    measure_contribution: bool = True


@dataclass
class RoundStats:
    """What one round did, in plain data."""

    round: int
    groups: dict[int, list[str]]
    group_accuracy: dict[int, float]
    node_accuracy: dict[str, float]
    migrations: int
    seconds: float
    contributions: dict[str, float] = field(default_factory=dict)
    contribution_seconds: float = 0.0

    @property
    def mean_accuracy(self) -> float:
        """Mean validation accuracy over nodes."""
        vals = list(self.node_accuracy.values())
        return float(np.mean(vals)) if vals else 0.0


@dataclass
class _GroupState:
    weights: list[np.ndarray]
    round: int


@dataclass
class InProcessNetwork:
    """Nodes, one learner each, sharing a registry; `run_round()` advances one round."""

    registry_url: str
    data: Sequence[NodeData]
    config: NetworkConfig = field(default_factory=NetworkConfig)
    model_factory: Callable[[int], Any] | None = None
    node_prefix: str = "node"
    # Where the nodes keep their registry tokens; None: in memory only (a registry of
    # its own, gone with the run).
    credentials: CredentialStore | None = None
    ca_cert: Path | None = None  # PEM CA the registry's TLS certificate chains to
    agents: list[NodeAgent] = field(default_factory=list, init=False)
    members: dict[str, GroupMember] = field(default_factory=dict, init=False)
    history: list[RoundStats] = field(default_factory=list, init=False)
    _groups: dict[int, _GroupState] = field(default_factory=dict, init=False)
    _round: int = field(default=0, init=False)
    _contributions: dict[str, float] = field(default_factory=dict, init=False)
    _contribution_seconds: float = field(default=0.0, init=False)
    _aggregations: dict[int, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self._cache = SnapshotCache()
        policy_cfg = PolicyConfig(cfg.switch_threshold, cfg.cooldown_rounds, cfg.top_k)
        for i, nd in enumerate(self.data):
            model = (
                self.model_factory(i)
                if self.model_factory
                else build_model(cfg.dataset, seed=cfg.seed + i)
            )
            learner = Learner(
                model,
                nd,
                learning_rate=cfg.learning_rate,
                batch_size=cfg.batch_size,
                epochs=cfg.local_epochs,
                seed=cfg.seed + i,
            )
            node_id = f"{self.node_prefix}-{i:03d}"
            self.agents.append(
                NodeAgent(
                    node_id=node_id,
                    learner=learner,
                    client=RegistryClient(
                        self.registry_url,
                        retries=4,
                        backoff=0.25,
                        credentials=self.credentials,
                        ca_cert=self.ca_cert,
                    ),
                    domain=cfg.domain,
                    address=f"in-process/{node_id}",
                    policy=cfg.policy,
                    policy_config=policy_cfg,
                    max_capacity=cfg.max_capacity,
                    aggregation=cfg.strategy,
                    cluster=nd.cluster,
                    snapshots=self._cache,
                )
            )
            agent = self.agents[-1]
            self.members[node_id] = GroupMember(
                node_id, learner, reporter=agent.client, rejections=agent.rejections
            )

    @property
    def round(self) -> int:
        """Rounds completed."""
        return self._round

    def start(self) -> None:
        """Register every node and train each alone for the warm-up epochs."""
        for agent in self.agents:
            agent.ensure_registered()
            if self.config.warmup_epochs:
                agent.learner.train(self.config.warmup_epochs)

    def run_round(self) -> RoundStats:
        """One round: place unplaced nodes, train every group, report, maybe migrate."""
        t0 = time.perf_counter()
        self._round += 1
        rnd = self._round
        cfg = self.config
        migrations = 0
        self._contributions = {}
        self._contribution_seconds = 0.0
        for agent in self.agents:
            if not agent.registered:
                agent.ensure_registered()
            if agent.group_id is None and agent.registered:
                agent.choose_group(rnd)
        rosters = self._rosters()
        group_acc: dict[int, float] = {}
        for gid, members in sorted(rosters.items()):
            accuracy = self._train_group(gid, members, rnd)
            if accuracy is not None:
                group_acc[gid] = accuracy
        for agent in self.agents:
            if agent.group_id is None:  # registry away or no group: keep learning alone
                agent.learner.train()
        if rnd % cfg.evaluate_every_rounds == 0:
            for agent in self.agents:
                if isinstance(agent.reconsider(rnd), Migrate | Leave):
                    migrations += 1
        node_acc = {a.node_id: a.learner.evaluate("val").accuracy for a in self.agents}
        if rnd % cfg.heartbeat_every_rounds == 0:
            for agent in self.agents:
                if agent.registered:
                    agent.heartbeat({"accuracy": node_acc[agent.node_id]})
                else:
                    agent.ensure_registered()
        for agent in self.agents:
            agent.rounds_since_move += 1
        stats = RoundStats(
            round=rnd,
            groups={gid: [a.node_id for a in members] for gid, members in self._rosters().items()},
            group_accuracy=group_acc,
            node_accuracy=node_acc,
            migrations=migrations,
            seconds=time.perf_counter() - t0,
            contributions=dict(self._contributions),
            contribution_seconds=self._contribution_seconds,
        )
        self.history.append(stats)
        return stats

    def _rosters(self) -> dict[int, list[NodeAgent]]:
        rosters: dict[int, list[NodeAgent]] = {}
        for agent in self.agents:
            if agent.group_id is not None:
                rosters.setdefault(agent.group_id, []).append(agent)
        return rosters

    def _group_model(self, gid: int, host: NodeAgent) -> _GroupState:
        """The group's current model: the network's copy, or a newer registry snapshot
        (another host stored it), or, for a new group, the host's own model."""
        state = self._groups.get(gid)
        newer = latest_group_model(
            host.client,
            gid,
            self.members[host.node_id].signature,
            newer_than=state.round if state is not None else -1,
            cache=self._cache,
            loss=lambda weights: host.learner.evaluate("val", weights=weights).loss,
            rejections=host.rejections,
        )
        if state is None:
            state = _GroupState(host.learner.get_weights(), 0)
        if newer is not None:  # resume from it, or past it when it is unusable
            state = _GroupState(newer.weights or state.weights, newer.round)
        self._groups[gid] = state
        return state

    def _train_group(self, gid: int, agents: list[NodeAgent], rnd: int) -> float | None:
        """One group round among the members; returns the group model's accuracy."""
        host = agents[0]
        state = self._group_model(gid, host)
        result = run_group_round(
            InMemoryFederation(
                [self.members[a.node_id] for a in agents], strategy=self._aggregation(gid, host)
            ),
            state.weights,
            group_id=gid,
            round_=state.round + 1,
            local_epochs=self.config.local_epochs,
            registry=host.client,
            measure_contribution=self.config.measure_contribution,
            rejections=host.rejections,
        )
        if result.aggregated:
            state.weights, state.round = result.weights, result.round
        for evaluation in result.evaluations:
            self._agent(evaluation.member).note_round(
                gid, evaluation.accuracies[0], evaluation.own_accuracy
            )
        self._contributions.update(result.contributions)
        self._contribution_seconds += result.contribution_seconds
        return result.accuracy

    def _aggregation(self, gid: int, host: NodeAgent) -> str:
        """The group's own strategy (set when it was created), else this network's."""
        if gid not in self._aggregations:
            try:
                self._aggregations[gid] = host.client.get_group(gid).aggregation
            except RegistryClientError as exc:
                log.warning(
                    "group %s: strategy unknown (%s); using %s", gid, exc, self.config.strategy
                )
                return self.config.strategy
        return self._aggregations[gid]

    def _agent(self, node_id: str) -> NodeAgent:
        return next(a for a in self.agents if a.node_id == node_id)

    def test_accuracy(self) -> dict[str, float]:
        """Each node's current model on its own test split."""
        return {a.node_id: a.learner.evaluate("test").accuracy for a in self.agents}

    def adjusted_rand_index(self) -> float:
        """Agreement of the current groups with the hidden clusters (1.0 = identical)."""
        truth = [a.cluster or 0 for a in self.agents]
        groups = [
            a.group_id if a.group_id is not None else -1 - i for i, a in enumerate(self.agents)
        ]
        return float(adjusted_rand_score(truth, groups))

    def shutdown(self) -> None:
        """Every node leaves its group and closes its connections."""
        for agent in self.agents:
            agent.leave()
            agent.client.close()


def local_only_accuracy(
    data: Sequence[NodeData],
    config: NetworkConfig,
    rounds: int,
    *,
    stop: threading.Event | None = None,
) -> dict[int, float]:
    """Test accuracy of each node trained alone for the same epochs as the network."""
    out: dict[int, float] = {}
    for i, nd in enumerate(data):
        learner = Learner(
            build_model(config.dataset, seed=config.seed + i),
            nd,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            seed=config.seed + i,
        )
        learner.train(config.warmup_epochs + rounds * config.local_epochs)
        out[i] = learner.evaluate("test").accuracy
        if stop is not None and stop.is_set():
            break
    return out

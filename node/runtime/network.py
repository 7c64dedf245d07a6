"""In-process runtime: N nodes in one process against a real registry over HTTP.

Time is counted in rounds, so a demo is fast: every round each group runs one Flower
round among its current members, its host (first member) uploads the new snapshot and
every member reports how the group model does on its own data. Nodes heartbeat every
`heartbeat_every` rounds and re-evaluate their group every `evaluate_every` rounds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from node.federation.contribution import leave_one_out, pooled_val_loss
from node.federation.inprocess import RoundResult, run_group_round
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import NodeData
from node.learning.weights import weights_to_bytes
from node.registry_client import RegistryClient, RegistryClientError
from node.runtime.agent import NodeAgent, SnapshotCache
from node.runtime.policy import Migrate, PolicyConfig

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
    evaluate_every: int = 2
    heartbeat_every: int = 1
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
    agents: list[NodeAgent] = field(default_factory=list, init=False)
    history: list[RoundStats] = field(default_factory=list, init=False)
    _groups: dict[int, _GroupState] = field(default_factory=dict, init=False)
    _round: int = field(default=0, init=False)
    _contributions: dict[str, float] = field(default_factory=dict, init=False)
    _contribution_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        cache = SnapshotCache()
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
                lr=cfg.learning_rate,
                batch_size=cfg.batch_size,
                epochs=cfg.local_epochs,
                seed=cfg.seed + i,
            )
            node_id = f"{self.node_prefix}-{i:03d}"
            self.agents.append(
                NodeAgent(
                    node_id=node_id,
                    learner=learner,
                    client=RegistryClient(self.registry_url, retries=4, backoff=0.25),
                    domain=cfg.domain,
                    address=f"in-process/{node_id}",
                    policy=cfg.policy,
                    policy_config=policy_cfg,
                    max_capacity=cfg.max_capacity,
                    cluster=nd.cluster,
                    snapshots=cache,
                )
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
            group_acc[gid] = self._train_group(gid, members, rnd)
        for agent in self.agents:
            if agent.group_id is None:  # registry away or no group: keep learning alone
                agent.learner.train()
        if rnd % cfg.evaluate_every == 0:
            for agent in self.agents:
                if isinstance(agent.reconsider(rnd), Migrate):
                    migrations += 1
        node_acc = {a.node_id: a.learner.evaluate("val").accuracy for a in self.agents}
        if rnd % cfg.heartbeat_every == 0:
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

    def _group_weights(self, gid: int, host: NodeAgent) -> list[np.ndarray]:
        """The group's current model: the host's copy, else the registry's snapshot."""
        state = self._groups.get(gid)
        blob = None
        try:
            # Usually the host's copy is the latest (it uploaded it): ask for the round
            # first and fetch the bytes only when someone else stored a newer one.
            info = host.client.model_info(gid)
            if info is not None and (state is None or info.round > state.round):
                blob = host.client.download_model(gid, round=info.round)
        except RegistryClientError:
            blob = None
        if blob is not None and (state is None or blob.round > state.round):
            weights = host.snapshots.weights(blob.sha256, blob.data)
            self._groups[gid] = _GroupState([w.copy() for w in weights], blob.round)
        elif state is None:
            self._groups[gid] = _GroupState(host.learner.get_weights(), 0)
        return self._groups[gid].weights

    def _train_group(self, gid: int, members: list[NodeAgent], rnd: int) -> float:
        """One Flower round among the members; upload and report; returns group accuracy."""
        host = members[0]
        initial = self._group_weights(gid, host)
        result = run_group_round(
            [m.learner for m in members],
            initial,
            strategy=self.config.strategy,
            server_round=rnd,
            local_epochs=self.config.local_epochs,
        )
        state = self._groups[gid]
        state.weights = result.weights
        state.round += 1
        for m in members:
            m.learner.set_weights(result.weights)
        try:
            host.client.upload_model(gid, state.round, weights_to_bytes(result.weights))
        except RegistryClientError as exc:
            log.warning("group %s: snapshot upload failed: %s", gid, exc)
        if self.config.measure_contribution and len(result.updates) == len(members):
            self._measure_contribution(gid, state.round, members, result, initial)
        total = sum(v.num_examples for v in result.val) or 1
        for m, val in zip(members, result.val, strict=False):
            try:
                m.client.report_performance(
                    gid, value=val.accuracy, round=state.round, num_examples=val.num_examples
                )
            except RegistryClientError as exc:
                log.warning("%s: performance report failed: %s", m.node_id, exc)
        return float(sum(v.accuracy * v.num_examples for v in result.val) / total)

    def _measure_contribution(
        self,
        gid: int,
        round_: int,
        members: list[NodeAgent],
        result: RoundResult,
        initial: list[np.ndarray],
    ) -> None:
        """Leave-one-out contributions on the members' pooled validation data (capped at
        512 examples); the host submits them for the whole round, the registry pays."""
        report = leave_one_out(
            result.updates,
            result.num_examples,
            pooled_val_loss([m.learner for m in members], seed=round_),
            baseline=initial,
        )
        self._contribution_seconds += report.seconds
        contributions = {m.node_id: c for m, c in zip(members, report.contributions, strict=True)}
        self._contributions.update(contributions)
        try:
            members[0].client.submit_contributions(
                gid,
                round_,
                contributions,
                num_examples=dict(
                    zip((m.node_id for m in members), result.num_examples, strict=True)
                ),
            )
        except RegistryClientError as exc:
            log.warning("group %s: contribution report failed: %s", gid, exc)

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
            lr=config.learning_rate,
            batch_size=config.batch_size,
            seed=config.seed + i,
        )
        learner.train(config.warmup_epochs + rounds * config.local_epochs)
        out[i] = learner.evaluate("test").accuracy
        if stop is not None and stop.is_set():
            break
    return out

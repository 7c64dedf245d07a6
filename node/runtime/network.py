"""In-process runtime: N nodes in one process against a real registry over HTTP.

Time is counted in rounds, so a demo is fast: every round each group runs one group
round (``node.federation.round.run_group_round`` over the in-memory Flower transport)
among its current members: its host (first member) uploads the new snapshot and submits
contributions, every member reports how the group model does on its own data. Nodes
heartbeat every ``heartbeat_every_rounds`` rounds and re-evaluate their group every
``evaluate_every_rounds`` rounds. With ``meta_federation``, every ``meta_every_rounds``
rounds the groups find their siblings, share knowledge with them, merge and split
(``node.runtime.meta``). ``apply_drift`` swaps nodes' data mid-run; ``drift_report``
says how they re-homed.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from node.addresses import check_url
from node.credentials import CredentialStore
from node.errors import ConfigError, RegistryClientError, RemoteInputError
from node.federation.adversary import ATTACKS
from node.federation.round import (
    MemberUpdate,
    latest_group_model,
)
from node.federation.strategies import FLOWER_LOGGER_NAME
from node.learning.learner import Learner, load_weights
from node.learning.merge import weighted_mean
from node.learning.models import build_model
from node.learning.partition import NodeData
from node.learning.pool import DataPool, NodeSlices
from node.learning.snapshots import SnapshotStore
from node.registry_client import RegistryClient, tls_context
from node.runtime import meta
from node.runtime.agent import NodeAgent
from node.runtime.backends import (
    Backend,
    GroupOutcome,
    GroupTask,
    MemberSpec,
    SerialBackend,
    WorkerSetup,
    merge_rejections,
    replay,
)
from node.runtime.policy import Leave, Migrate, PolicyConfig
from node.runtime.scores import group_purity

__all__ = [
    "InProcessNetwork",
    "NetworkConfig",
    "RoundStats",
    "batch_example_scores",
    "local_only_accuracy",
]

log = logging.getLogger(__name__)

# Unplaced nodes whose candidate scoring is batched together (``run_round``).
PLACEMENT_WAVE = 32

# The nodes' shared HTTP client: connection retries, each request's limit, and the pool
# (the nodes of one network call the registry from at most a few threads at once).
HTTP_RETRIES = 4
HTTP_TIMEOUT_S = 10.0
HTTP_POOL_CONNECTIONS = 16


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
    # Besides, a node heartbeats as soon as its last heartbeat is this old, mid-round:
    # a round of a large network can outlast the registry's node TTL (by default 90 s).
    # 60 s leaves 30 s between keep-alive checks; 30 s meant 8 heartbeats per node and
    # round at 1,000 nodes on a loaded machine (100 s of the registry's time a round).
    heartbeat_seconds: float = 60.0
    seed: int = 0
    # Leave-one-out contribution of every member per group round, sent to the ledger.
    measure_contribution: bool = True
    # Groups find sibling groups, share models with them, merge and split.
    meta_federation: bool = True
    meta_every_rounds: int = 2
    # Groups whose models a group scores per meta round (bounded: cheap at 80 groups).
    meta_candidates: int = 16
    # Split a group when the largest cosine similarity of updates across the best
    # bipartition is below this (Sattler et al., 2020).
    split_threshold: float = 0.0
    # Score the candidate groups of all deciding nodes before they decide: one forward
    # pass per group model over every scoring node's validation data (False: each node
    # scores each model alone; the same decisions, slower).
    batch_scoring: bool = True

    def __post_init__(self) -> None:
        if self.meta_every_rounds < 1:
            raise ValueError(f"meta_every_rounds must be at least 1, got {self.meta_every_rounds}")
        if self.heartbeat_seconds <= 0:
            raise ValueError(f"heartbeat_seconds must be positive, got {self.heartbeat_seconds}")
        if self.meta_candidates < 1:
            raise ValueError(f"meta_candidates must be at least 1, got {self.meta_candidates}")


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


# Members' validation data stacked: x float32, y int64, and each member's example count.
_Stacked = tuple[torch.Tensor, torch.Tensor, list[int]]


@dataclass
class _Drift:
    node_id: str
    round: int
    old_cluster: int
    new_cluster: int
    accuracy_before: float


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
    # Where group rounds run (node.runtime.backends): this thread by default; worker
    # processes or Ray to use more cores or machines. The network closes it on shutdown.
    backend: Backend = field(default_factory=SerialBackend)
    agents: list[NodeAgent] = field(default_factory=list, init=False)
    history: list[RoundStats] = field(default_factory=list, init=False)
    _groups: dict[int, _GroupState] = field(default_factory=dict, init=False)
    _round: int = field(default=0, init=False)
    _contributions: dict[str, float] = field(default_factory=dict, init=False)
    _contribution_seconds: float = field(default=0.0, init=False)
    _aggregations: dict[int, str] = field(default_factory=dict, init=False)
    # (group, sibling) -> the sibling's accuracy on the group's members' data
    _siblings: dict[tuple[int, int], float] = field(default_factory=dict, init=False)
    # group -> member -> flat update of the group's last round (for splits)
    _updates: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, init=False)
    _drifts: list[_Drift] = field(default_factory=list, init=False)
    # round -> node id -> hidden cluster that round (drift changes it)
    _clusters: dict[int, dict[str, int]] = field(default_factory=dict, init=False)
    shared: dict[int, int] = field(default_factory=dict, init=False)  # round -> groups shared
    merges: list[tuple[int, int, int]] = field(default_factory=list, init=False)
    splits: list[tuple[int, int, list[str]]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        # Every node's data in one pool; nodes hold views into it, workers map it once.
        self._pool, self._slices = DataPool.of(self.data)
        self.data = [self._pool.node(s) for s in self._slices]
        self._pooled: set[str] = set()  # nodes whose data is the pool's (not drifted)
        self._index: dict[str, int] = {}  # node id -> its index in agents
        self._attacks: dict[str, str] = {}  # node id -> the poisoning attack it makes
        self._oldest_beat = -math.inf  # the oldest registered node's last heartbeat
        # The latest snapshot of each group, fetched once per change, for every agent.
        self._store = SnapshotStore()
        self._rng = random.Random(cfg.seed)
        # A sibling must beat chance with confidence (meta.is_sibling): 1 / classes.
        classes = max((nd.train.num_classes for nd in self.data), default=0)
        self._chance = 1.0 / classes if classes else 0.0
        policy_cfg = PolicyConfig(cfg.switch_threshold, cfg.cooldown_rounds, cfg.top_k)
        self._http = _shared_http_client(self.registry_url, self.ca_cert)
        # One initial model for the domain (same seed for every node): models that
        # start apart cannot be averaged (McMahan et al., 2017, fig. 1), and groups
        # and siblings average them. Built once: each learner copies its weights.
        factory = self.model_factory
        if factory is None:
            initial = build_model(cfg.dataset, seed=cfg.seed)
            factory = lambda _: initial  # noqa: E731
        for i, nd in enumerate(self.data):
            learner = Learner(
                factory(i),
                nd,
                learning_rate=cfg.learning_rate,
                batch_size=cfg.batch_size,
                epochs=cfg.local_epochs,
                seed=cfg.seed + i,
            )
            node_id = f"{self.node_prefix}-{i:03d}"
            self._pooled.add(node_id)
            self._index[node_id] = i
            self.agents.append(
                NodeAgent(
                    node_id=node_id,
                    learner=learner,
                    client=RegistryClient(
                        self.registry_url,
                        retries=HTTP_RETRIES,
                        backoff=0.25,
                        credentials=self.credentials,
                        client=self._http,
                    ),
                    domain=cfg.domain,
                    address=f"in-process/{node_id}",
                    policy=cfg.policy,
                    policy_config=policy_cfg,
                    max_capacity=cfg.max_capacity,
                    aggregation=cfg.strategy,
                    cluster=nd.cluster,
                    store=self._store,
                    sibling_view=self._components if cfg.meta_federation else None,
                )
            )

    @property
    def round(self) -> int:
        """Rounds completed."""
        return self._round

    def start(self) -> None:
        """Start the backend, register every node and train each alone for the warm-up
        epochs."""
        if self.agents:  # the workers' model template: the nodes' architecture
            with self.agents[0].learner.module() as model:
                flower = logging.getLogger(FLOWER_LOGGER_NAME).getEffectiveLevel()
                self.backend.start(WorkerSetup(copy.deepcopy(model), None, flower), self._pool)
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
        # Placement in waves: the groups of a wave's listing are scored in batch for the
        # whole wave; groups created within the wave are scored by each agent alone.
        unplaced = [a for a in self.agents if a.group_id is None and a.registered]
        for start in range(0, len(unplaced), PLACEMENT_WAVE):
            wave = unplaced[start : start + PLACEMENT_WAVE]
            self._prefetch_scores(wave)
            for agent in wave:
                agent.choose_group(rnd)
                self._keep_alive()
            self._forget_prefetched()
        rosters = self._rosters()
        group_acc: dict[int, float] = {}
        tasks = [self._task(gid, members) for gid, members in sorted(rosters.items())]
        for outcome in self.backend.run(tasks):  # as each group's round is done
            accuracy = self._apply(outcome, rosters[outcome.group_id])
            if accuracy is not None:
                group_acc[outcome.group_id] = accuracy
            self._keep_alive()
        group_acc = dict(sorted(group_acc.items()))
        for agent in self.agents:
            if agent.group_id is None:  # registry away or no group: keep learning alone
                agent.learner.train()
        if cfg.meta_federation and rnd % cfg.meta_every_rounds == 0:
            migrations += self.meta_round(rnd)
        if rnd % cfg.evaluate_every_rounds == 0:
            self._prefetch_scores([a for a in self.agents if a.group_id is not None])
            for agent in self.agents:
                if isinstance(agent.reconsider(rnd), Migrate | Leave):
                    migrations += 1
                self._keep_alive()
            self._forget_prefetched()
        node_acc = {a.node_id: a.learner.evaluate("val").accuracy for a in self.agents}
        if rnd % cfg.heartbeat_every_rounds == 0:
            for agent in self.agents:
                if agent.registered:
                    agent.heartbeat({"accuracy": node_acc[agent.node_id]})
                else:
                    agent.ensure_registered()
        for agent in self.agents:
            agent.rounds_since_move += 1
        self._clusters[rnd] = {a.node_id: a.cluster or 0 for a in self.agents}
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

    def _keep_alive(self) -> None:
        """Heartbeat every registered node whose last heartbeat is ``heartbeat_seconds``
        old (with the metrics it last sent), so a long round expires no one."""
        now = time.monotonic()
        limit = self.config.heartbeat_seconds
        # Called once per node in the round's loops: scan only when some node may be due
        # (beats only move forward, so the oldest seen at the last scan is a lower bound).
        if now - self._oldest_beat <= limit:
            return
        for agent in self.agents:
            if agent.registered and now - agent.last_beat > limit:
                agent.heartbeat(agent.last_metrics)
        self._oldest_beat = min((a.last_beat for a in self.agents if a.registered), default=now)

    # --- candidate scoring, batched --------------------------------------------------

    def _prefetch_scores(self, deciding: Sequence[NodeAgent]) -> None:
        """Score now what ``deciding`` agents will score when they decide: each agent's
        ``scoring_plan`` on one group listing (plus its current group, which ``reconsider``
        scores), gathered by group; per group model one forward pass over the stacked
        validation data of every agent scoring it, split back per agent
        (``NodeAgent.prefetch``). The agents still decide one after another against the
        live registry: a group whose snapshot changed meanwhile, or that an agent's live
        plan adds, is scored by the agent itself. A snapshot that cannot be fetched or
        fails its checks is left to the agents, which record it as before."""
        if not self.config.batch_scoring or not deciding:
            return
        client = deciding[0].client
        signature = deciding[0].signature
        try:
            listing = client.list_groups(domain=self.config.domain)
        except RegistryClientError as exc:
            log.warning("candidate scoring not batched: %s", exc)
            return
        rounds = {g.id: g.model_round for g in listing}
        scorers: dict[int, list[NodeAgent]] = {}
        for agent in deciding:
            if agent.signature != signature or not len(agent.learner.data.val):
                continue  # another architecture, or nothing to score: it scores alone
            plan = agent.scoring_plan(listing, exclude=agent.group_id)
            current = [agent.group_id] if agent.group_id in rounds else []
            for gid in current + plan:
                scorers.setdefault(gid, []).append(agent)
        for gid, agents in sorted(scorers.items()):
            try:
                snap = self._store.latest(client, gid, signature, rounds[gid])
            except (RemoteInputError, RegistryClientError):
                continue
            if snap is None:
                continue
            with agents[0].learner.module() as scratch:
                batch = batch_example_scores(scratch, snap.weights, agents)
            for agent, scores in zip(agents, batch, strict=True):
                agent.prefetch(gid, snap.sha256, scores)

    def _forget_prefetched(self) -> None:
        for agent in self.agents:
            agent.forget_prefetched()

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
            host.signature,
            newer_than=state.round if state is not None else -1,
            store=self._store,
            loss=lambda weights: host.learner.evaluate("val", weights=weights).loss,
            rejections=host.rejections,
        )
        if state is None:
            state = _GroupState(host.learner.get_weights(), 0)
        if newer is not None:  # resume from it, or past it when it is unusable
            state = _GroupState(newer.weights or state.weights, newer.round)
        self._groups[gid] = state
        return state

    def _member(self, agent: NodeAgent, weights: list[np.ndarray] | None = None) -> MemberSpec:
        learner = agent.learner
        data: NodeSlices | NodeData = (
            self._slices[self._index[agent.node_id]]
            if agent.node_id in self._pooled
            else learner.data
        )
        return MemberSpec(
            agent.node_id,
            data,
            learner.seed,
            learner.epochs_done,
            learner.learning_rate,
            learner.batch_size,
            learner.momentum,
            weights,
            self._attacks.get(agent.node_id),
        )

    def _task(self, gid: int, agents: list[NodeAgent]) -> GroupTask:
        """Group ``gid``'s next round among ``agents``, from the group's current model."""
        state = self._group_model(gid, agents[0])
        return GroupTask(
            gid,
            state.round + 1,
            state.weights,
            tuple(self._member(a) for a in agents),
            self._aggregation(gid, agents[0]),
            self.config.local_epochs,
            self.config.measure_contribution,
        )

    def _apply(self, outcome: GroupOutcome, agents: list[NodeAgent]) -> float | None:
        """Carry a group round's outcome out: make its registry calls as the host and
        members (``replay``), then the members adopt the group's new model; returns its
        accuracy. A refused upload (another host, or no longer a member) leaves the group
        and its members as they were."""
        gid, result = outcome.group_id, outcome.result
        host = agents[0]
        books = {a.node_id: a.rejections for a in agents} | {f"group {gid}": host.rejections}
        merge_rejections(outcome, books)
        for agent in agents:
            agent.learner.epochs_done = outcome.epochs_done.get(
                agent.node_id, agent.learner.epochs_done
            )
        result.refused = replay(outcome, host.client, {a.node_id: a.client for a in agents})
        if result.refused is not None:
            return None
        for node, name, args, _ in outcome.calls:  # our own upload: no one here fetches it back
            if node is None and name == "upload_model":
                self._store.put(gid, host.signature, args[1], args[2], result.weights)
        for agent in agents:
            agent.learner.set_weights(outcome.final.get(agent.node_id, result.weights))
        state = self._groups[gid]
        start = state.weights
        if result.aggregated:
            state.weights, state.round = result.weights, result.round
        if self.config.meta_federation:  # the members' updates, for a split's test
            self._updates[gid] = _flat_updates(result.updates, start)
        for evaluation in result.evaluations:
            self._agent(evaluation.member).note_round(
                gid, evaluation.accuracies[0], evaluation.own_accuracy
            )
        self._contributions.update(result.contributions)
        self._contribution_seconds += result.contribution_seconds
        return result.accuracy

    def set_attack(self, node_id: str, attack: str | None) -> None:
        """From the next round on, node ``node_id`` sends poisoned updates of kind
        ``attack`` (``node.federation.adversary.ATTACKS``; it answers evaluations
        honestly), or is honest again with None: for studies of robustness. Raises
        ``ValueError`` for an unknown node or attack."""
        if node_id not in self._index:
            raise ValueError(f"no node {node_id!r} in this network")
        if attack is None:
            self._attacks.pop(node_id, None)
            return
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
        self._attacks[node_id] = attack

    def bare_round(self) -> float:
        """Seconds the bare local training of this round's work takes on this network's
        backend: every node trains ``local_epochs`` epochs from its current model, alone
        (no registry, aggregation, evaluation or scoring), in batches of the group
        capacity; nothing is kept. The baseline of the network's overhead ratio."""
        size = max(1, self.config.max_capacity)
        tasks = [
            GroupTask(
                -1,
                0,
                [],
                tuple(self._member(a, a.learner.get_weights()) for a in self.agents[i : i + size]),
                self.config.strategy,
                self.config.local_epochs,
                False,
            )
            for i in range(0, len(self.agents), size)
        ]
        started = time.perf_counter()
        self.backend.run_bare(tasks)
        return time.perf_counter() - started

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

    # --- meta-federation ----------------------------------------------------------------

    @property
    def links(self) -> list[tuple[int, int, float]]:
        """Current sibling links between live groups, ``(group_a, group_b, fit)`` with
        ``a < b``; ``fit`` is the higher of the two directions' accuracies (a link holds
        when either group found the other a sibling at the last meta round)."""
        live = set(self._rosters())
        best: dict[tuple[int, int], float] = {}
        for (g, s), fit in self._siblings.items():
            if g in live and s in live:
                key = (min(g, s), max(g, s))
                best[key] = max(best.get(key, 0.0), fit)
        return [(a, b, f) for (a, b), f in sorted(best.items())]

    def _components(self) -> dict[int, int]:
        return meta.sibling_components(self._rosters(), [(a, b) for a, b, _ in self.links])

    def _fit(
        self, weights: list[np.ndarray], x: torch.Tensor, y: torch.Tensor, sizes: list[int]
    ) -> meta.Fit:
        """``weights`` on the stacked members' data: per member, summed as a host would
        (in a workspace module of the domain's architecture: every node shares it)."""
        with self.agents[0].learner.module(weights) as model:
            per_member = meta.member_fits(meta.score_examples(model, x, y), sizes)
        return sum(per_member, meta.Fit(0, 0.0, 0))

    @property
    def group_models(self) -> dict[int, list[np.ndarray]]:
        """Each live group's current model (copies), by group id."""
        return {
            g: [w.copy() for w in self._groups[g].weights]
            for g in self._rosters()
            if g in self._groups
        }

    def meta_round(self, rnd: int) -> int:
        """Sibling discovery, knowledge sharing, merges and splits (``run_round`` calls it
        every ``meta_every_rounds`` rounds); returns the number of nodes that changed
        group."""
        rosters = self._rosters()
        gids = sorted(g for g in rosters if g in self._groups)
        if len(gids) >= 2:
            vals = {g: _members_val(rosters[g]) for g in gids}
            found = self._discover_siblings(rnd, rosters, gids, vals)
            self._share(rnd, rosters, found, vals)
        moved = self._merge(rnd, self._rosters())
        moved += self._split(rnd, self._rosters())
        return moved

    def _discover_siblings(
        self,
        rnd: int,
        rosters: dict[int, list[NodeAgent]],
        gids: list[int],
        vals: Mapping[int, _Stacked],
    ) -> dict[int, list[tuple[meta.SiblingScore, meta.Fit]]]:
        """Score candidate groups' models on each group's members' validation data."""
        cfg = self.config
        links = [(a, b) for a, b, _ in self.links]
        found: dict[int, list[tuple[meta.SiblingScore, meta.Fit]]] = {}
        for gid in gids:
            self._keep_alive()  # scoring every group's candidates takes long at scale
            members = rosters[gid]
            x, y, sizes = vals[gid]
            own = self._fit(self._groups[gid].weights, x, y, sizes)
            found[gid] = []
            for other in meta.sibling_candidates(gid, gids, links, self._rng, cfg.meta_candidates):
                fit = self._fit(self._groups[other].weights, x, y, sizes)
                self._siblings.pop((gid, other), None)
                if meta.is_sibling(own, fit, cfg.switch_threshold, self._chance):
                    score = meta.SiblingScore(
                        gid, other, fit.accuracy, own.accuracy, fit.loss, fit.examples
                    )
                    found[gid].append((score, own))
                    self._siblings[(gid, other)] = fit.accuracy
            meta.report_group_siblings(members[0].client, gid, rnd, [s for s, _ in found[gid]])
        return found

    def _share(
        self,
        rnd: int,
        rosters: dict[int, list[NodeAgent]],
        found: dict[int, list[tuple[meta.SiblingScore, meta.Fit]]],
        vals: Mapping[int, _Stacked],
    ) -> None:
        """Each group's model := the examples x fit weighted mean of its own and its
        siblings' (``meta.sharing_weights``), all computed from the models before any
        changes; only the model crosses groups, membership stays. The mean is kept only
        when it fits the group's members' data as well as the group's own model, by the
        same 5% rule as siblings (``meta.is_sibling``): averaging never makes it worse."""
        examples = {g: sum(a.learner.num_train_examples for a in ms) for g, ms in rosters.items()}
        new: dict[int, list[np.ndarray]] = {}
        for gid, sibs in found.items():
            if not sibs:
                continue
            own_fit = sibs[0][1].accuracy
            weights = meta.sharing_weights(
                (examples[gid], own_fit), [(examples[s.sibling_id], s.fit) for s, _ in sibs]
            )
            models = [self._groups[gid].weights] + [
                self._groups[s.sibling_id].weights for s, _ in sibs
            ]
            mean = weighted_mean(models, weights)
            x, y, sizes = vals[gid]
            if meta.is_sibling(
                sibs[0][1], self._fit(mean, x, y, sizes), self.config.switch_threshold, self._chance
            ):
                new[gid] = mean
            else:
                log.info("group %s: the mean with %s siblings fits worse; kept", gid, len(sibs))
        for gid, model in new.items():
            self._groups[gid].weights = model
            for agent in rosters[gid]:  # members adopt the group's new model, as after a round
                agent.learner.set_weights(model)
        self.shared[rnd] = len(new)

    def _merge(self, rnd: int, rosters: dict[int, list[NodeAgent]]) -> int:
        """Mutual siblings whose members together fit the capacity merge, smaller into
        larger, through the registry; a refusal is skipped."""
        sizes = {g: len(ms) for g, ms in rosters.items()}
        capacity = self.config.max_capacity
        moved = 0
        for small, large in meta.merge_plan(sizes, list(self._siblings), capacity):
            host = rosters[small][0]
            if not meta.merge_into(host.client, small, large):
                continue
            fit = self._siblings.get((small, large), 0.0)
            reason = (
                f"group {small} merged into its sibling group {large}: its model fits "
                f"group {small}'s data {fit:.2f}, and {sizes[small]} + {sizes[large]} members "
                f"fit the capacity of {capacity}"
            )
            for agent in rosters[small]:
                agent.record_move(rnd, large, reason)
                moved += 1
            self._groups.pop(small, None)
            self.merges.append((rnd, small, large))
            log.info("round %s: %s", rnd, reason)
        return moved

    def _split(self, rnd: int, rosters: dict[int, list[NodeAgent]]) -> int:
        """A group whose members' updates disagree splits (Sattler et al., 2020)."""
        moved = 0
        for gid, members in sorted(rosters.items()):
            self._keep_alive()
            updates = {
                n: u
                for n, u in self._updates.get(gid, {}).items()
                if n in {a.node_id for a in members}
            }
            parts = meta.sattler_split(updates, self.config.split_threshold)
            if parts is None:
                continue
            _, leaving, cross = parts
            host = members[0]
            if not meta.split_off(
                host.client, gid, leaving, f"{self.config.domain}-split-{gid}-r{rnd}"
            ):
                continue
            reason = (
                f"split from group {gid}: members' updates disagree (largest cosine "
                f"similarity across the two parts {cross:.3f} < {self.config.split_threshold:g})"
            )
            new_gid: int | None = None
            for node_id in leaving:
                agent = self._agent(node_id)
                try:
                    new_gid = agent.client.get_node().group_id
                except RegistryClientError as exc:
                    log.warning("%s: group after split unknown: %s", node_id, exc)
                    continue
                if new_gid is not None and new_gid != gid:
                    agent.record_move(rnd, new_gid, reason)
                    moved += 1
            if new_gid is not None and new_gid != gid:
                state = self._groups[gid]
                self._groups[new_gid] = _GroupState([w.copy() for w in state.weights], 0)
            self.splits.append((rnd, gid, list(leaving)))
            self._updates.pop(gid, None)
            log.info("round %s: %s", rnd, reason)
        return moved

    # --- drift ----------------------------------------------------------------------------

    def apply_drift(self, replacements: Mapping[int, NodeData]) -> None:
        """Swap the data of the nodes at these indices for ``replacements`` from now on
        (the model is kept; ``agent.cluster`` follows ``NodeData.cluster``); recorded for
        ``drift_report``. Raises ``ValueError`` for an index out of range."""
        for i, nd in sorted(replacements.items()):
            if not 0 <= i < len(self.agents):
                raise ValueError(f"no node {i}: the network has {len(self.agents)}")
            agent = self.agents[i]
            old = agent.learner
            before = (
                self.history[-1].node_accuracy[agent.node_id]
                if self.history
                else old.evaluate("val").accuracy
            )
            with old.module() as model:
                learner = Learner(
                    model,
                    nd,
                    learning_rate=old.learning_rate,
                    batch_size=old.batch_size,
                    epochs=old.epochs,
                    seed=old.seed,
                    momentum=old.momentum,
                )
            self._drifts.append(
                _Drift(agent.node_id, self._round, agent.cluster or 0, nd.cluster, before)
            )
            agent.learner = learner
            self._pooled.discard(agent.node_id)
            agent.cluster = nd.cluster
            agent.data_changed()
            log.info(
                "%s: data drifted before round %s (cluster %s -> %s)",
                agent.node_id,
                self._round + 1,
                self._drifts[-1].old_cluster,
                nd.cluster,
            )

    def drift_report(self) -> dict[str, dict[str, Any]]:
        """Per drifted node: ``round`` of the drift (rounds completed then), ``old_cluster``,
        ``new_cluster``, ``rounds_to_rehome`` (rounds after the drift until the node sits
        in a group whose majority cluster is its new one; None if never), and validation
        accuracy ``accuracy_before`` (the round before), ``lowest_after`` and
        ``rounds_to_recover`` (until back within 0.02 of before; None if never)."""
        out: dict[str, dict[str, Any]] = {}
        for d in self._drifts:
            after = [s for s in self.history if s.round > d.round]
            rehome: int | None = None
            recover: int | None = None
            for stats in after:
                clusters = self._clusters.get(stats.round, {})
                group = next((g for g, ms in stats.groups.items() if d.node_id in ms), None)
                if rehome is None and group is not None:
                    counts = Counter(clusters.get(m, 0) for m in stats.groups[group])
                    top = max(counts.values())
                    majority = {c for c, n in counts.items() if n == top}
                    if majority == {d.new_cluster}:
                        rehome = stats.round - d.round
                acc = stats.node_accuracy.get(d.node_id, 0.0)
                if recover is None and acc >= d.accuracy_before - 0.02:
                    recover = stats.round - d.round
            lows = [s.node_accuracy.get(d.node_id, 0.0) for s in after]
            out[d.node_id] = {
                "round": d.round,
                "old_cluster": d.old_cluster,
                "new_cluster": d.new_cluster,
                "rounds_to_rehome": rehome,
                "accuracy_before": d.accuracy_before,
                "lowest_after": min(lows) if lows else None,
                "rounds_to_recover": recover,
            }
        return out

    def purity(self) -> float:
        """Group purity (``node.runtime.scores.group_purity``): the share of nodes whose
        group's majority cluster is their own; a node in no group counts as a group of one."""
        if not self.agents:
            return 0.0
        return group_purity(
            [a.cluster or 0 for a in self.agents], [a.group_id for a in self.agents]
        )

    def _agent(self, node_id: str) -> NodeAgent:
        return self.agents[self._index[node_id]]

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
        """Every node leaves its group; then the nodes' shared HTTP client is closed."""
        for agent in self.agents:
            agent.leave()
            agent.client.close()  # a no-op on the shared client; kept for clients swapped in
        self._http.close()
        self.backend.close()
        self._pool.close()


def _shared_http_client(registry_url: str, ca_cert: Path | None) -> httpx.Client:
    """The one HTTP client (connection pool, TLS context) every node of a network uses.

    Each ``RegistryClient`` sends its own node's token in every request's header, so
    sharing the client shares no identity (the registry sets no cookies). Raises
    ``ConfigError`` for a bad URL or an unreadable ``ca_cert``.
    """
    try:
        base_url = check_url(registry_url)
    except ValueError as exc:
        raise ConfigError(f"registry URL: {exc}") from exc
    verify = tls_context(ca_cert)
    transport = httpx.HTTPTransport(
        retries=HTTP_RETRIES,
        verify=verify,
        limits=httpx.Limits(
            max_connections=HTTP_POOL_CONNECTIONS, max_keepalive_connections=HTTP_POOL_CONNECTIONS
        ),
    )
    return httpx.Client(
        base_url=base_url, timeout=HTTP_TIMEOUT_S, transport=transport, verify=verify
    )


def _flat_updates(
    updates: Sequence[MemberUpdate], start: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """Each member's update of a round (its weights minus the round's start), flat float64."""
    return {
        u.member: np.concatenate(
            [(np.asarray(w, np.float64) - s).ravel() for w, s in zip(u.weights, start, strict=True)]
        )
        for u in updates
    }


def batch_example_scores(
    model: torch.nn.Module, weights: list[np.ndarray], agents: Sequence[NodeAgent]
) -> list[meta.ExampleScores]:
    """``weights`` on each agent's validation split, per example, in ``agents``' order: one
    forward pass (``meta.score_examples``) over their stacked data, split back per agent;
    what each agent's ``NodeAgent.score_weights(weights)`` gives, up to float rounding.
    ``model`` (of the agents' architecture) is a scratch model: ``weights`` are loaded into
    it. Raises ``WeightsMismatchError`` when ``weights`` do not fit it, ``ValueError`` when
    the agents hold no validation example."""
    load_weights(model, weights)
    x, y, sizes = _members_val(agents)
    scores = meta.score_examples(model, x, y)
    bounds = np.cumsum([0, *sizes])
    return [
        meta.ExampleScores(scores.correct[a:b], scores.loss[a:b])
        for a, b in itertools.pairwise(bounds)
    ]


def _members_val(members: Sequence[NodeAgent]) -> _Stacked:
    """The members' validation data stacked (x float32, y int64) and each one's size."""
    vals = [a.learner.data.val for a in members]
    x = torch.from_numpy(np.concatenate([v.x for v in vals]).astype(np.float32))
    y = torch.from_numpy(np.concatenate([v.y for v in vals]).astype(np.int64))
    return x, y, [len(v) for v in vals]


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

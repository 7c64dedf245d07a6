"""The demo: a registry, N nodes on heterogeneous data, a drift, a progress bar, summary.json."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mycelium.runlog import RunLog
from node.credentials import CredentialStore
from node.errors import RegistryUnavailableError
from node.federation.strategies import set_flower_log_level
from node.learning.partition import PartitionSpec
from node.registry_client import RegistryClient
from node.runtime.backends import BACKENDS, make_backend
from node.runtime.network import InProcessNetwork, NetworkConfig, RoundStats, local_only_accuracy

__all__ = ["DEFAULT_CLUSTERS", "DemoConfig", "check_registry", "migrations_table", "run_demo"]

log = logging.getLogger(__name__)

# Loggers whose INFO lines tell the story of a run: a node's joins and migrations, the
# network's drift, merges and splits.
_NARRATED = ("node.runtime.agent", "node.runtime.network")
DEFAULT_CLUSTERS = 3


@dataclass
class DemoConfig:
    """Flags of `mycelium demo` / demo.py.

    The defaults are the README's demo: 12 digits nodes in 3 hidden clusters, groups of at
    most 5, 16 rounds; at round 8 (``drift_at`` None: half-way) a quarter of the nodes
    switch to another cluster's data and must re-home. ``check()`` names a bad flag.
    """

    nodes: int = 12
    rounds: int = 16
    duration: float | None = None
    dataset: str = "digits"
    partition: str = "clustered"
    clusters: int = DEFAULT_CLUSTERS
    cluster_mode: str = "rotation"
    capacity: int = 5
    meta_federation: bool = True
    drift: bool = True
    drift_at: int | None = None  # the round whose start sees the drift; None: rounds // 2
    drift_fraction: float = 0.25
    tensorboard: Path | None = None
    alpha: float = 0.5
    policy: str = "local"
    strategy: str = "fedavg"
    samples_per_node: int | None = None
    seed: int = 0
    output: Path = Path("output")
    registry_url: str | None = None
    # The registry at registry_url was started for this run (the viz demo starts one): its
    # nodes' tokens die with it, so none are written under output/credentials/.
    registry_is_ours: bool = field(default=False, repr=False)
    ca_cert: Path | None = None  # PEM CA that an https --registry-url's certificate chains to
    local_only: bool = True
    # Where group rounds run (node.runtime.backends.BACKENDS); workers: processes or Ray
    # CPUs (None: every core); ray_address: a Ray cluster's head (None: a local Ray).
    backend: str = "serial"
    workers: int | None = None
    ray_address: str | None = None
    progress: bool = True
    node_prefix: str = "node"
    on_registry_ready: Callable[[str], None] | None = field(default=None, repr=False)
    on_round: Callable[[RoundStats], None] | None = field(default=None, repr=False)
    on_finish: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def drift_round(self) -> int | None:
        """The round at whose start the drift happens; None: no drift in this run."""
        if not self.drift or self.partition != "clustered" or self.clusters < 2:
            return None
        if self.drift_at is not None:
            return self.drift_at
        if self.duration is not None or self.rounds < 2 or self.drifting_nodes < 1:
            return None  # no known length to drift half-way through, or no node to drift
        return max(2, self.rounds // 2)

    @property
    def drifting_nodes(self) -> int:
        """How many nodes a drift moves (PartitionSpec.drifted's rounding)."""
        return round(self.drift_fraction * self.nodes)

    def check(self) -> None:
        """Raise ValueError naming the flag when the drift or backend flags cannot work
        together."""
        if self.backend not in BACKENDS:
            raise ValueError(
                f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.workers is not None and self.backend == "serial":
            raise ValueError("--workers needs --backend processes or ray")
        if self.ray_address is not None and self.backend != "ray":
            raise ValueError("--ray-address needs --backend ray")
        if self.ray_address is not None and not self.ray_address.strip():
            raise ValueError("--ray-address is empty: give the cluster's head, HOST:6379")
        if not 0.0 < self.drift_fraction <= 1.0:
            raise ValueError(f"--drift-fraction must be in (0, 1], got {self.drift_fraction:g}")
        if self.drift_at is None or not self.drift:
            return
        if self.drift_at < 1:
            raise ValueError(f"--drift-at must be a round from 1, got {self.drift_at}")
        if self.duration is None and self.drift_at > self.rounds:
            raise ValueError(
                f"--drift-at {self.drift_at} is beyond the last round (--rounds {self.rounds})"
            )
        if self.partition != "clustered" or self.clusters < 2:
            raise ValueError(
                "--drift-at needs hidden clusters to drift between: "
                "--partition clustered and --clusters 2 or more"
            )
        if self.drifting_nodes < 1:
            raise ValueError(
                f"--drift-fraction {self.drift_fraction:g} of --nodes {self.nodes} drifts no node"
            )


def check_registry(url: str, ca_cert: Path | None = None) -> None:
    """Raise RegistryUnavailableError (or the client's TLS or URL error) unless a registry
    answers at `url`."""
    with RegistryClient(url, retries=0, ca_cert=ca_cert) as client:
        if not client.healthy():
            raise RegistryUnavailableError(f"no registry answers at {client.base_url}/healthz")


@contextmanager
def _registry(cfg: DemoConfig) -> Iterator[str]:
    """The registry to use: the given URL, or one started here on a free port."""
    if cfg.registry_url:
        check_registry(cfg.registry_url, cfg.ca_cert)
        yield cfg.registry_url
        return
    from registry.server import BackgroundRegistry
    from registry.settings import RegistrySettings

    data_dir = Path(tempfile.mkdtemp(prefix="mycelium-registry-"))
    try:
        with BackgroundRegistry(RegistrySettings(data_dir=data_dir)) as reg:
            yield reg.url
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl+C / SIGTERM set `stop`, so the current round ends and the summary is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second Ctrl+C: stop at once
            raise KeyboardInterrupt
        tqdm.write("stopping after this round (Ctrl+C again to abort)...")
        stop.set()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_demo(cfg: DemoConfig, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to `output/summary.json`).

    Raises ValueError for flags that cannot work together (``DemoConfig.check``),
    RegistryUnavailableError when a given registry does not answer, OSError when the
    output folder cannot be written, ``BackendError`` when the backend cannot run (Ray
    missing or its cluster unreachable, a worker died).
    """
    cfg.check()
    backend = make_backend(cfg.backend, workers=cfg.workers, address=cfg.ray_address)
    stop = stop or threading.Event()
    set_flower_log_level(logging.WARNING)
    torch.set_num_threads(1)  # small models: one thread per process is fastest here
    cfg.output.mkdir(parents=True, exist_ok=True)
    spec = PartitionSpec(
        dataset=cfg.dataset,
        scheme=cfg.partition,
        num_partitions=cfg.nodes,
        clusters=cfg.clusters,
        cluster_mode=cfg.cluster_mode,
        alpha=cfg.alpha,
        samples_per_node=cfg.samples_per_node,
        seed=cfg.seed,
    )
    data = spec.split()
    net_cfg = NetworkConfig(
        dataset=cfg.dataset,
        domain=cfg.dataset,
        policy=cfg.policy,
        strategy=cfg.strategy,
        max_capacity=cfg.capacity,
        meta_federation=cfg.meta_federation,
        seed=cfg.seed,
    )
    board = RunLog(cfg.tensorboard) if cfg.tensorboard is not None else None
    drift: dict[str, Any] | None = None
    started = time.monotonic()
    with _registry(cfg) as url, _stop_on_signals(stop), _node_log_above_the_bar():
        if cfg.on_registry_ready:
            cfg.on_registry_ready(url)
        # Against a registry of its own the nodes' tokens die with it; against a given one
        # they are kept under output/credentials/, so the demo can run there again.
        store = (
            CredentialStore(cfg.output) if cfg.registry_url and not cfg.registry_is_ours else None
        )
        net = InProcessNetwork(
            url,
            data,
            net_cfg,
            node_prefix=cfg.node_prefix,
            credentials=store,
            ca_cert=cfg.ca_cert,
            backend=backend,
        )
        try:
            net.start()
            total = None if cfg.duration else cfg.rounds
            with tqdm(total=total, disable=not cfg.progress, unit="round") as bar:
                while not stop.is_set():
                    if cfg.duration is None and net.round >= cfg.rounds:
                        break
                    if cfg.duration is not None and time.monotonic() - started >= cfg.duration:
                        break
                    if drift is None and net.round + 1 == cfg.drift_round:
                        drift = _apply_drift(cfg, spec, net)
                    stats = net.run_round()
                    moves = sum(1 for a in net.agents for m in a.moves if m.from_group is not None)
                    bar.set_postfix(
                        round=stats.round,
                        groups=len(stats.groups),
                        migrations=moves,
                        acc=f"{stats.mean_accuracy:.3f}",
                    )
                    bar.update(1)
                    if board is not None:
                        board.write_round(net, stats)
                    if cfg.on_round:
                        cfg.on_round(stats)
        finally:
            if board is not None:
                board.close()
            if cfg.on_finish:  # before the nodes leave: the network as it ended
                cfg.on_finish()
            summary = _summary(cfg, net, started)
            if drift is not None:
                # the network's account: rounds to re-home, the accuracy dip and recovery
                summary["drift"] = {**drift, "report": net.drift_report()}
            net.shutdown()
    if cfg.local_only and not stop.is_set():
        local = local_only_accuracy(data, net_cfg, net.round)
        summary["final"]["local_only_mean_accuracy"] = float(np.mean(list(local.values())))
        summary["final"]["local_only_worst_accuracy"] = float(min(local.values()))
        for i, agent in enumerate(net.agents):
            summary["nodes"][agent.node_id]["local_only_test_accuracy"] = local[i]
    path = cfg.output / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    summary["path"] = str(path)
    return summary


@contextmanager
def _node_log_above_the_bar() -> Iterator[None]:
    """Node decisions (joins, migrations and their reasons) and the network's (drift,
    merges, splits) as indented lines printed above the progress bar, never through it
    (tqdm's logging_redirect_tqdm)."""
    loggers = [logging.getLogger(name) for name in _NARRATED]
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("  %(message)s"))
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(console)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        # Swaps the console handlers of these loggers for ones that write through tqdm.
        with logging_redirect_tqdm(loggers=[*loggers, logging.root]):
            yield
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(console)
            lg.setLevel(level)
            lg.propagate = propagate


def _apply_drift(cfg: DemoConfig, spec: PartitionSpec, net: InProcessNetwork) -> dict[str, Any]:
    """Switch a fraction of the nodes to another hidden cluster's data, before the round
    (the network logs each drifted node)."""
    replacements = spec.drifted(cfg.drift_fraction, cfg.seed)
    before = {i: net.agents[i].cluster for i in replacements}
    net.apply_drift(replacements)
    nodes = {
        net.agents[i].node_id: {"from_cluster": before[i], "to_cluster": nd.cluster}
        for i, nd in sorted(replacements.items())
    }
    return {"round": net.round + 1, "fraction": cfg.drift_fraction, "nodes": nodes}


def migrations_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every migration of the run (a move from one group to another), by round then node:
    ``{"round", "node", "from", "to", "reason"}`` each (the summary's ``migrations``)."""
    rows = [
        {
            "round": m["round"],
            "node": node_id,
            "from": m["from"],
            "to": m["to"],
            "reason": m["reason"],
        }
        for node_id, n in summary["nodes"].items()
        for m in n["migrations"]
    ]
    return sorted(rows, key=lambda r: (r["round"], r["node"]))


def _summary(cfg: DemoConfig, net: InProcessNetwork, started: float) -> dict[str, Any]:
    """Plain-data record of the run (the summary.json format, documented in README)."""
    test = net.test_accuracy() if net.agents else {}
    nodes: dict[str, Any] = {}
    for agent in net.agents:
        nodes[agent.node_id] = {
            "cluster": agent.cluster,
            "group_over_time": [
                next((g for g, m in h.groups.items() if agent.node_id in m), None)
                for h in net.history
            ],
            "accuracy_over_time": [h.node_accuracy.get(agent.node_id) for h in net.history],
            "final_group": agent.group_id,
            "test_accuracy": test.get(agent.node_id),
            "migrations": [m for m in agent.record()["moves"] if m["from"] is not None],
            "moves": agent.record()["moves"],
        }
    groups: dict[str, Any] = {}
    for h in net.history:
        for gid, members in h.groups.items():
            g = groups.setdefault(str(gid), {"members_over_time": {}, "performance_over_time": {}})
            g["members_over_time"][h.round] = members
            if gid in h.group_accuracy:
                g["performance_over_time"][h.round] = h.group_accuracy[gid]
    accs = [v for v in test.values() if v is not None]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config = {k: v for k, v in config.items() if not k.startswith("on_")}
    summary: dict[str, Any] = {
        "config": config,
        "rounds": net.round,
        "elapsed_seconds": time.monotonic() - started,
        "nodes": nodes,
        "groups": groups,
        "final": {
            "mean_accuracy": float(np.mean(accs)) if accs else None,
            "worst_accuracy": float(min(accs)) if accs else None,
            "groups": len({a.group_id for a in net.agents if a.group_id is not None}),
            "migrations": sum(len(n["migrations"]) for n in nodes.values()),
            "adjusted_rand_index": net.adjusted_rand_index() if net.agents else None,
        },
    }
    summary["migrations"] = migrations_table(summary)
    return summary

"""The demo: a registry, N nodes on heterogeneous data, a progress bar, a table, summary.json."""

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

from node.credentials import CredentialStore
from node.errors import RegistryUnavailableError
from node.federation.strategies import set_flower_log_level
from node.learning.partition import PartitionSpec
from node.registry_client import RegistryClient
from node.runtime.network import InProcessNetwork, NetworkConfig, RoundStats, local_only_accuracy

__all__ = ["DemoConfig", "run_demo"]

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Flags of `mycelium demo` / demo.py."""

    nodes: int = 4
    rounds: int = 20
    duration: float | None = None
    dataset: str = "digits"
    partition: str = "clustered"
    clusters: int = 2
    cluster_mode: str = "rotation"
    alpha: float = 0.5
    policy: str = "local"
    strategy: str = "fedavg"
    samples_per_node: int | None = None
    seed: int = 0
    output: Path = Path("output")
    registry_url: str | None = None
    ca_cert: Path | None = None  # PEM CA that an https --registry-url's certificate chains to
    local_only: bool = True
    progress: bool = True
    node_prefix: str = "node"
    on_registry_ready: Callable[[str], None] | None = field(default=None, repr=False)
    on_round: Callable[[RoundStats], None] | None = field(default=None, repr=False)
    on_finish: Callable[[], None] | None = field(default=None, repr=False)


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


@contextmanager
def _registry(cfg: DemoConfig) -> Iterator[str]:
    """The registry to use: the given URL, or one started here on a free port."""
    if cfg.registry_url:
        with RegistryClient(cfg.registry_url, retries=0, ca_cert=cfg.ca_cert) as client:
            if not client.healthy():
                raise RegistryUnavailableError(f"no registry answers at {client.base_url}/healthz")
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
    """Run the demo; returns the summary (also written to `output/summary.json`)."""
    stop = stop or threading.Event()
    set_flower_log_level(logging.WARNING)
    torch.set_num_threads(1)  # small models: one thread per process is fastest here
    cfg.output.mkdir(parents=True, exist_ok=True)
    data = PartitionSpec(
        dataset=cfg.dataset,
        scheme=cfg.partition,
        num_partitions=cfg.nodes,
        clusters=cfg.clusters,
        cluster_mode=cfg.cluster_mode,
        alpha=cfg.alpha,
        samples_per_node=cfg.samples_per_node,
        seed=cfg.seed,
    ).split()
    net_cfg = NetworkConfig(
        dataset=cfg.dataset,
        domain=cfg.dataset,
        policy=cfg.policy,
        strategy=cfg.strategy,
        seed=cfg.seed,
    )
    started = time.monotonic()
    with _registry(cfg) as url, _stop_on_signals(stop):
        if cfg.on_registry_ready:
            cfg.on_registry_ready(url)
        # Against a registry of its own the nodes' tokens die with it; against a given one
        # they are kept under output/credentials/, so the demo can run there again.
        store = CredentialStore(cfg.output) if cfg.registry_url else None
        net = InProcessNetwork(
            url,
            data,
            net_cfg,
            node_prefix=cfg.node_prefix,
            credentials=store,
            ca_cert=cfg.ca_cert,
        )
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("  %(message)s"))
        agent_log = logging.getLogger("node.runtime.agent")
        agent_log.addHandler(handler)
        agent_log.setLevel(logging.INFO)
        agent_log.propagate = False
        try:
            net.start()
            total = None if cfg.duration else cfg.rounds
            with tqdm(total=total, disable=not cfg.progress, unit="round") as bar:
                while not stop.is_set():
                    if cfg.duration is None and net.round >= cfg.rounds:
                        break
                    if cfg.duration is not None and time.monotonic() - started >= cfg.duration:
                        break
                    stats = net.run_round()
                    moves = sum(1 for a in net.agents for m in a.moves if m.from_group is not None)
                    bar.set_postfix(
                        round=stats.round,
                        groups=len(stats.groups),
                        migrations=moves,
                        acc=f"{stats.mean_accuracy:.3f}",
                    )
                    bar.update(1)
                    if cfg.on_round:
                        cfg.on_round(stats)
        finally:
            agent_log.removeHandler(handler)
            agent_log.propagate = True
            if cfg.on_finish:  # before the nodes leave: the network as it ended
                cfg.on_finish()
            summary = _summary(cfg, net, started)
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
    return {
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

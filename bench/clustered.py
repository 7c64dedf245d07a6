"""Does grouping pay? Fashion-MNIST, 4 rotation clusters, 16 nodes; five ways, one run.

(a) this policy (groups judged on own data), (b) one global FedAvg group, (c) local-only,
(d) oracle groups by true cluster, (e) the prototype's reported-accuracy policy.
Same partitions, seeds and epochs for all. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from node.federation.inprocess import train_in_memory
from node.federation.strategies import set_flower_log_level
from node.learning.data import load_dataset
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import NodeData, partition
from node.runtime.network import InProcessNetwork, NetworkConfig, local_only_accuracy
from registry.server import BackgroundRegistry
from registry.settings import RegistrySettings


def _learners(data: list[NodeData], cfg: NetworkConfig) -> list[Learner]:
    return [
        Learner(
            build_model(cfg.dataset, seed=cfg.seed + i),
            nd,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            epochs=cfg.local_epochs,
            seed=cfg.seed + i,
        )
        for i, nd in enumerate(data)
    ]


def _fixed_groups(
    data: list[NodeData], cfg: NetworkConfig, rounds: int, assignment: list[int]
) -> dict[str, Any]:
    """FedAvg inside fixed groups (global: one group; oracle: the true clusters)."""
    t0 = time.perf_counter()
    learners = _learners(data, cfg)
    for ln in learners:
        ln.train(cfg.warmup_epochs)
    for g in sorted(set(assignment)):
        members = [ln for ln, a in zip(learners, assignment, strict=True) if a == g]
        weights = members[0].get_weights()
        for rnd in range(1, rounds + 1):
            weights = train_in_memory(
                members, weights, round_=rnd, strategy=cfg.strategy, local_epochs=cfg.local_epochs
            ).weights
        for m in members:
            m.set_weights(weights)
    acc = [ln.evaluate("test").accuracy for ln in learners]
    truth = [nd.cluster for nd in data]
    return {
        "accuracies": acc,
        "ari": float(adjusted_rand_score(truth, assignment)),
        "rounds_to_settle": 0,
        "seconds": time.perf_counter() - t0,
    }


def _policy_run(
    data: list[NodeData], cfg: NetworkConfig, rounds: int, policy: str
) -> dict[str, Any]:
    """The real thing: nodes against a real registry over HTTP."""
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    try:
        with BackgroundRegistry(RegistrySettings(data_dir=tmp)) as reg:
            net = InProcessNetwork(
                reg.url, data, NetworkConfig(**{**cfg.__dict__, "policy": policy})
            )
            net.start()
            settled = 0
            previous: dict[str, int | None] = {}
            for _ in range(rounds):
                stats = net.run_round()
                now = {a.node_id: a.group_id for a in net.agents}
                if now != previous:
                    settled = stats.round
                previous = now
            acc = list(net.test_accuracy().values())
            ari = net.adjusted_rand_index()
            groups = len({a.group_id for a in net.agents})
            net.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "accuracies": acc,
        "ari": ari,
        "rounds_to_settle": settled,
        "groups": groups,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    """Run the comparison; print the table; write JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--clusters", type=int, default=4)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--samples-per-node", type=int, default=1000)
    p.add_argument("--dataset", default="fashion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/clustered.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_flower_log_level(logging.WARNING)
    torch.set_num_threads(1)

    data = partition(
        load_dataset(args.dataset),
        args.nodes,
        "clustered",
        seed=args.seed,
        clusters=args.clusters,
        cluster_mode="rotation",
        samples_per_node=args.samples_per_node,
    )
    cfg = NetworkConfig(dataset=args.dataset, domain=args.dataset, seed=args.seed)
    truth = [nd.cluster for nd in data]
    results: dict[str, dict[str, Any]] = {}
    results["a_policy_local"] = _policy_run(data, cfg, args.rounds, "local")
    results["b_global_fedavg"] = _fixed_groups(data, cfg, args.rounds, [0] * len(data))
    t0 = time.perf_counter()
    local = local_only_accuracy(data, cfg, args.rounds)
    results["c_local_only"] = {
        "accuracies": list(local.values()),
        "ari": float(adjusted_rand_score(truth, list(range(len(data))))),
        "rounds_to_settle": 0,
        "seconds": time.perf_counter() - t0,
    }
    results["d_oracle_clusters"] = _fixed_groups(data, cfg, args.rounds, truth)
    results["e_reported_policy"] = _policy_run(data, cfg, args.rounds, "reported")

    print(f"{'method':22} {'mean':>7} {'worst':>7} {'ARI':>6} {'settle':>7} {'wall s':>8}")
    for name, r in results.items():
        r["mean_accuracy"] = float(np.mean(r["accuracies"]))
        r["worst_accuracy"] = float(np.min(r["accuracies"]))
        print(
            f"{name:22} {r['mean_accuracy']:7.3f} {r['worst_accuracy']:7.3f} {r['ari']:6.2f} "
            f"{r['rounds_to_settle']:7d} {r['seconds']:8.1f}"
        )
    ours, oracle = results["a_policy_local"], results["d_oracle_clusters"]
    glob = results["b_global_fedavg"]
    targets = {
        "within_2_points_of_oracle": ours["mean_accuracy"] >= oracle["mean_accuracy"] - 0.02,
        "5_points_above_global_fedavg": ours["mean_accuracy"] >= glob["mean_accuracy"] + 0.05,
        "ari_at_least_0.9": ours["ari"] >= 0.9,
    }
    print("targets:", targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "machine": {"python": platform.python_version(), "torch": torch.__version__},
                "results": results,
                "targets": targets,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

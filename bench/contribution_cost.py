"""What measuring contributions costs: leave-one-out seconds per round against training.

For groups of 3, 5 and 10 members on IID shares, runs real Flower FedAvg rounds
(``run_group_round``) and measures each round's leave-one-out contributions the way
the in-process runtime does (n + 1 evaluations of a FedAvg model on the members'
pooled validation data). Reports the median seconds of both and the share of the
round's training time. Writes ``bench/results/contribution_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from node.federation.contribution import (
    POOLED_VAL_CAP,
    leave_one_out,
    pooled_val_loss,
    union_val_loss,
)
from node.federation.inprocess import run_group_round, set_flower_log_level
from node.learning.data import load_dataset
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import partition
from node.runtime.network import NetworkConfig

RESULTS = Path(__file__).resolve().parent / "results" / "contribution_cost.json"
SAMPLES = {"digits": None, "fashion": 1000}
EPOCHS = NetworkConfig().local_epochs  # as many local epochs as the runtime trains


def measure(dataset: str, members: int, rounds: int, seed: int) -> dict[str, Any]:
    """Median training and contribution seconds per round for one group size."""
    data = partition(
        load_dataset(dataset), members, "iid", seed=seed, samples_per_node=SAMPLES.get(dataset)
    )
    learners = [
        Learner(build_model(dataset, seed), d, seed=seed + i, epochs=EPOCHS)
        for i, d in enumerate(data)
    ]
    weights = learners[0].get_weights()
    train_s: list[float] = []
    measure_s: list[float] = []
    exact_s: list[float] = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        result = run_group_round(learners, weights, server_round=rnd, local_epochs=EPOCHS)
        train_s.append(time.perf_counter() - t0)
        # What the runtime does: pooled validation data, capped at 512 examples...
        report = leave_one_out(
            result.updates, result.num_examples, pooled_val_loss(learners), baseline=weights
        )
        measure_s.append(report.seconds)
        # ...and, for comparison, every member evaluating its own whole split.
        exact = leave_one_out(
            result.updates, result.num_examples, union_val_loss(learners), baseline=weights
        )
        exact_s.append(exact.seconds)
        weights = result.weights
    train, cost = statistics.median(train_s), statistics.median(measure_s)
    return {
        "members": members,
        "rounds": rounds,
        "round_seconds": train,
        "contribution_seconds": cost,
        "share_of_round": cost / train if train else None,
        "uncapped_contribution_seconds": statistics.median(exact_s),
        "uncapped_share_of_round": statistics.median(exact_s) / train if train else None,
        "evaluations_per_round": members + 1,
        "val_examples": sum(len(d.val) for d in data),
        "train_examples": sum(len(d.train) for d in data),
        "exact_shapley_evaluations": 2**members,
    }


def main() -> None:
    """Run every group size on every data set, print a table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default="digits,fashion")
    parser.add_argument("--sizes", default="3,5,10")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    set_flower_log_level(logging.WARNING)
    torch.set_num_threads(1)
    results: dict[str, list[dict[str, Any]]] = {}
    print(
        f"{'dataset':<8} {'members':>7} {'round s':>9} {'measure s':>10} {'share':>7}"
        f" {'uncapped s':>11} {'share':>7}"
    )
    for dataset in args.datasets.split(","):
        results[dataset] = []
        for size in (int(s) for s in args.sizes.split(",")):
            row = measure(dataset, size, args.rounds, args.seed)
            results[dataset].append(row)
            print(
                f"{dataset:<8} {size:>7} {row['round_seconds']:>9.3f} "
                f"{row['contribution_seconds']:>10.4f} {row['share_of_round']:>7.1%}"
                f" {row['uncapped_contribution_seconds']:>11.4f}"
                f" {row['uncapped_share_of_round']:>7.1%}"
            )
    report = {
        "method": "leave_one_out on the FedAvg aggregate, pooled validation loss",
        "pooled_val_cap": POOLED_VAL_CAP,
        "local_epochs": EPOCHS,
        "torch_threads": 1,
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

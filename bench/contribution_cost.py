"""What measuring contributions costs: leave-one-out seconds per round against training.

For groups of 3, 5 and 10 members on IID shares, runs the group round every runtime
runs (``node.federation.round.run_group_round``, FedAvg over Flower in memory) twice
per round on identical copies of the learners: once measuring leave-one-out
contributions (each member evaluates the n + 1 models on its own validation split)
and once without, as the baseline of the same run. Reports the median seconds of
both rounds, the seconds the measuring round spent on contributions (building the
leave-one-out models and the members' extra evaluations, timed where they happen)
and their share of the baseline round. Writes ``bench/results/contribution_cost.json``.
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

from node.federation.inprocess import train_in_memory
from node.federation.strategies import set_flower_log_level
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

    def learners() -> list[Learner]:
        return [
            Learner(build_model(dataset, seed), d, seed=seed + i, epochs=EPOCHS)
            for i, d in enumerate(data)
        ]

    plain, measured = learners(), learners()
    weights = plain[0].get_weights()
    train_in_memory(learners(), weights, local_epochs=EPOCHS)  # warm-up, not measured
    round_s: list[float] = []
    measured_s: list[float] = []
    cost_s: list[float] = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        baseline = train_in_memory(plain, weights, round_=rnd, local_epochs=EPOCHS)
        t1 = time.perf_counter()
        result = train_in_memory(
            measured, weights, round_=rnd, local_epochs=EPOCHS, measure_contribution=True
        )
        t2 = time.perf_counter()
        round_s.append(t1 - t0)
        measured_s.append(t2 - t1)
        cost_s.append(result.contribution_seconds)
        assert len(result.contributions) == members
        weights = baseline.weights
    train, with_measure = statistics.median(round_s), statistics.median(measured_s)
    cost = statistics.median(cost_s)
    return {
        "members": members,
        "rounds": rounds,
        "round_seconds": train,
        "measured_round_seconds": with_measure,
        "contribution_seconds": cost,
        "share_of_round": cost / train if train else None,
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
        f"{'dataset':<8} {'members':>7} {'round s':>9} {'measured s':>11} {'extra s':>8}"
        f" {'share':>7}"
    )
    for dataset in args.datasets.split(","):
        results[dataset] = []
        for size in (int(s) for s in args.sizes.split(",")):
            row = measure(dataset, size, args.rounds, args.seed)
            results[dataset].append(row)
            print(
                f"{dataset:<8} {size:>7} {row['round_seconds']:>9.3f} "
                f"{row['measured_round_seconds']:>11.3f} {row['contribution_seconds']:>8.4f}"
                f" {row['share_of_round']:>7.1%}"
            )
    report = {
        "method": "leave_one_out on the FedAvg aggregate, federated validation loss",
        "baseline": "the same round without measuring, on identical learners, same run",
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

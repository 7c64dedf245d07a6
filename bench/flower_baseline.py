"""Flower's Ray simulation of plain FedAvg on our model and data: the peer baseline.

Usage: python bench/flower_baseline.py [--clients 10] [--samples 80] [--rounds 5]
       [--local-epochs 2] [--dataset fashion] [--num-cpus 2]
       [--out bench/results/flower_baseline.json]

``flower_fedavg`` runs ``flwr.simulation.run_simulation`` (Flower 1.41, message API): a
``ServerApp`` whose ``flwr.serverapp.strategy.FedAvg`` trains every client every round (no
client-side evaluation: plain FedAvg training), and a ``ClientApp`` that trains our model
(``node.learning.models.build_model``) with our ``Learner`` on the client's ``NodeData``
(``context.node_config["partition-id"]`` picks it), one torch thread, on Ray actors of one
CPU each. After the last round the global model is evaluated on every client's test split.

Figures returned (printed by ``__main__`` and written to ``--out`` as JSON):
- ``wall_seconds``: the whole ``run_simulation`` call (Ray's start-up and shut-down in);
- ``serverapp_seconds``: inside the ServerApp, from its start to the end of the last round
  (Flower starts it beside Ray, so this includes waiting for the actors);
- ``steady_seconds``: rounds 2..R, timed inside the ServerApp at each round's end (after
  Ray's start-up and the actors' first task);
- ``client_rounds`` (clients x rounds), ``seconds_per_client_round`` (steady, over
  ``clients x (R - 1)``), ``wall_seconds_per_client_round``;
- ``mean_test_accuracy``: the final global model, mean over clients.

Ray is the ``ray`` extra: ``pip install -e '.[ray]'`` in a checkout. Flower shuts Ray down at the
end of a simulation, even an instance it did not start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from node.federation.strategies import set_flower_log_level
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import MIN_SAMPLES_PER_NODE, NodeData

ARRAYS = "arrays"  # FedAvg's default arrayrecord_key
CONFIG = "config"  # FedAvg's default configrecord_key
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"  # FedAvg's default weighted_by_key
LOCAL_EPOCHS = "local-epochs"
SERVER_ROUND = "server-round"  # set by FedAvg.configure_train


def _client_app(
    data: Sequence[NodeData], dataset: str, learning_rate: float, batch_size: int, seed: int
) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)  # one CPU per client, as the in-process workers
        index = int(cast(int, context.node_config["partition-id"]))
        config = msg.content.config_records[CONFIG]
        epochs = int(cast(int, config[LOCAL_EPOCHS]))
        server_round = int(cast(int, config[SERVER_ROUND]))
        learner = Learner(
            build_model(dataset, seed=seed),
            data[index],
            learning_rate=learning_rate,
            batch_size=batch_size,
            seed=seed + index,
            # Shuffling continues where the previous round's left off.
            epochs_done=(server_round - 1) * epochs,
        )
        learner.set_weights(msg.content.array_records[ARRAYS].to_numpy_ndarrays())
        learner.train(epochs)
        reply = RecordDict(
            {
                ARRAYS: ArrayRecord(learner.get_weights()),
                METRICS: MetricRecord({NUM_EXAMPLES: learner.num_train_examples}),
            }
        )
        return Message(content=reply, reply_to=msg)

    return app


def flower_fedavg(
    data: Sequence[NodeData],
    rounds: int,
    local_epochs: int,
    *,
    dataset: str = "fashion",
    learning_rate: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
    num_cpus: int = 2,
) -> dict[str, Any]:
    """Plain FedAvg of ``data``'s clients (all of them, every round) for ``rounds`` rounds
    of ``local_epochs`` epochs each, on Flower's Ray simulation with ``num_cpus`` CPUs
    (one per client actor). Returns the figures listed in the module docstring (seconds,
    counts, accuracy in [0, 1]). Raises ``ValueError`` for fewer than 1 client or round,
    ``RuntimeError`` when the simulation did not finish its rounds."""
    if not data or rounds < 1 or local_epochs < 1:
        raise ValueError(
            f"need clients, rounds and epochs, got {len(data)}, {rounds}, {local_epochs}"
        )
    clients = len(data)
    initial = Learner(build_model(dataset, seed=seed), data[0]).get_weights()
    marks: list[float] = []  # perf_counter at the ServerApp's start, then each round's end
    final: list[list[np.ndarray]] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        marks.append(time.perf_counter())
        strategy = FedAvg(
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )

        def round_end(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round > 0:  # round 0: the initial model, before any training
                marks.append(time.perf_counter())
            return None

        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial),
            num_rounds=rounds,
            train_config=ConfigRecord({LOCAL_EPOCHS: local_epochs}),
            evaluate_fn=round_end,
        )
        final.append(result.arrays.to_numpy_ndarrays())

    set_flower_log_level(logging.WARNING)
    started = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=_client_app(data, dataset, learning_rate, batch_size, seed),
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": num_cpus,
                "logging_level": logging.WARNING,
                "log_to_driver": False,
            },
        },
    )
    wall = time.perf_counter() - started
    if not final or len(marks) != rounds + 1:
        raise RuntimeError(
            f"the simulation ended after {max(len(marks) - 1, 0)} of {rounds} rounds"
        )
    steady = marks[-1] - marks[1]
    accuracy = [
        Learner(build_model(dataset, seed=seed), nd).evaluate("test", final[0]).accuracy
        for nd in data
    ]
    return {
        "clients": clients,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "wall_seconds": wall,
        "serverapp_seconds": marks[-1] - marks[0],
        "steady_seconds": steady,
        "client_rounds": clients * rounds,
        "seconds_per_client_round": steady / (clients * (rounds - 1)) if rounds > 1 else None,
        "wall_seconds_per_client_round": wall / (clients * rounds),
        "mean_test_accuracy": float(np.mean(accuracy)),
    }


def main() -> None:
    """Print Flower's figures for ``--clients`` Fashion-MNIST clients (4 clusters)."""
    from node.learning.data import DATASET_NAMES, load_dataset
    from node.learning.partition import partition

    if __package__ in (None, ""):  # run as a script: the repository root holds `bench`
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cli_args import at_least, check_out, positive

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=positive, default=10)
    parser.add_argument(
        "--samples", type=at_least(MIN_SAMPLES_PER_NODE), default=80, help="examples per client"
    )
    parser.add_argument("--rounds", type=positive, default=5)
    parser.add_argument("--local-epochs", type=positive, default=2)
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="fashion")
    parser.add_argument("--num-cpus", type=positive, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/flower_baseline.json"))
    args = parser.parse_args()
    check_out(parser, args.out)
    try:  # before Ray starts
        data = partition(
            load_dataset(args.dataset),
            args.clients,
            "clustered",
            clusters=4,
            samples_per_node=args.samples,
            seed=0,
        )
    except ValueError as exc:
        parser.error(str(exc))
    figures = flower_fedavg(
        data, args.rounds, args.local_epochs, dataset=args.dataset, num_cpus=args.num_cpus
    )
    for key, value in figures.items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "args": {k: str(v) for k, v in vars(args).items()},
                "figures": figures,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

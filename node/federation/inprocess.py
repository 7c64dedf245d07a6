"""Federated rounds inside one group with Flower's message-based strategies, in process."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

from node.federation.grid import SERVER_NODE_ID, InMemoryGrid
from node.learning.learner import LOSS, EvalResult, Learner

__all__ = [
    "FLOWER_LOGGER_NAME",
    "STRATEGIES",
    "RoundResult",
    "make_strategy",
    "run_group_round",
    "set_flower_log_level",
]

logger = logging.getLogger(__name__)

# Keys inside Flower messages.
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
NUM_EXAMPLES_KEY = "num-examples"  # the key Flower strategies weight by
LOCAL_EPOCHS_KEY = "local-epochs"
ACCURACY_KEY = "accuracy"
LOSS_KEY = "loss"
TRAIN_LOSS_KEY = "train-loss"

FLOWER_LOGGER_NAME = "flwr"

FEDAVG = "fedavg"
FEDMEDIAN = "fedmedian"
FEDTRIMMEDAVG = "fedtrimmedavg"
KRUM = "krum"
STRATEGIES: dict[str, type[FedAvg]] = {
    FEDAVG: FedAvg,
    FEDMEDIAN: FedMedian,
    FEDTRIMMEDAVG: FedTrimmedAvg,
    KRUM: Krum,
}


@dataclass
class RoundResult:
    """What one call of ``run_group_round`` produced.

    ``train_metrics``, ``num_examples`` and ``val`` are per learner, in the order the
    learners were passed, from the last round. ``val`` is the aggregated model on each
    learner's own validation split (empty when evaluation was switched off with
    ``fraction_evaluate=0.0``). ``history`` holds the example-weighted ``loss`` and
    ``accuracy`` of each round's aggregated model, oldest first. ``updates`` holds
    each learner's own weights as it returned them in the last round (what the
    strategy aggregated), for measuring contributions.
    """

    weights: list[np.ndarray]
    train_metrics: list[dict[str, float]]
    num_examples: list[int]
    val: list[EvalResult]
    rounds: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    updates: list[list[np.ndarray]] = field(default_factory=list)

    @property
    def val_accuracy(self) -> float:
        """Example-weighted mean validation accuracy of the aggregated model."""
        total = sum(r.num_examples for r in self.val)
        return sum(r.accuracy * r.num_examples for r in self.val) / total if total else 0.0


def set_flower_log_level(level: int = logging.WARNING) -> None:
    """Set the level of Flower's own logger, which logs about ten INFO lines per round.

    This is process-wide, so it is the caller's (runtime's, CLI's) choice, never done
    implicitly by ``run_group_round``.
    """
    logging.getLogger(FLOWER_LOGGER_NAME).setLevel(level)


def make_strategy(name: str, num_nodes: int, options: Mapping[str, Any] | None = None) -> Strategy:
    """Build the Flower strategy ``name`` that trains and evaluates on all ``num_nodes``.

    ``options`` go to the strategy's constructor (e.g. ``beta`` for fedtrimmedavg,
    ``num_malicious_nodes`` for krum).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    kwargs: dict[str, Any] = {
        "min_train_nodes": num_nodes,
        "min_evaluate_nodes": num_nodes,
        "min_available_nodes": num_nodes,
        "weighted_by_key": NUM_EXAMPLES_KEY,
        "arrayrecord_key": ARRAYS_KEY,
        "configrecord_key": CONFIG_KEY,
    }
    kwargs.update(options or {})
    return STRATEGIES[name](**kwargs)


@dataclass
class _Collector:
    """Per-node results the ClientApps report while a round runs."""

    train: dict[int, dict[str, float]] = field(default_factory=dict)
    val: dict[int, EvalResult] = field(default_factory=dict)
    updates: dict[int, list[np.ndarray]] = field(default_factory=dict)


def _learner_app(learner: Learner, collector: _Collector, node_id: int) -> ClientApp:
    """A ClientApp that trains/evaluates ``learner`` on the arrays it receives."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records[ARRAYS_KEY]
        config = msg.content.config_records[CONFIG_KEY]
        learner.set_weights(arrays.to_numpy_ndarrays())
        metrics = learner.train(epochs=int(cast(int, config[LOCAL_EPOCHS_KEY])))
        collector.train[node_id] = metrics
        update = learner.get_weights()
        collector.updates[node_id] = update
        reply = RecordDict(
            {
                ARRAYS_KEY: ArrayRecord(update),
                METRICS_KEY: MetricRecord(
                    {
                        TRAIN_LOSS_KEY: metrics[LOSS],
                        NUM_EXAMPLES_KEY: learner.num_train_examples,
                    }
                ),
            }
        )
        return Message(content=reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        weights = msg.content.array_records[ARRAYS_KEY].to_numpy_ndarrays()
        result = learner.evaluate("val", weights=weights)
        collector.val[node_id] = result
        reply = RecordDict(
            {
                METRICS_KEY: MetricRecord(
                    {
                        LOSS_KEY: result.loss,
                        ACCURACY_KEY: result.accuracy,
                        NUM_EXAMPLES_KEY: result.num_examples,
                    }
                )
            }
        )
        return Message(content=reply, reply_to=msg)

    return app


def run_group_round(
    learners: Sequence[Learner],
    initial: list[np.ndarray],
    *,
    strategy: str = FEDAVG,
    server_round: int = 1,
    local_epochs: int = 1,
    strategy_options: Mapping[str, Any] | None = None,
    num_rounds: int = 1,
    app_factory: Callable[[Learner, int], ClientApp] | None = None,
) -> RoundResult:
    """Run ``num_rounds`` Flower rounds among ``learners`` starting from ``initial`` weights.

    Each learner is a client: it loads the incoming weights, trains ``local_epochs``
    epochs on its own data and replies with its weights and example count; the
    strategy aggregates. Then each learner evaluates the aggregated model on its
    validation split. Afterwards a learner's own model holds its last *local* weights;
    load ``result.weights`` into it to continue from the group model.
    ``server_round`` only labels the log lines. ``app_factory(learner, node_id)``
    replaces the built-in ClientApp (for tests and custom clients).
    """
    if not learners:
        raise ValueError("run_group_round needs at least one learner")
    if num_rounds < 1 or local_epochs < 0:
        raise ValueError("num_rounds must be at least 1 and local_epochs non-negative")
    collector = _Collector()
    node_ids = [SERVER_NODE_ID + 1 + i for i in range(len(learners))]
    apps = {
        node_id: (
            app_factory(learner, node_id)
            if app_factory
            else _learner_app(learner, collector, node_id)
        )
        for node_id, learner in zip(node_ids, learners, strict=True)
    }
    grid = InMemoryGrid(apps)
    flower_strategy = make_strategy(strategy, len(learners), strategy_options)
    start = time.perf_counter()
    result = flower_strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.asarray(w) for w in initial]),
        num_rounds=num_rounds,
        train_config=ConfigRecord({LOCAL_EPOCHS_KEY: local_epochs}),
    )
    seconds = time.perf_counter() - start
    history = [
        {key: float(value) for key, value in metrics.items() if not isinstance(value, list)}
        for _, metrics in sorted(result.evaluate_metrics_clientapp.items())
    ]
    logger.info(
        "Group round %d (+%d) with %d learners, %s: %.3f s",
        server_round,
        num_rounds - 1,
        len(learners),
        strategy,
        seconds,
    )
    return RoundResult(
        weights=result.arrays.to_numpy_ndarrays(),
        train_metrics=[collector.train.get(node_id, {}) for node_id in node_ids],
        num_examples=[learner.num_train_examples for learner in learners],
        val=[collector.val[node_id] for node_id in node_ids if node_id in collector.val],
        rounds=num_rounds,
        seconds=seconds,
        history=history,
        updates=[collector.updates[n] for n in node_ids if n in collector.updates],
    )

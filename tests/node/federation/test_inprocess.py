"""Tests for node.federation.inprocess: Flower rounds inside one group."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from node.federation.inprocess import STRATEGIES, run_group_round
from node.learning.learner import Learner
from node.learning.partition import NodeData
from tests.node.helpers import digits_learner


def _fixed_reply_factory(
    learners: list[Learner], values: list[tuple[float, int]], seen: list[int]
) -> Callable[[Learner, int], ClientApp]:
    """ClientApps replying with weights filled with a known value and a known example count."""
    by_learner = {
        id(learner): (i, *v) for i, (learner, v) in enumerate(zip(learners, values, strict=True))
    }

    def factory(learner: Learner, node_id: int) -> ClientApp:
        app = ClientApp()
        position, value, examples = by_learner[id(learner)]

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            seen.append(position)
            incoming = msg.content.array_records["arrays"].to_numpy_ndarrays()
            arrays = [np.full_like(w, value) for w in incoming]
            reply = RecordDict(
                {
                    "arrays": ArrayRecord(arrays),
                    "metrics": MetricRecord({"num-examples": examples}),
                }
            )
            return Message(content=reply, reply_to=msg)

        @app.evaluate()
        def evaluate(msg: Message, context: Context) -> Message:
            reply = RecordDict({"metrics": MetricRecord({"num-examples": examples})})
            return Message(content=reply, reply_to=msg)

        return app

    return factory


@pytest.fixture
def three_learners(iid_digits_nodes: list[NodeData]) -> list[Learner]:
    """Three digits learners (only their index matters to the fixed-reply clients)."""
    return [digits_learner(node) for node in iid_digits_nodes[:3]]


def test_fedavg_returns_the_example_weighted_mean(three_learners: list[Learner]) -> None:
    # Prepare
    values = [(1.0, 10), (2.0, 30), (4.0, 60)]
    seen: list[int] = []
    initial = three_learners[0].get_weights()

    # Execute
    result = run_group_round(
        three_learners, initial, app_factory=_fixed_reply_factory(three_learners, values, seen)
    )

    # Assert: (1*10 + 2*30 + 4*60) / 100
    assert sorted(seen) == [0, 1, 2]
    assert [w.shape for w in result.weights] == [w.shape for w in initial]
    assert all(np.allclose(w, 3.1) for w in result.weights)


def test_fedmedian_returns_the_median_whatever_the_weights(
    three_learners: list[Learner],
) -> None:
    # Prepare
    values = [(1.0, 10), (2.0, 30), (4.0, 60)]

    # Execute
    result = run_group_round(
        three_learners,
        three_learners[0].get_weights(),
        strategy="fedmedian",
        app_factory=_fixed_reply_factory(three_learners, values, []),
    )

    # Assert
    assert all(np.allclose(w, 2.0) for w in result.weights)


@pytest.mark.parametrize(
    ("strategy", "options"),
    [("fedtrimmedavg", {"beta": 0.2}), ("krum", {"num_malicious_nodes": 1})],
)
def test_robust_strategies_ignore_one_wild_client(
    strategy: str, options: dict[str, float], iid_digits_nodes: list[NodeData]
) -> None:
    # Prepare: five clients, one of them sends absurd weights
    nodes = [*iid_digits_nodes, iid_digits_nodes[0]]
    learners = [digits_learner(node) for node in nodes]
    values = [(1.0, 10), (1.5, 10), (2.0, 10), (2.5, 10), (1000.0, 10)]

    # Execute
    result = run_group_round(
        learners,
        learners[0].get_weights(),
        strategy=strategy,
        strategy_options=options,
        app_factory=_fixed_reply_factory(learners, values, []),
    )

    # Assert
    assert all(1.0 <= float(w.max()) <= 2.5 for w in result.weights)


def test_unknown_strategy_lists_the_valid_ones(three_learners: list[Learner]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=", ".join(STRATEGIES)):
        run_group_round(three_learners, three_learners[0].get_weights(), strategy="fedsgd")


def test_fedavg_on_iid_digits_learns_together(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learners = [digits_learner(node, seed=i) for i, node in enumerate(iid_digits_nodes)]
    initial = learners[0].get_weights()
    chance = 0.1

    # Execute
    result = run_group_round(learners, initial, num_rounds=6, local_epochs=2)

    # Assert
    assert result.val_accuracy > 0.8 > chance
    assert len(result.history) == 6 and result.history[-1]["accuracy"] == pytest.approx(
        result.val_accuracy
    )
    assert result.history[-1]["accuracy"] > result.history[0]["accuracy"]
    assert result.num_examples == [len(node.train) for node in iid_digits_nodes]
    assert all(m["loss"] > 0 for m in result.train_metrics)
    # The returned group model is what each node measured on its own validation data.
    fresh = digits_learner(iid_digits_nodes[2], seed=42)
    fresh.set_weights(result.weights)
    assert fresh.evaluate("val") == result.val[2]


def test_only_the_learners_passed_take_part(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    members = [digits_learner(node) for node in iid_digits_nodes[:2]]
    outsider = digits_learner(iid_digits_nodes[3])
    outsider_before = outsider.get_weights()

    # Execute
    result = run_group_round(members, members[0].get_weights())

    # Assert
    assert len(result.train_metrics) == len(result.val) == 2
    assert all(
        np.array_equal(a, b) for a, b in zip(outsider_before, outsider.get_weights(), strict=True)
    )


def test_groups_in_parallel_threads_match_sequential_runs(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: two groups of two learners each, built twice alike
    def groups() -> list[list[Learner]]:
        learners = [digits_learner(node, seed=i) for i, node in enumerate(iid_digits_nodes)]
        return [learners[:2], learners[2:]]

    sequential = [run_group_round(g, g[0].get_weights(), num_rounds=2).weights for g in groups()]

    # Execute
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(run_group_round, g, g[0].get_weights(), num_rounds=2) for g in groups()
        ]
        threaded = [f.result().weights for f in futures]

    # Assert
    for seq, thr in zip(sequential, threaded, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(seq, thr, strict=True))
        assert all(w.dtype == np.float32 for w in thr)


def test_a_group_of_one_trains_alone(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learner = digits_learner(iid_digits_nodes[0])
    before = learner.evaluate("val").accuracy

    # Execute
    result = run_group_round([learner], learner.get_weights(), local_epochs=3)

    # Assert
    assert result.val[0].accuracy > before + 0.3
    assert all(
        np.array_equal(a, b) for a, b in zip(result.weights, learner.get_weights(), strict=True)
    )

"""Tests for node.federation.inprocess: group rounds over Flower in one process."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from node.errors import NonFiniteWeightsError
from node.federation.contribution import LOSS_CAP
from node.federation.inprocess import InMemoryFederation, member_app, train_in_memory
from node.federation.round import (
    FitOutcome,
    GroupMember,
    GroupRoundResult,
    MemberEvaluation,
    run_group_round,
)
from node.federation.strategies import STRATEGY_NAMES
from node.learning.learner import Learner
from node.learning.partition import NodeData
from tests.node.helpers import digits_learner


def _fixed_reply_factory(
    values: list[tuple[float, int]], seen: list[int]
) -> Callable[[GroupMember, int], ClientApp]:
    """ClientApps replying with weights filled with a known value and a known example count;
    the i-th member (Flower node i + 2) gets the i-th value."""

    def factory(member: GroupMember, node_id: int) -> ClientApp:
        app = ClientApp()
        position = node_id - 2
        value, examples = values[position]

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

        return app

    return factory


def _members(learners: list[Learner]) -> list[GroupMember]:
    return [GroupMember(f"m{i}", learner) for i, learner in enumerate(learners)]


@pytest.fixture
def three_learners(iid_digits_nodes: list[NodeData]) -> list[Learner]:
    """Three digits learners (only their position matters to the fixed-reply clients)."""
    return [digits_learner(node) for node in iid_digits_nodes[:3]]


def test_fedavg_returns_the_example_weighted_mean(three_learners: list[Learner]) -> None:
    # Prepare
    values = [(1.0, 10), (2.0, 30), (4.0, 60)]
    seen: list[int] = []
    initial = three_learners[0].get_weights()
    federation = InMemoryFederation(
        _members(three_learners), app_factory=_fixed_reply_factory(values, seen)
    )

    # Execute
    result = federation.fit(initial, 1, 1)

    # Assert: (1*10 + 2*30 + 4*60) / 100
    assert sorted(seen) == [0, 1, 2]
    assert result.weights is not None
    assert [w.shape for w in result.weights] == [w.shape for w in initial]
    assert all(np.allclose(w, 3.1) for w in result.weights)
    assert [u.num_examples for u in result.updates] == [10, 30, 60]
    assert [u.member for u in result.updates] == ["m0", "m1", "m2"]


def test_fedmedian_returns_the_median_whatever_the_weights(
    three_learners: list[Learner],
) -> None:
    # Prepare
    values = [(1.0, 10), (2.0, 30), (4.0, 60)]
    federation = InMemoryFederation(
        _members(three_learners),
        strategy="fedmedian",
        app_factory=_fixed_reply_factory(values, []),
    )

    # Execute
    result = federation.fit(three_learners[0].get_weights(), 1, 1)

    # Assert
    assert result.weights is not None
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
    federation = InMemoryFederation(
        _members(learners),
        strategy=strategy,
        strategy_options=options,
        app_factory=_fixed_reply_factory(values, []),
    )

    # Execute
    result = federation.fit(learners[0].get_weights(), 1, 1)

    # Assert
    assert result.weights is not None
    assert all(1.0 <= float(w.max()) <= 2.5 for w in result.weights)


def test_unknown_strategy_lists_the_valid_ones(three_learners: list[Learner]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=", ".join(STRATEGY_NAMES)):
        InMemoryFederation(_members(three_learners), strategy="fedsgd")


def test_fedavg_on_iid_digits_learns_together(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learners = [digits_learner(node, seed=i) for i, node in enumerate(iid_digits_nodes)]
    weights = learners[0].get_weights()
    chance = 0.1
    history: list[GroupRoundResult] = []

    # Execute: six rounds, each from the last one's model
    for rnd in range(1, 7):
        result = train_in_memory(learners, weights, round_=rnd, local_epochs=2)
        history.append(result)
        weights = result.weights

    # Assert
    last = history[-1]
    assert last.accuracy is not None and last.accuracy > 0.8 > chance
    assert len(history) == 6 and all(r.aggregated for r in history)
    assert last.accuracy > (history[0].accuracy or 0.0)
    assert [u.num_examples for u in last.updates] == [len(node.train) for node in iid_digits_nodes]
    assert all(u.train_loss > 0 for u in last.updates)
    # The returned group model is what each node measured on its own validation data.
    fresh = digits_learner(iid_digits_nodes[2], seed=42)
    fresh.set_weights(last.weights)
    own = fresh.evaluate("val")
    reported = last.evaluations[2]
    assert (own.loss, own.accuracy, own.num_examples) == (
        reported.losses[0],
        reported.accuracies[0],
        reported.num_examples,
    )


def test_only_the_learners_passed_take_part(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    members = [digits_learner(node) for node in iid_digits_nodes[:2]]
    outsider = digits_learner(iid_digits_nodes[3])
    outsider_before = outsider.get_weights()

    # Execute
    result = train_in_memory(members, members[0].get_weights())

    # Assert
    assert len(result.updates) == len(result.evaluations) == 2
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

    def two_rounds(group: list[Learner]) -> list[np.ndarray]:
        weights = group[0].get_weights()
        for rnd in (1, 2):
            weights = train_in_memory(group, weights, round_=rnd).weights
        return weights

    sequential = [two_rounds(g) for g in groups()]

    # Execute
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(two_rounds, groups()))

    # Assert
    for seq, thr in zip(sequential, threaded, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(seq, thr, strict=True))
        assert all(w.dtype == np.float32 for w in thr)


def test_a_group_of_one_trains_alone(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learner = digits_learner(iid_digits_nodes[0])
    before = learner.evaluate("val").accuracy

    # Execute
    result = train_in_memory([learner], learner.get_weights(), local_epochs=3)

    # Assert
    assert result.accuracy is not None and result.accuracy > before + 0.3
    assert all(
        np.array_equal(a, b) for a, b in zip(result.weights, learner.get_weights(), strict=True)
    )


def test_a_member_that_refuses_bad_weights_is_a_failure_not_a_crash(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: the round starts from weights with a NaN; every member must refuse them
    learners = [digits_learner(node) for node in iid_digits_nodes[:2]]
    before = [learner.get_weights() for learner in learners]
    poisoned = learners[0].get_weights()
    poisoned[0][0, 0] = np.nan
    federation = InMemoryFederation(_members(learners))

    # Execute
    fit = federation.fit(poisoned, 1, 1)

    # Assert: both replies are failures; the members' models are untouched
    assert fit.weights is None and fit.updates == [] and fit.failures == 2
    for learner, was in zip(learners, before, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(was, learner.get_weights(), strict=True))


def test_updates_that_are_not_finite_or_claim_too_much_are_screened_out(
    three_learners: list[Learner],
) -> None:
    # Prepare: one member answers with infinite weights, one claims a huge example count
    values = [(1.0, 10), (np.inf, 10), (2.0, 10**12)]
    initial = three_learners[0].get_weights()
    federation = InMemoryFederation(
        _members(three_learners), app_factory=_fixed_reply_factory(values, [])
    )

    # Execute
    fit = federation.fit(initial, 1, 1)

    # Assert: the infinite one is refused; the huge count weighs as twice the median
    assert [member for member, _ in fit.refused] == ["m1"]
    assert [(u.member, u.num_examples) for u in fit.updates] == [("m0", 10), ("m2", 20)]
    assert fit.weights is not None
    assert all(np.allclose(w, (1.0 * 10 + 2.0 * 20) / 30) for w in fit.weights)


class _NonFiniteFederation:
    """A transport whose aggregate comes back non-finite (a fault beyond the screening)."""

    strategy = "fedavg"

    def fit(self, weights: list[np.ndarray], round_: int, local_epochs: int) -> FitOutcome:
        return FitOutcome([np.full_like(w, np.nan) for w in weights], [], 0, 0.0)

    def evaluate(self, *args: object) -> list[MemberEvaluation]:
        raise AssertionError("a rejected aggregate must not be evaluated")


def test_a_non_finite_aggregate_is_rejected_and_the_group_keeps_its_model(
    three_learners: list[Learner],
) -> None:
    # Prepare
    initial = three_learners[0].get_weights()
    members = _members(three_learners)

    # Execute
    result = run_group_round(_NonFiniteFederation(), initial, group_id=1, round_=1)

    # Assert: nothing aggregated, nothing evaluated, the round's start model kept
    assert not result.aggregated and result.evaluations == [] and result.contributions == {}
    assert all(np.array_equal(a, b) for a, b in zip(initial, result.weights, strict=True))
    with pytest.raises(NonFiniteWeightsError):
        members[0].train([np.full_like(w, np.inf) for w in initial], 1)


def test_member_apps_report_every_model_they_were_sent(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare: two models, one of them the learner's own
    learner = digits_learner(iid_digits_nodes[0])
    other = digits_learner(iid_digits_nodes[1], seed=9).get_weights()
    member = GroupMember("solo", learner)
    federation = InMemoryFederation([member], app_factory=lambda m, _nid: member_app(m))

    # Execute
    [evaluation] = federation.evaluate(
        [learner.get_weights(), other], ["new", "other"], round_=1, group_id=1
    )

    # Assert
    assert evaluation.member == "solo" and evaluation.labels == ["new", "other"]
    assert evaluation.loss("other") == pytest.approx(learner.evaluate("val", weights=other).loss)


def test_a_member_with_a_bogus_evaluation_is_left_out_of_the_figures(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: member 1 trains honestly but answers evaluations with a NaN and too few losses
    learners = [digits_learner(node, seed=i) for i, node in enumerate(iid_digits_nodes[:2])]
    members = _members(learners)

    def factory(member: GroupMember, node_id: int) -> ClientApp:
        if member.node_id != "m1":
            return member_app(member)
        app = ClientApp()

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            return member_app(member)(msg, context)

        @app.evaluate()
        def evaluate(msg: Message, context: Context) -> Message:
            bogus = {"num-examples": 10, "losses": [float("nan")], "accuracies": [1.0]}
            return Message(content=RecordDict({"metrics": MetricRecord(bogus)}), reply_to=msg)

        return app

    # Execute
    result = run_group_round(
        InMemoryFederation(members, app_factory=factory),
        learners[0].get_weights(),
        group_id=1,
        round_=1,
    )

    # Assert: the round went on; only the honest evaluation counts, and it pays both members
    assert result.aggregated
    assert [e.member for e in result.evaluations] == ["m0"]
    assert result.accuracy == result.evaluations[0].accuracies[0]
    assert set(result.contributions) == {"m0", "m1"}


def test_a_diverged_model_is_reported_at_the_loss_cap_not_as_infinity(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: a finite model whose loss overflows on real digits
    learner = digits_learner(iid_digits_nodes[0])
    diverged = [w * np.float32(1e30) for w in learner.get_weights()]
    member = GroupMember("m0", learner)

    # Execute
    evaluation = member.evaluate(
        [learner.get_weights(), diverged], ["new", "start"], group_id=1, round_=1
    )

    # Assert: every figure can cross JSON and the registry's bounds; the good model's is its own
    assert not np.isfinite(learner.evaluate("val", weights=diverged).loss)
    assert evaluation.losses[1] == LOSS_CAP
    assert evaluation.losses[0] == pytest.approx(learner.evaluate("val").loss)

"""Leave-one-out contributions: the arithmetic, and a poisoned member on real digits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from node.federation.contribution import (
    example_weighted_mean,
    leave_one_out,
    leave_one_out_on_others,
)
from node.federation.inprocess import train_in_memory
from node.learning.data import Dataset
from node.learning.learner import Learner
from node.learning.partition import NodeData, partition
from tests.node.helpers import digits_learner


def _distance_loss(target: np.ndarray):  # a loss that is the distance to a known optimum
    return lambda weights: float(np.abs(weights[0] - target).sum())


def test_a_member_that_pulls_away_from_the_optimum_contributes_negatively() -> None:
    # Prepare: two updates near the optimum, one far away
    target = np.zeros(3)
    good = [[np.full(3, 0.1)], [np.full(3, -0.1)]]
    bad = [[np.full(3, 5.0)]]

    # Execute
    report = leave_one_out([*good, *bad], [10, 10, 10], _distance_loss(target))

    # Assert: without the outlier the model sits at the optimum, so it contributed less
    # than nothing; without an honest member the outlier weighs more, so they helped
    assert report.losses_without[2] == pytest.approx(0.0)
    assert (
        report.contributions[2] == pytest.approx(-report.loss_with_all)
        and report.contributions[2] < 0
    )
    assert report.contributions[0] > 0 and report.contributions[1] > 0


def test_contribution_is_loss_without_minus_loss_with_all() -> None:
    # Prepare
    updates = [[np.array([1.0])], [np.array([3.0])], [np.array([8.0])]]
    loss = _distance_loss(np.array([2.0]))

    # Execute
    report = leave_one_out(updates, [1, 1, 2], loss)

    # Assert: with all = (1 + 3 + 16) / 4 = 5; without each: 19/3, 17/3, 2
    assert report.loss_with_all == pytest.approx(3.0)
    assert report.losses_without == pytest.approx([13 / 3, 11 / 3, 0.0])
    assert report.contributions == pytest.approx([4 / 3, 2 / 3, -3.0])


def test_a_lone_member_is_measured_against_the_round_start() -> None:
    report = leave_one_out(
        [[np.array([2.0])]], [5], _distance_loss(np.array([2.0])), baseline=[np.array([0.0])]
    )
    assert report.contributions == pytest.approx([2.0])
    assert leave_one_out([[np.array([1.0])]], [5], _distance_loss(np.zeros(1))).contributions == [
        0.0
    ]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        leave_one_out([], [], _distance_loss(np.zeros(1)))
    with pytest.raises(ValueError):
        leave_one_out([[np.zeros(1)]], [0], _distance_loss(np.zeros(1)))


def _union_loss(learners: list[Learner]):  # the loss on all members' val data at once
    nodes = [learner.data for learner in learners]
    union = Dataset(
        x=np.concatenate([nd.val.x for nd in nodes]),
        y=np.concatenate([nd.val.y for nd in nodes]),
        num_classes=nodes[0].val.num_classes,
        name="union",
    )
    evaluator = digits_learner(NodeData(union, union, union, cluster=0, index=-1))
    return lambda weights: evaluator.evaluate("val", weights=weights).loss


def test_the_example_weighted_mean_is_the_loss_on_the_union_of_the_members_data(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare
    learners = [digits_learner(nd, seed=i) for i, nd in enumerate(iid_digits_nodes)]
    weights = learners[1].get_weights()

    # Execute: each member on its own split, combined by example counts
    per_member = [learner.evaluate("val", weights=weights) for learner in learners]
    federated = example_weighted_mean([(r.num_examples, r.loss) for r in per_member])

    # Assert
    assert federated == pytest.approx(_union_loss(learners)(weights), rel=1e-5)


def test_a_group_round_pays_each_member_its_value_to_the_others(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: two copies of the same four learners
    def learners() -> list[Learner]:
        return [digits_learner(nd, seed=i) for i, nd in enumerate(iid_digits_nodes)]

    group, central = learners(), learners()
    start = group[0].get_weights()

    # Execute: the round's federated contributions; and, centrally, each member's
    # leave-one-out measured on the union of the *other* members' validation data
    result = train_in_memory(group, start, measure_contribution=True)
    for learner in central:
        learner.set_weights(start)
        learner.train(epochs=1)
    updates = [learner.get_weights() for learner in central]
    counts = [learner.num_train_examples for learner in central]
    expected = []
    for i in range(len(central)):
        others = [learner for j, learner in enumerate(central) if j != i]
        expected.append(leave_one_out(updates, counts, _union_loss(others)).contributions[i])

    # Assert
    assert list(result.contributions) == [f"learner-{i}" for i in range(4)]
    assert list(result.contributions.values()) == pytest.approx(expected, abs=1e-6)


def test_a_member_alone_earns_nothing(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learner = digits_learner(iid_digits_nodes[0])

    # Execute
    result = train_in_memory([learner], learner.get_weights(), measure_contribution=True)

    # Assert: its update helped its own data, but there is nobody else to help
    assert result.improvement is not None and result.improvement > 0
    assert result.contributions == {"learner-0": 0.0}


def _poisoned(nd: NodeData, seed: int = 7) -> NodeData:
    """The node's labels replaced by random ones (a data-poisoning member), every split."""
    rng = np.random.default_rng(seed)

    def scramble(d: Dataset) -> Dataset:
        return dataclasses.replace(d, y=rng.integers(0, d.num_classes, len(d.y)).astype(np.int64))

    return dataclasses.replace(
        nd, train=scramble(nd.train), val=scramble(nd.val), test=scramble(nd.test)
    )


def test_a_member_with_poisoned_labels_contributes_least_on_real_digits(digits: Dataset) -> None:
    # Prepare: four IID digit shares; the last member's labels are random
    data = partition(digits, 4, "iid", seed=3)
    data[3] = _poisoned(data[3])
    learners = [digits_learner(nd, seed=i) for i, nd in enumerate(data)]
    weights = learners[0].get_weights()
    totals = np.zeros(4)

    # Execute: three FedAvg rounds, contributions measured on the members' validation data
    for rnd in range(1, 4):
        result = train_in_memory(learners, weights, round_=rnd, measure_contribution=True)
        totals += np.maximum(0.0, list(result.contributions.values()))
        weights = result.weights

    # Assert: the poisoned member earns nothing; every honest member earns something
    assert totals[3] == 0.0
    assert all(t > 0 for t in totals[:3]), totals


def _losses(
    values: dict[str, float], loss_all: float = 1.0
) -> list[tuple[str, int, dict[str, float]]]:
    """Every member reports the others' loss with everyone ``loss_all`` and without member
    m ``loss_all + values[m]``: so m's leave-one-out value to the others is values[m]."""
    return [
        (
            me,
            50,
            {"all": loss_all}
            | {f"without:{m}": loss_all + v for m, v in values.items() if m != me},
        )
        for me in values
    ]


@pytest.mark.parametrize(
    ("values", "flagged"),
    [
        ({"a": 0.02, "b": 0.01, "c": 0.02, "d": -0.5}, ["d"]),  # the one that harms
        ({"a": -0.12, "b": -0.10, "c": -0.11, "d": -1.1}, ["d"]),  # a wrecked round: outlier
        ({"a": 0.3, "b": -0.3}, []),  # two cannot tell harm from difference
        ({"a": 0.01, "b": -0.01, "c": 0.0}, []),  # noise inside the margin
    ],
    ids=["one-poisoner", "wrecked-round", "two-members", "noise"],
)
def test_flags_name_the_members_far_below_the_others(
    values: dict[str, float], flagged: list[str]
) -> None:
    report = leave_one_out_on_others(
        _losses(values), list(values), all_label="all", without_label=lambda m: f"without:{m}"
    )
    assert report.contributions == pytest.approx(values)
    assert report.flagged == flagged

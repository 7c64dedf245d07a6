"""Tests for node.learning.learner: training, evaluation, weights ownership."""

import numpy as np
import pytest

from node.errors import WeightsMismatchError
from node.learning.partition import NodeData
from tests.node.helpers import digits_learner


def test_training_raises_validation_accuracy(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learner = digits_learner(iid_digits_nodes[0])
    before = learner.evaluate("val")

    # Execute
    metrics = learner.train(epochs=10)
    after = learner.evaluate("val")

    # Assert
    assert before.accuracy < 0.3
    assert after.accuracy > 0.85 and after.loss < before.loss
    assert metrics["num_examples"] == len(iid_digits_nodes[0].train)
    assert after.num_examples == len(iid_digits_nodes[0].val)


def test_same_seed_trains_to_the_same_weights(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    a, b = digits_learner(iid_digits_nodes[1], seed=3), digits_learner(iid_digits_nodes[1], seed=3)

    # Execute
    a.train(2)
    b.train(2)

    # Assert
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        assert np.array_equal(wa, wb)


def test_get_weights_hands_out_copies(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learner = digits_learner(iid_digits_nodes[0])
    before = learner.evaluate("val")

    # Execute
    for w in learner.get_weights():
        w[...] = 0.0

    # Assert
    assert learner.evaluate("val") == before
    assert any(np.any(w != 0) for w in learner.get_weights())


def test_evaluating_other_weights_leaves_own_model_untouched(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare
    trained = digits_learner(iid_digits_nodes[1])
    trained.train(5)
    learner = digits_learner(iid_digits_nodes[0], seed=9)
    own_before = learner.evaluate("val")
    own_weights = learner.get_weights()

    # Execute
    theirs = learner.evaluate("val", weights=trained.get_weights())

    # Assert
    assert theirs.accuracy > own_before.accuracy + 0.3
    assert learner.evaluate("val") == own_before
    assert all(
        np.array_equal(a, b) for a, b in zip(own_weights, learner.get_weights(), strict=True)
    )


def test_set_weights_loads_another_learners_model(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    trained = digits_learner(iid_digits_nodes[1])
    trained.train(5)
    learner = digits_learner(iid_digits_nodes[0], seed=9)

    # Execute
    learner.set_weights(trained.get_weights())

    # Assert
    assert learner.evaluate("test") == learner.evaluate("test", weights=trained.get_weights())
    assert learner.weight_names == list(trained.model.state_dict())


def test_weights_that_do_not_fit_are_refused(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learner = digits_learner(iid_digits_nodes[0])
    weights = learner.get_weights()

    # Execute / Assert
    with pytest.raises(WeightsMismatchError, match="arrays for a model with"):
        learner.set_weights(weights[:-1])
    with pytest.raises(WeightsMismatchError, match="shape"):
        learner.set_weights([w.T for w in weights])
    with pytest.raises(ValueError, match="split"):
        learner.evaluate("holdout")  # type: ignore[arg-type]

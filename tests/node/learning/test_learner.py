"""Tests for node.learning.learner: training, evaluation, weights ownership."""

import threading

import numpy as np
import pytest
import torch
from torch import nn

from node.errors import WeightsMismatchError
from node.learning.learner import Learner
from node.learning.models import build_model
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
    with trained.module() as model:
        assert learner.weight_names == list(model.state_dict())


def test_weights_that_do_not_fit_are_refused(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learner = digits_learner(iid_digits_nodes[0])
    weights = learner.get_weights()

    # Execute / Assert
    with pytest.raises(WeightsMismatchError, match="arrays for a model with"):
        learner.set_weights(weights[:-1])
    with pytest.raises(WeightsMismatchError, match="shape"):
        learner.set_weights([*weights[:-1], np.zeros((3, 3), np.float32)])
    assert all(np.array_equal(a, b) for a, b in zip(weights, learner.get_weights(), strict=True))
    with pytest.raises(WeightsMismatchError, match="shape"):
        learner.set_weights([w.T for w in weights])
    with pytest.raises(ValueError, match="split"):
        learner.evaluate("holdout")  # type: ignore[arg-type]


def test_a_learner_keeps_a_copy_of_the_model_it_was_given(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare
    model = build_model("digits", seed=0)
    learner = Learner(model, iid_digits_nodes[0])
    before = learner.evaluate("val")

    # Execute: the caller goes on changing its module
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()

    # Assert
    assert learner.evaluate("val") == before
    assert any(np.any(w != 0) for w in learner.get_weights())


def test_changes_inside_module_are_discarded(iid_digits_nodes: list[NodeData]) -> None:
    # Prepare
    learner = digits_learner(iid_digits_nodes[0])
    learner.train(2)
    before = learner.evaluate("val")

    # Execute
    with learner.module() as model, torch.no_grad():
        seen = [t.clone() for t in model.state_dict().values()]
        for p in model.parameters():
            p.zero_()

    # Assert: the module held the learner's weights, and the learner kept them
    assert all(
        np.array_equal(s.numpy(), w) for s, w in zip(seen, learner.get_weights(), strict=True)
    )
    assert learner.evaluate("val") == before


def test_nested_borrows_on_one_thread_get_their_own_modules(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare
    a, b = digits_learner(iid_digits_nodes[0], seed=1), digits_learner(iid_digits_nodes[1], seed=2)
    a.train(3)

    # Execute: while a's module is out, b evaluates and trains on the same thread
    with a.module() as held:
        x = torch.from_numpy(iid_digits_nodes[0].val.x)
        logits_before = held(x).detach().clone()
        b.evaluate("val")
        b.train(1)
        logits_after = held(x).detach()

    # Assert
    assert torch.equal(logits_before, logits_after)


def test_learners_training_on_two_threads_train_as_they_would_alone(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: the same learners twice, one set trained one after another
    alone = [digits_learner(nd, seed=i) for i, nd in enumerate(iid_digits_nodes)]
    together = [digits_learner(nd, seed=i) for i, nd in enumerate(iid_digits_nodes)]
    for learner in alone:
        learner.train(3)

    # Execute: the other set on two threads at once, each thread its own learners
    def run(learners: list[Learner]) -> None:
        for learner in learners:
            learner.train(3)

    threads = [threading.Thread(target=run, args=(together[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Assert
    for x, y in zip(alone, together, strict=True):
        assert all(
            np.array_equal(a, b) for a, b in zip(x.get_weights(), y.get_weights(), strict=True)
        )


def test_a_learner_rebuilt_with_its_weights_and_epochs_trains_on_alike(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: a learner two epochs in, and one rebuilt from its weights and epoch count
    original = digits_learner(iid_digits_nodes[2], seed=5)
    original.train(2)
    rebuilt = Learner(build_model("digits", seed=99), iid_digits_nodes[2], seed=5, epochs_done=2)
    rebuilt.set_weights(original.get_weights())
    fresh = Learner(build_model("digits", seed=99), iid_digits_nodes[2], seed=5)
    fresh.set_weights(original.get_weights())

    # Execute
    for learner in (original, rebuilt, fresh):
        learner.train(1)

    # Assert: the rebuilt one shuffles as the original would; one that starts counting
    # at 0 does not
    assert (original.epochs_done, rebuilt.epochs_done, fresh.epochs_done) == (3, 3, 1)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(original.get_weights(), rebuilt.get_weights(), strict=True)
    )
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(original.get_weights(), fresh.get_weights(), strict=True)
    )
    with pytest.raises(ValueError, match="epochs_done"):
        Learner(build_model("digits", seed=0), iid_digits_nodes[2], epochs_done=-1)


def test_modules_alike_in_state_but_not_in_layers_stay_apart(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: two architectures with the same state_dict, one with ReLU, one with Tanh
    def mlp(activation: nn.Module) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), activation, nn.Linear(32, 10))

    relu, tanh = mlp(nn.ReLU()), mlp(nn.Tanh())
    x = torch.from_numpy(iid_digits_nodes[0].val.x)
    with torch.no_grad():
        expected = (relu(x), tanh(x))
    a, b = Learner(relu, iid_digits_nodes[0]), Learner(tanh, iid_digits_nodes[0])

    # Execute
    with a.module() as ma, b.module() as mb, torch.no_grad():
        got = (ma(x), mb(x))

    # Assert
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert not torch.equal(got[0], got[1])

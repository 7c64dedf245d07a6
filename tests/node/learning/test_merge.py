"""Tests for node.learning.merge: the one weighted mean and the leave-one-out means."""

import numpy as np
import pytest

from node.errors import WeightsMismatchError
from node.learning.merge import leave_one_out_means, weighted_mean


def test_weighted_mean_is_fedavg_and_keeps_dtypes() -> None:
    # Prepare
    a = [np.array([0.0, 0.0], dtype=np.float32), np.array([2], dtype=np.int64)]
    b = [np.array([4.0, 8.0], dtype=np.float32), np.array([6], dtype=np.int64)]

    # Execute
    mean = weighted_mean([a, b], [3, 1])

    # Assert
    np.testing.assert_allclose(mean[0], [1.0, 2.0])
    assert mean[0].dtype == np.float32 and mean[1].dtype == np.int64 and mean[1][0] == 3


def test_leave_one_out_means_are_the_means_of_the_others() -> None:
    # Prepare
    models = [[np.array([1.0])], [np.array([3.0])], [np.array([8.0])]]
    counts = [1.0, 1.0, 2.0]

    # Execute
    with_all, without = leave_one_out_means(models, counts)

    # Assert: each "without i" equals the weighted mean of the other two
    np.testing.assert_allclose(with_all[0], weighted_mean(models, counts)[0])
    for i, w in enumerate(without):
        others = [m for j, m in enumerate(models) if j != i]
        rest = [c for j, c in enumerate(counts) if j != i]
        assert w is not None
        np.testing.assert_allclose(w[0], weighted_mean(others, rest)[0])


def test_a_model_carrying_all_the_weight_has_no_mean_without_it() -> None:
    _, without = leave_one_out_means([[np.ones(2)], [np.zeros(2)]], [5.0, 0.0])
    assert without[0] is None and without[1] is not None


def test_bad_input_is_refused() -> None:
    with pytest.raises(WeightsMismatchError):
        weighted_mean([[np.zeros(2)], [np.zeros(3)]])
    for weights in ([1.0, -1.0], [0.0, 0.0], [1.0, float("nan")], [1.0]):
        with pytest.raises(ValueError):
            weighted_mean([[np.zeros(2)], [np.zeros(2)]], weights)

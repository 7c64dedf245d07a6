"""Tests for node.learning.merge: the one weighted mean, leave-one-out means, robust merges."""

import numpy as np
import pytest

from node.errors import WeightsMismatchError
from node.learning.merge import (
    coordinate_median,
    leave_one_out_means,
    trimmed_mean,
    weighted_mean,
)


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


def _honest_and_wild(
    n_honest: int, seed: int = 0
) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """``n_honest`` models scattered around 1.0, and a wild one: -10 x an honest model."""
    rng = np.random.default_rng(seed)
    honest = [
        [
            (1.0 + 0.1 * rng.normal(size=(3, 2))).astype(np.float32),
            (1.0 + 0.1 * rng.normal(size=2)).astype(np.float32),
        ]
        for _ in range(n_honest)
    ]
    wild = [-10.0 * t for t in honest[0]]
    return honest, wild


def _within_honest_range(merged: list[np.ndarray], honest: list[list[np.ndarray]]) -> bool:
    for i, tensor in enumerate(merged):
        values = np.stack([m[i] for m in honest])
        if not ((values.min(axis=0) <= tensor) & (tensor <= values.max(axis=0))).all():
            return False
    return True


@pytest.mark.parametrize("n_honest", [2, 3, 4])
def test_the_median_of_honest_models_and_one_wild_one_stays_among_the_honest(
    n_honest: int,
) -> None:
    # Prepare
    honest, wild = _honest_and_wild(n_honest)

    # Execute
    merged = coordinate_median([*honest, wild])
    averaged = weighted_mean([*honest, wild])

    # Assert: the mean is dragged below zero, the median stays where the honest are
    assert _within_honest_range(merged, honest)
    assert not _within_honest_range(averaged, honest)
    assert [t.shape for t in merged] == [(3, 2), (2,)]
    assert all(t.dtype == np.float32 for t in merged)


def test_the_trimmed_mean_cuts_the_wild_model_off_entirely() -> None:
    # Prepare: four honest models and a wild one; a fifth trimmed from each side
    honest, wild = _honest_and_wild(4)

    # Execute
    merged = trimmed_mean([wild, *honest], trim_fraction=0.2)

    # Assert: per coordinate, the mean of the honest values minus the largest one
    for i, tensor in enumerate(merged):
        values = np.sort(np.stack([m[i] for m in honest]).astype(np.float64), axis=0)
        np.testing.assert_allclose(tensor, values[:-1].mean(axis=0), rtol=1e-6)
        assert tensor.dtype == np.float32


def test_a_trimmed_mean_trims_at_least_one_value_per_side_and_never_everything() -> None:
    # Prepare: values 0..K-1 in one coordinate
    def models(k: int) -> list[list[np.ndarray]]:
        return [[np.array([float(v)])] for v in range(k)]

    # Execute / Assert: 0.1 of 3 models still cuts one per side; 0.49 of 4 leaves two
    assert trimmed_mean(models(3), 0.1)[0][0] == 1.0
    assert trimmed_mean(models(4), 0.49)[0][0] == 1.5
    assert trimmed_mean(models(2), 0.4)[0][0] == 0.5  # two models: nothing to trim
    assert trimmed_mean(models(5), 0.0)[0][0] == 2.0  # no trimming: the plain mean


def test_robust_merges_keep_integer_dtypes_and_refuse_bad_input() -> None:
    ints = [[np.array([1, 2], dtype=np.int64)], [np.array([2, 9], dtype=np.int64)]]

    median = coordinate_median(ints)

    assert median[0].dtype == np.int64 and median[0].tolist() == [2, 6]  # 1.5, 5.5 rounded
    with pytest.raises(WeightsMismatchError):
        coordinate_median([[np.zeros(2)], [np.zeros(3)]])
    with pytest.raises(ValueError):
        trimmed_mean([[np.zeros(2)]], trim_fraction=0.5)
    with pytest.raises(ValueError):
        coordinate_median([])

"""Model merging, as pure functions: the one weighted mean (FedAvg), leave-one-out means,
updates, gossip's age-weighted merge, and the robust merges (coordinate-wise median,
trimmed mean) that one wild model cannot drag far.

Every weighted mean of models in the project is ``weighted_mean`` (FedAvg's arithmetic,
as ``flwr.server.strategy.aggregate.aggregate`` does it, in float64 and giving each
tensor back in its own dtype). It is written here rather than imported from Flower so
that the P2P and gossip paths, and the simulator, do not load Flower (0.6 s) to average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from node.errors import WeightsMismatchError

__all__ = [
    "add_update",
    "age_weighted_merge",
    "coordinate_median",
    "leave_one_out_means",
    "subtract",
    "trimmed_mean",
    "weighted_mean",
]


def _check_same_shapes(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> None:
    if len(a) != len(b):
        raise WeightsMismatchError(f"Got {len(b)} tensors, expected {len(a)}")
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if np.shape(x) != np.shape(y):
            raise WeightsMismatchError(
                f"Tensor {i}: shape {np.shape(y)} does not match {np.shape(x)}"
            )


def _checked_weights(
    models: Sequence[Sequence[np.ndarray]], weights: Sequence[float] | None
) -> np.ndarray:
    if not models:
        raise ValueError("a weighted mean needs at least one model")
    for m in models[1:]:
        _check_same_shapes(models[0], m)
    w = np.ones(len(models)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(models),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be one finite, non-negative number per model, not all 0")
    return w


def _weighted_sums(
    models: Sequence[Sequence[np.ndarray]], w: np.ndarray
) -> tuple[list[np.ndarray], list[np.dtype]]:
    """Per tensor, ``sum_k w_k * model_k`` in float64; and the first model's dtypes."""
    dtypes = [np.asarray(t).dtype for t in models[0]]
    sums = [
        sum(np.asarray(t, dtype=np.float64) * wk for t, wk in zip(tensors, w, strict=True))
        for tensors in zip(*models, strict=True)
    ]
    return [np.asarray(s) for s in sums], dtypes


def weighted_mean(
    models: Sequence[Sequence[np.ndarray]], weights: Sequence[float] | None = None
) -> list[np.ndarray]:
    """The weighted mean of several models, tensor by tensor (FedAvg; McMahan et al., 2017).

    ``models``: K lists of arrays of equal shapes; ``weights``: K non-negative numbers
    (example counts; equal when None). Computed in float64; each tensor comes back in
    the first model's dtype. Raises ``WeightsMismatchError`` when shapes differ and
    ``ValueError`` for bad weights.
    """
    w = _checked_weights(models, weights)
    sums, dtypes = _weighted_sums(models, w)
    total = float(w.sum())
    return [(s / total).astype(d) for s, d in zip(sums, dtypes, strict=True)]


def leave_one_out_means(
    models: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> tuple[list[np.ndarray], list[list[np.ndarray] | None]]:
    """The weighted mean of all models, and for each model the mean of all the others.

    One pass over the weighted sums, then one subtraction per model: O(K) tensor
    operations, not O(K²). Entry i of the second list is None when model i carries
    all the weight (nothing is left without it). Dtypes as in ``weighted_mean``.
    """
    w = _checked_weights(models, weights)
    sums, dtypes = _weighted_sums(models, w)
    total = float(w.sum())
    with_all = [(s / total).astype(d) for s, d in zip(sums, dtypes, strict=True)]
    without: list[list[np.ndarray] | None] = []
    for model, wk in zip(models, w, strict=True):
        rest = total - float(wk)
        if rest <= 0:
            without.append(None)
            continue
        without.append(
            [
                ((s - np.asarray(t, dtype=np.float64) * wk) / rest).astype(d)
                for s, t, d in zip(sums, model, dtypes, strict=True)
            ]
        )
    return with_all, without


def subtract(new: Sequence[np.ndarray], base: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The update ``new - base`` (float32); non-float tensors give their new value."""
    _check_same_shapes(base, new)
    return [
        (np.asarray(n, dtype=np.float32) - np.asarray(b, dtype=np.float32))
        if np.issubdtype(np.asarray(n).dtype, np.floating)
        else np.asarray(n).copy()
        for n, b in zip(new, base, strict=True)
    ]


def add_update(base: Sequence[np.ndarray], update: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``base + update`` in ``base``'s dtypes; non-float tensors take the update's value."""
    _check_same_shapes(base, update)
    out: list[np.ndarray] = []
    for b, u in zip(base, update, strict=True):
        b_arr = np.asarray(b)
        if np.issubdtype(b_arr.dtype, np.floating):
            out.append(
                (b_arr.astype(np.float64) + np.asarray(u, dtype=np.float64)).astype(b_arr.dtype)
            )
        else:
            out.append(np.asarray(u).astype(b_arr.dtype))
    return out


def age_weighted_merge(
    own: Sequence[np.ndarray], own_age: int, other: Sequence[np.ndarray], other_age: int
) -> tuple[list[np.ndarray], int]:
    """Merge a received model into one's own, each weighted by its age (updates seen).

    This is gossip learning's merge (Ormándi, Hegedűs, Jelasity 2013, with ages as in
    Hegedűs et al. 2019): a fresh model does not wipe out a well-trained one. Two
    models of age 0 are averaged equally. The merged age is the larger of the two.
    """
    if own_age < 0 or other_age < 0:
        raise ValueError("ages must be non-negative")
    both_fresh = own_age == 0 and other_age == 0
    weights = [1.0, 1.0] if both_fresh else [float(own_age), float(other_age)]
    return weighted_mean([list(own), list(other)], weights), max(own_age, other_age)


def _stacked(models: Sequence[Sequence[np.ndarray]]) -> tuple[list[np.ndarray], list[np.dtype]]:
    """Per tensor, the K models' values stacked on a new first axis (float64); and dtypes."""
    if not models:
        raise ValueError("a robust merge needs at least one model")
    for m in models[1:]:
        _check_same_shapes(models[0], m)
    dtypes = [np.asarray(t).dtype for t in models[0]]
    stacks = [
        np.stack([np.asarray(t, dtype=np.float64) for t in tensors])
        for tensors in zip(*models, strict=True)
    ]
    return stacks, dtypes


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` (float64) in ``dtype``; integer and bool tensors are rounded, not truncated."""
    if not np.issubdtype(dtype, np.inexact):
        values = np.rint(values)
    return np.asarray(values).astype(dtype)


def coordinate_median(models: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The coordinate-wise median of K models, which a minority of wild models cannot drag.

    Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-robust distributed learning:
    towards optimal statistical rates" (ICML). ``models``: K lists of arrays of equal
    shapes, any dtypes. Each coordinate of the result is the median of that coordinate
    over the K models (the mean of the two middle values when K is even), so while
    fewer than half of the models are wild, however wild, every coordinate stays within
    the range of the others. Unweighted: example counts are
    claims a stranger can inflate, so a robust merge does not read them. Computed in
    float64; each tensor comes back in the first model's shape and dtype (integer
    tensors rounded). Raises ``WeightsMismatchError`` when shapes differ and
    ``ValueError`` for no models.
    """
    stacks, dtypes = _stacked(models)
    return [_as_dtype(np.median(s, axis=0), d) for s, d in zip(stacks, dtypes, strict=True)]


def trimmed_mean(
    models: Sequence[Sequence[np.ndarray]], trim_fraction: float = 0.2
) -> list[np.ndarray]:
    """The coordinate-wise trimmed mean of K models: the extremes of each coordinate dropped.

    Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-robust distributed learning:
    towards optimal statistical rates" (ICML). For each coordinate, the ``b`` largest
    and ``b`` smallest values are dropped and the rest averaged, with
    ``b = min(ceil(trim_fraction * K), (K - 1) // 2)``: unlike Flower's ``FedTrimmedAvg``
    (which floors), any positive fraction trims at least one value per side once K >= 3,
    and something is always left. Up to ``b`` wild models are cut off entirely;
    ``trim_fraction`` 0 is the plain unweighted mean. It must be in ``[0, 0.5)``, else
    ``ValueError``. Unweighted, float64 inside, shapes and dtypes kept (integer tensors
    rounded); ``WeightsMismatchError`` when shapes differ.
    """
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    stacks, dtypes = _stacked(models)
    k = len(models)
    cut = min(math.ceil(trim_fraction * k), (k - 1) // 2)
    return [
        _as_dtype(np.sort(s, axis=0)[cut : k - cut].mean(axis=0), d)
        for s, d in zip(stacks, dtypes, strict=True)
    ]

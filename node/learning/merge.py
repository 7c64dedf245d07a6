"""Model merging, as pure functions: weighted averaging, updates, gossip's age-weighted merge."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from node.errors import WeightsMismatchError

__all__ = ["add_update", "age_weighted_merge", "average", "subtract"]


def _check_same_shapes(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> None:
    if len(a) != len(b):
        raise WeightsMismatchError(f"Got {len(b)} tensors, expected {len(a)}")
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if np.shape(x) != np.shape(y):
            raise WeightsMismatchError(
                f"Tensor {i}: shape {np.shape(y)} does not match {np.shape(x)}"
            )


def average(
    models: Sequence[Sequence[np.ndarray]], weights: Sequence[float] | None = None
) -> list[np.ndarray]:
    """Weighted mean of several models (equal weights by default), tensor by tensor.

    Float tensors are averaged in float64 and returned in their own dtype; other
    tensors (counters) are taken from the first model.
    """
    if not models:
        raise ValueError("average needs at least one model")
    for m in models[1:]:
        _check_same_shapes(models[0], m)
    w = np.ones(len(models)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(models),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be one non-negative number per model, not all zero")
    w = w / w.sum()
    out: list[np.ndarray] = []
    for parts in zip(*models, strict=True):
        first = np.asarray(parts[0])
        if not np.issubdtype(first.dtype, np.floating):
            out.append(first.copy())
            continue
        acc = np.zeros(first.shape, dtype=np.float64)
        for wi, p in zip(w, parts, strict=True):
            acc += wi * np.asarray(p, dtype=np.float64)
        out.append(acc.astype(first.dtype))
    return out


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
    return average([list(own), list(other)], weights), max(own_age, other_age)

"""Each member's contribution to a group round: leave-one-out on the FedAvg aggregate.

For members with updates ``w_i`` and example counts ``n_i`` the round's model is the
weighted mean ``w = sum(n_i w_i) / sum(n_i)``. Member i's contribution is how much
worse the model would be without it::

    contribution_i = loss(mean of the others' updates) - loss(w)

positive when its update helped, zero or negative when it did not (noise, poisoned
labels). With FedAvg every "without i" model is one subtraction away from the running
sum, so measuring costs n + 1 evaluations of the group model per round, no training.
A group of one is measured against the model the round started from.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from node.learning.data import Dataset
from node.learning.learner import Learner
from node.learning.partition import NodeData

__all__ = [
    "POOLED_VAL_CAP",
    "ContributionReport",
    "Evaluate",
    "Weights",
    "leave_one_out",
    "pooled_val_loss",
    "union_val_loss",
    "weighted_mean",
]

Weights = list[np.ndarray]
# Examples of pooled validation data a round's models are scored on, at most.
POOLED_VAL_CAP = 512
# A model's loss on the measurer's validation data; lower is better.
Evaluate = Callable[[Weights], float]


@dataclass(frozen=True)
class ContributionReport:
    """Leave-one-out contributions of one round, in the order the members were given."""

    loss_with_all: float
    losses_without: list[float]
    contributions: list[float]
    seconds: float


def weighted_mean(updates: Sequence[Weights], num_examples: Sequence[int]) -> Weights:
    """The example-weighted mean of the members' weights (FedAvg), in each array's dtype."""
    if not updates or len(updates) != len(num_examples):
        raise ValueError("need one example count per update, and at least one update")
    total = float(sum(num_examples))
    if total <= 0:
        raise ValueError("the example counts must sum to more than zero")
    out: Weights = []
    for arrays in zip(*updates, strict=True):
        acc = sum(
            np.asarray(a, dtype=np.float64) * n for a, n in zip(arrays, num_examples, strict=True)
        )
        out.append(np.asarray(acc / total).astype(np.asarray(arrays[0]).dtype))
    return out


def leave_one_out(
    updates: Sequence[Weights],
    num_examples: Sequence[int],
    evaluate: Evaluate,
    *,
    baseline: Weights | None = None,
) -> ContributionReport:
    """Each member's leave-one-out contribution: loss without it minus loss with everyone.

    ``baseline`` (the model the round started from) stands in for "without" in a group
    of one; without it a lone member's contribution is 0.
    """
    start = time.perf_counter()
    n = len(updates)
    if n == 0 or len(num_examples) != n:
        raise ValueError("need one example count per update, and at least one update")
    counts = [float(c) for c in num_examples]
    if any(c < 0 for c in counts) or sum(counts) <= 0:
        raise ValueError("example counts must be non-negative and sum to more than zero")
    sums = [
        sum(np.asarray(a, dtype=np.float64) * c for a, c in zip(arrays, counts, strict=True))
        for arrays in zip(*updates, strict=True)
    ]
    total = sum(counts)
    dtypes = [np.asarray(a).dtype for a in updates[0]]
    with_all = [np.asarray(s / total).astype(d) for s, d in zip(sums, dtypes, strict=True)]
    loss_all = _finite(evaluate(with_all))
    losses: list[float] = []
    for update, c in zip(updates, counts, strict=True):
        rest = total - c
        if rest > 0:
            without = [
                np.asarray((s - np.asarray(a, dtype=np.float64) * c) / rest).astype(d)
                for s, a, d in zip(sums, update, dtypes, strict=True)
            ]
            losses.append(_finite(evaluate(without)))
        elif baseline is not None:
            losses.append(_finite(evaluate(baseline)))
        else:  # nobody else and nothing to compare with
            losses.append(loss_all)
    return ContributionReport(
        loss_with_all=loss_all,
        losses_without=losses,
        contributions=[lw - loss_all for lw in losses],
        seconds=time.perf_counter() - start,
    )


def pooled_val_loss(
    learners: Sequence[Learner], *, max_examples: int | None = POOLED_VAL_CAP, seed: int = 0
) -> Evaluate:
    """Loss on the union of the learners' validation splits, as one evaluation set.

    Above ``max_examples`` each learner gives a share proportional to its split (drawn
    once, so every model of the round is scored on the same examples): the cost of a
    round's n + 1 evaluations then grows with n, not n squared. ``None``: no cap.
    The evaluator is a private copy of the first learner's model.
    """
    if not learners:
        raise ValueError("need at least one learner")
    splits = [learner.data.val for learner in learners]
    total = sum(len(d) for d in splits)
    if total == 0:
        raise ValueError("the learners have no validation examples")
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for d in splits:
        take = len(d)
        if max_examples is not None and total > max_examples:
            take = max(1, round(max_examples * len(d) / total)) if len(d) else 0
        idx = np.sort(rng.choice(len(d), size=take, replace=False)) if take < len(d) else None
        xs.append(d.x if idx is None else d.x[idx])
        ys.append(d.y if idx is None else d.y[idx])
    pooled = Dataset(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        num_classes=splits[0].num_classes,
        name=f"{splits[0].name}-pooled-val",
    )
    first = learners[0]
    with first._lock:  # a consistent copy, even if its owner is mid-step
        model = copy.deepcopy(first.model)
    evaluator = Learner(model, NodeData(pooled, pooled, pooled, cluster=0, index=-1))

    def evaluate(weights: Weights) -> float:
        return evaluator.evaluate("val", weights=weights).loss

    return evaluate


def union_val_loss(learners: Sequence[Learner]) -> Evaluate:
    """Loss on the union of the learners' validation splits, each learner evaluating its
    own split (exact, no cap; n evaluations per model)."""

    def evaluate(weights: Weights) -> float:
        results = [learner.evaluate("val", weights=weights) for learner in learners]
        total = sum(r.num_examples for r in results)
        return sum(r.loss * r.num_examples for r in results) / total

    return evaluate


def _finite(loss: float) -> float:
    # A diverged model has an infinite loss: cap it, so a member whose absence diverges
    # the model gets a large (finite) contribution instead of NaN arithmetic.
    loss = float(loss)
    if math.isnan(loss):
        raise ValueError("the evaluation returned NaN")
    return min(loss, 1e6)

"""Each member's contribution to a group round: leave-one-out on the FedAvg aggregate.

For members with updates ``w_i`` and example counts ``n_i`` the round's FedAvg model is
``w = sum(n_i w_i) / sum(n_i)``. Member i's contribution is how much worse the model
would be without it::

    contribution_i = loss(mean of the others' updates) - loss(w)

positive when its update helped, zero or negative when it did not (noise, poisoned
labels). Every "without i" model is one subtraction away from the weighted sum
(``node.learning.merge.leave_one_out_means``), so measuring costs n + 1 evaluations
per round, no training. A group of one is measured against the model the round
started from.

In a group round the losses are federated, and measured on the *other* members' data:
every member evaluates the n + 1 models on its own validation split; member i's
contribution is the example-weighted mean (Flower's ``weighted_loss_avg``) over every
member but i of ``loss(without i) - loss(with all)``. So a member is paid for its
value to the others, never for fitting its own data, and a member alone earns 0. A
member whose update makes the model worse for the others by more than ``FLAG_MARGIN``
of their loss, and is that far below the median member, is *flagged*: its update
harms the group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.server.strategy.aggregate import weighted_loss_avg

from node.learning.merge import leave_one_out_means

__all__ = [
    "FLAG_MARGIN",
    "LOSS_CAP",
    "ContributionReport",
    "Evaluate",
    "OthersReport",
    "Weights",
    "capped_loss",
    "contributions_from_losses",
    "example_weighted_mean",
    "leave_one_out",
    "leave_one_out_models",
    "leave_one_out_on_others",
]

Weights = list[np.ndarray]
# A model's loss on the measurer's validation data; lower is better.
Evaluate = Callable[[Weights], float]
# A diverged model's loss is capped here, so its absence gives a large finite contribution.
LOSS_CAP = 1e6
# A member is flagged when the model without it is better for the others by more than
# this share of their loss with everyone (honest members' noise stays well inside it).
FLAG_MARGIN = 0.05
# Fewer members cannot tell harm from difference: in a group of two, the other member's
# own update always fits its own data better than the mean does.
MIN_TO_FLAG = 3


@dataclass(frozen=True)
class ContributionReport:
    """Leave-one-out contributions of one round, in the order the members were given."""

    loss_with_all: float
    losses_without: list[float]
    contributions: list[float]
    seconds: float


def leave_one_out_models(
    updates: Sequence[Weights], num_examples: Sequence[float], *, baseline: Weights | None = None
) -> tuple[Weights, list[Weights | None]]:
    """The FedAvg model of all ``updates`` and, per member, the FedAvg model without it.

    ``baseline`` (the model the round started from) stands in for "without" when a
    member carries all the weight (a group of one); otherwise that entry is None.
    Raises ``ValueError`` for no updates or bad counts.
    """
    if not updates or len(num_examples) != len(updates):
        raise ValueError("need one example count per update, and at least one update")
    with_all, without = leave_one_out_means(updates, [float(c) for c in num_examples])
    return with_all, [w if w is not None else baseline for w in without]


def contributions_from_losses(
    loss_with_all: float, losses_without: Sequence[float | None]
) -> list[float]:
    """``loss without i - loss with all`` per member; a missing "without" (None) gives 0."""
    base = _finite(loss_with_all)
    return [0.0 if lw is None else _finite(lw) - base for lw in losses_without]


def example_weighted_mean(per_member: Sequence[tuple[int, float]]) -> float:
    """Example-weighted mean of members' ``(num_examples, value)`` measured on their own
    data (Flower's ``weighted_loss_avg``): a loss or accuracy on the union of their data.

    Raises ``ValueError`` when the counts do not sum to more than zero.
    """
    if sum(n for n, _ in per_member) <= 0:
        raise ValueError("the example counts must sum to more than zero")
    return float(weighted_loss_avg(list(per_member)))


@dataclass(frozen=True)
class OthersReport:
    """Contributions to the other members, by member, and the members flagged."""

    contributions: dict[str, float]
    flagged: list[str]


def leave_one_out_on_others(
    evaluations: Sequence[tuple[str, int, Mapping[str, float]]],
    members: Sequence[str],
    *,
    all_label: str,
    without_label: Callable[[str], str],
    flag_margin: float = FLAG_MARGIN,
) -> OthersReport:
    """Each member's leave-one-out contribution, measured on the other members' data.

    ``evaluations``: ``(evaluator, num_examples, losses by model label)`` per member
    that evaluated; ``members``: whose contributions to compute (those with updates).
    Member i's contribution is ``mean_others(loss[without_label(i)]) -
    mean_others(loss[all_label])``, example-weighted over evaluators other than i that
    scored both models; 0 when there are none (a member alone, or no "without" model).
    Flagged: contribution below ``-flag_margin * mean_others(loss[all_label])`` and
    below the median contribution by as much, in a round of at least ``MIN_TO_FLAG``
    evaluators, when most of the other members saw that harm on their own data (one
    lying member cannot get an honest one flagged). A poisoned model makes every member's
    leave-one-out figure noise (a diverged model's loss saturates), so a flag names the
    outliers, not everyone in a bad round.
    """
    contributions: dict[str, float] = {}
    margins: dict[str, float] = {}
    witnessed: set[str] = set()  # members most of whose witnesses saw harm
    for member in members:
        label = without_label(member)
        others = [
            (n, losses)
            for evaluator, n, losses in evaluations
            if evaluator != member and label in losses and all_label in losses
        ]
        if not others:
            contributions[member] = 0.0
            continue
        with_all = _finite(example_weighted_mean([(n, ls[all_label]) for n, ls in others]))
        without = _finite(example_weighted_mean([(n, ls[label]) for n, ls in others]))
        contributions[member] = without - with_all
        margins[member] = flag_margin * abs(with_all)
        harmed = sum(
            _finite(ls[label]) - _finite(ls[all_label]) < -flag_margin * abs(_finite(ls[all_label]))
            for _, ls in others
        )
        if 2 * harmed > len(others):
            witnessed.add(member)
    typical = float(np.median(list(contributions.values()))) if contributions else 0.0
    flagged = [
        m
        for m, margin in margins.items()
        if len(evaluations) >= MIN_TO_FLAG
        and m in witnessed
        and contributions[m] < -margin
        and contributions[m] < typical - margin
    ]
    return OthersReport(contributions, flagged)


def leave_one_out(
    updates: Sequence[Weights],
    num_examples: Sequence[int],
    evaluate: Evaluate,
    *,
    baseline: Weights | None = None,
) -> ContributionReport:
    """Each member's leave-one-out contribution, scoring every model with ``evaluate``.

    ``baseline`` (the model the round started from) stands in for "without" in a group
    of one; without it a lone member's contribution is 0. Raises ``ValueError`` for no
    updates, negative counts, counts summing to zero, or an evaluation that is NaN.
    """
    start = time.perf_counter()
    with_all, without = leave_one_out_models(updates, num_examples, baseline=baseline)
    loss_all = _finite(evaluate(with_all))
    losses = [loss_all if w is None else _finite(evaluate(w)) for w in without]
    return ContributionReport(
        loss_with_all=loss_all,
        losses_without=losses,
        contributions=contributions_from_losses(loss_all, losses),
        seconds=time.perf_counter() - start,
    )


def capped_loss(loss: float) -> float:
    """``loss`` as a member reports it: at most ``LOSS_CAP``, which also stands for a
    diverged model's NaN or infinite loss (JSON and the registry take finite figures)."""
    loss = float(loss)
    return LOSS_CAP if not math.isfinite(loss) else min(loss, LOSS_CAP)


def _finite(loss: float) -> float:
    loss = float(loss)
    if math.isnan(loss):
        raise ValueError("the evaluation returned NaN")
    return min(loss, LOSS_CAP)

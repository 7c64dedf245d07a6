"""Pure group-selection policies: which group to join, when to create one, when to migrate.

Scores are "higher is better" (accuracy). A candidate *beats* a baseline by the
relative threshold ``t`` when ``score > baseline * (1 + t)``.

Moving needs confidence (``confident_win``): with ~15 validation examples one
example is 7 points of accuracy, so a 5% win alone is noise. A candidate must beat
the current group by the threshold in accuracy, have the lower mean loss, and either
pass a one-sided paired test on the same validation examples (``paired_lower_bound``
> 0: McNemar-style paired comparison of per-example correctness, normal bound at
``confidence_z``) or have won ``evidence_rounds`` evaluations in a row.

- ``local`` (default): judge groups by their current model evaluated on the node's
  own validation data (decentralised IFCA, Ghosh et al., 2020).
- ``reported``: the earlier prototype's rule, kept as a baseline: follow whichever
  group *reports* the best performance. Every node then herds into one group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "LOCAL",
    "POLICIES",
    "REPORTED",
    "Candidate",
    "Create",
    "Decision",
    "Join",
    "Leave",
    "Migrate",
    "Policy",
    "PolicyConfig",
    "Stay",
    "beats",
    "choose_initial",
    "confident_win",
    "get_policy",
    "paired_lower_bound",
    "rank_candidates",
    "reevaluate",
    "reported_accuracy_choose",
    "reported_accuracy_reevaluate",
]

LOCAL = "local"
REPORTED = "reported"


@dataclass(frozen=True)
class Candidate:
    """A group as a node sees it.

    ``reported``: the group's own reported performance. ``local_score``: the group's
    current model's accuracy on this node's validation data (None: not evaluated);
    ``local_loss`` its mean cross-entropy there (nats). ``margin_bound``: the one-sided
    lower confidence bound of (this model's minus the current group's model's)
    per-example correctness on the same examples (``paired_lower_bound``; None: not
    paired). ``wins``: how many evaluations in a row, before this one, this candidate
    already beat the current group.
    """

    group_id: int
    name: str
    members: int
    capacity: int
    reported: float | None
    local_score: float | None
    local_loss: float | None = None
    margin_bound: float | None = None
    wins: int = 0

    @property
    def has_room(self) -> bool:
        """True when one more member fits."""
        return self.members < self.capacity


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of the policies: relative switch threshold, cooldown in rounds, snapshots to
    try, how many rounds in a row the group's model must lose to the node's own update
    before the node leaves it, or a candidate must win before the node moves without a
    significant paired test (``evidence_rounds``), and the z of that one-sided test
    (``confidence_z``; 1.645: 95%)."""

    switch_threshold: float = 0.05
    cooldown_rounds: int = 3
    top_k: int = 3
    evidence_rounds: int = 2
    confidence_z: float = 1.645


@dataclass(frozen=True)
class Join:
    """Join an existing group."""

    group_id: int
    reason: str = ""


@dataclass(frozen=True)
class Create:
    """Create a new group (and become its first member)."""

    reason: str = ""


@dataclass(frozen=True)
class Stay:
    """Stay in the current group."""

    reason: str


@dataclass(frozen=True)
class Migrate:
    """Leave ``from_group`` for ``to_group``."""

    from_group: int
    to_group: int
    reason: str


@dataclass(frozen=True)
class Leave:
    """Leave ``from_group``, whose model makes this node's own worse, and choose afresh."""

    from_group: int
    reason: str


Decision = Join | Create | Stay | Migrate | Leave
ChooseFn = Callable[[float, Sequence[Candidate], PolicyConfig], Join | Create]


class ReevaluateFn(Protocol):
    """A policy's periodic re-evaluation (see ``reevaluate``)."""

    def __call__(
        self,
        current_group: int,
        current_score: float,
        candidates: Sequence[Candidate],
        rounds_since_move: int,
        cfg: PolicyConfig,
        recent: Sequence[tuple[float, float]] = (),
        *,
        current_loss: float | None = None,
    ) -> Stay | Migrate | Leave:
        """Decide whether to stay, migrate or leave."""
        ...


def beats(score: float, baseline: float, threshold: float) -> bool:
    """True when ``score`` exceeds ``baseline`` by more than the relative ``threshold``."""
    return score > baseline * (1.0 + threshold)


def paired_lower_bound(
    candidate_correct: Sequence[bool] | np.ndarray,
    current_correct: Sequence[bool] | np.ndarray,
    z: float = 1.645,
) -> float:
    """One-sided lower confidence bound of the mean per-example accuracy difference.

    ``candidate_correct``, ``current_correct``: bool ``[N]``, whether each model got
    each of the *same* N validation examples right. Returns ``mean(d) - z * se(d)`` with
    ``d = candidate - current`` in {-1, 0, 1} and ``se`` its standard error; > 0 means
    the candidate is better at the one-sided level of ``z``. A paired test (the normal
    approximation behind McNemar's test, McNemar 1947) is far tighter than comparing
    two accuracies: the examples both models get right or wrong add no noise. With no
    disagreement at all the bound is 0 (no evidence). Raises ``ValueError`` when the
    lengths differ or N = 0.
    """
    a = np.asarray(candidate_correct, dtype=np.float64)
    b = np.asarray(current_correct, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal non-empty vectors, got shapes {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    # Sample variance, floored at one discordant pair in n so that 2 lucky examples of
    # 2 disagreeing are no certainty.
    var = max(float(d.var(ddof=1)) if n > 1 else 1.0, 1.0 / n)
    return float(d.mean() - z * math.sqrt(var / n))


def confident_win(
    candidate: Candidate,
    current_score: float,
    current_loss: float | None,
    cfg: PolicyConfig,
) -> tuple[bool, str]:
    """Whether ``candidate`` beats the current group with confidence, and why (in words).

    Rule: accuracy beats ``current_score`` by ``cfg.switch_threshold`` (relative), the
    mean loss is lower (when both are known), and either ``margin_bound > 0`` (a
    significant paired win on the same examples) or this is the
    ``cfg.evidence_rounds``-th win in a row (repeated evidence). The reason is empty
    when the candidate is not even better.
    """
    score = candidate.local_score
    if score is None or not beats(score, current_score, cfg.switch_threshold):
        return False, ""
    loss, fit = candidate.local_loss, f"{score:.2f} vs {current_score:.2f}"
    if loss is not None and current_loss is not None:
        fit += f" (loss {loss:.2f} vs {current_loss:.2f})"
        if loss >= current_loss:
            return False, f"{candidate.name} fits own data {fit}, but its loss is not lower"
    in_a_row = candidate.wins + 1
    if candidate.margin_bound is not None and candidate.margin_bound > 0:
        return True, (
            f"{candidate.name} fits own data {fit}, a significant paired win "
            f"(lower bound +{candidate.margin_bound:.2f})"
        )
    if in_a_row >= cfg.evidence_rounds:
        return True, f"{candidate.name} fits own data {fit}, {in_a_row} evaluations in a row"
    return False, (
        f"{candidate.name} fits own data {fit}, but not yet with confidence "
        f"({in_a_row} of {cfg.evidence_rounds} evaluations)"
    )


def _reported_key(c: Candidate) -> tuple[bool, float, int]:
    # Sorts ascending: reported ones first, best first, then lowest id for determinism.
    return (c.reported is None, -(c.reported or 0.0), c.group_id)


def _local_key(c: Candidate) -> tuple[float, float, float, int]:
    # max(): best local score, then lowest loss, then best reported, then lowest id.
    reported = c.reported if c.reported is not None else float("-inf")
    loss = -c.local_loss if c.local_loss is not None else float("-inf")
    score = c.local_score if c.local_score is not None else float("-inf")
    return (score, loss, reported, -c.group_id)


def rank_candidates(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """The ``k`` candidates worth evaluating: with room first, then best reported (None last)."""
    ranked = sorted(candidates, key=lambda c: (not c.has_room, *_reported_key(c)))
    return ranked[: max(k, 0)]


def choose_initial(
    own_score: float, candidates: Sequence[Candidate], cfg: PolicyConfig
) -> Join | Create:
    """Join the candidate with room whose model scores best on this node's data, or create.

    ``own_score`` is the node's own model (trained alone) on its validation data.
    Creates when no group exists, all are full, or ``own_score`` beats the best
    evaluated candidate by the threshold. When no candidate with room was evaluated,
    joins the best reported one.
    """
    open_groups = [c for c in candidates if c.has_room]
    if not candidates:
        return Create("no group exists yet")
    if not open_groups:
        return Create(f"all {len(candidates)} groups are full")
    evaluated = [c for c in open_groups if c.local_score is not None]
    if not evaluated:
        best = sorted(open_groups, key=_reported_key)[0]
        return Join(best.group_id, f"no group evaluated; {best.name} reports the best")
    best = max(evaluated, key=_local_key)
    best_score = best.local_score if best.local_score is not None else 0.0
    if beats(own_score, best_score, cfg.switch_threshold):
        return Create(
            f"own model {own_score:.3f} beats the best group {best.name} ({best_score:.3f}) "
            f"by more than {cfg.switch_threshold:.0%}"
        )
    loss = f" (loss {best.local_loss:.2f})" if best.local_loss is not None else ""
    return Join(best.group_id, f"{best.name} fits own data best: {best_score:.2f}{loss}")


def _cooldown(rounds_since_move: int, cfg: PolicyConfig) -> Stay | None:
    if rounds_since_move < cfg.cooldown_rounds:
        return Stay(
            f"cooldown: {rounds_since_move} of {cfg.cooldown_rounds} rounds since last move"
        )
    return None


def reevaluate(
    current_group: int,
    current_score: float,
    candidates: Sequence[Candidate],
    rounds_since_move: int,
    cfg: PolicyConfig,
    recent: Sequence[tuple[float, float]] = (),
    *,
    current_loss: float | None = None,
) -> Stay | Migrate | Leave:
    """Migrate when a group with room beats the current one on own data with confidence
    (``confident_win``); leave when the current group's model makes the node's own worse.

    ``current_score`` / ``current_loss`` are the current group's model's accuracy and
    mean loss on this node's validation data.
    ``recent`` holds, oldest first, ``(group model, without the group)`` accuracies on the
    node's validation data from its last rounds in this group, where "without the
    group" is the best the node had on its own (its update of the round before
    aggregation, or the model it had before it joined): when that beats the group's
    model by the threshold in each of the last ``evidence_rounds`` rounds, the group is
    hurting the node (poisoned members, or data that disagrees) and it leaves. Never
    moves during the cooldown or to a full group; a better group with room is preferred
    to leaving.
    """
    if (stay := _cooldown(rounds_since_move, cfg)) is not None:
        return stay
    others = [c for c in candidates if c.group_id != current_group and c.local_score is not None]
    open_groups = [c for c in others if c.has_room]
    waiting = ""
    if open_groups:
        best = max(open_groups, key=_local_key)
        confident, why = confident_win(best, current_score, current_loss, cfg)
        if confident:
            return Migrate(current_group, best.group_id, why)
        waiting = why
    evidence = list(recent)[-cfg.evidence_rounds :] if cfg.evidence_rounds > 0 else []
    if len(evidence) == cfg.evidence_rounds and all(
        beats(own, group, cfg.switch_threshold) for group, own in evidence
    ):
        group, own = evidence[-1]
        return Leave(
            current_group,
            f"on its own it scores {own:.3f} vs the group's {group:.3f} "
            f"({cfg.evidence_rounds} rounds in a row > {cfg.switch_threshold:.0%} better): "
            "the group makes this node's model worse",
        )
    if waiting:
        return Stay(waiting)
    if not others:
        return Stay("no other group evaluated")
    best_any = max(others, key=_local_key)
    best_any_score = best_any.local_score if best_any.local_score is not None else 0.0
    if not best_any.has_room and beats(best_any_score, current_score, cfg.switch_threshold):
        return Stay(f"{best_any.name} would be better ({best_any_score:.3f}) but is full")
    return Stay(
        f"no group with room beats {current_score:.3f} by more than {cfg.switch_threshold:.0%} "
        f"(best {best_any.name}: {best_any_score:.3f})"
    )


def reported_accuracy_choose(
    own_score: float, candidates: Sequence[Candidate], cfg: PolicyConfig
) -> Join | Create:
    """Baseline: join the group with room that reports the best performance; create if none."""
    open_groups = [c for c in candidates if c.has_room]
    if not open_groups:
        return Create("no group with room" if candidates else "no group exists yet")
    best = sorted(open_groups, key=_reported_key)[0]
    return Join(best.group_id, f"{best.name} reports the best performance ({best.reported})")


def reported_accuracy_reevaluate(
    current_group: int,
    current_score: float,
    candidates: Sequence[Candidate],
    rounds_since_move: int,
    cfg: PolicyConfig,
    recent: Sequence[tuple[float, float]] = (),
    *,
    current_loss: float | None = None,
) -> Stay | Migrate | Leave:
    """Baseline: move to the group with room reporting the best performance.

    The current group's level is its reported value when it is among ``candidates``
    (else ``current_score``). Same threshold and cooldown as ``reevaluate``, so the two
    policies differ only in the signal they trust; ``recent`` and ``current_loss`` are
    not used (the baseline trusts reports, not its own data).
    """
    if (stay := _cooldown(rounds_since_move, cfg)) is not None:
        return stay
    here = next((c for c in candidates if c.group_id == current_group), None)
    level = here.reported if here is not None and here.reported is not None else current_score
    others = [
        c
        for c in candidates
        if c.group_id != current_group and c.has_room and c.reported is not None
    ]
    if not others:
        return Stay("no other group with room reports a performance")
    best = sorted(others, key=_reported_key)[0]
    reported = best.reported if best.reported is not None else 0.0
    if beats(reported, level, cfg.switch_threshold):
        return Migrate(
            current_group,
            best.group_id,
            f"{best.name} reports {reported:.3f} vs {level:.3f} here",
        )
    return Stay(f"no group reports more than {cfg.switch_threshold:.0%} above {level:.3f}")


@dataclass(frozen=True)
class Policy:
    """A named pair of decision functions: first choice and periodic re-evaluation."""

    name: str
    choose: ChooseFn
    reevaluate: ReevaluateFn


POLICIES: dict[str, Policy] = {
    LOCAL: Policy(LOCAL, choose_initial, reevaluate),
    REPORTED: Policy(REPORTED, reported_accuracy_choose, reported_accuracy_reevaluate),
}


def get_policy(name: str) -> Policy:
    """Return the policy called ``name``; ValueError lists the valid names."""
    if name not in POLICIES:
        raise ValueError(f"Unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    return POLICIES[name]

"""Meta-federation: groups that find their siblings, share knowledge, merge and split.

Pure decisions on plain data (``score_examples``, ``Fit``, ``is_sibling``,
``sibling_candidates``, ``sibling_components``, ``sharing_weights``, ``merge_plan``,
``sattler_split``) and a thin layer that carries them out against the registry
(``report_group_siblings``, ``merge_into``, ``split_off``). The in-process network
(``node.runtime.network``) drives them every ``meta_every_rounds`` rounds.

The shape is that of a real deployment: each member scores a candidate model on its own
validation data (``member_fits``), the group's host sums the counts (``Fit.__add__``).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering
from torch import nn

from node.registry_client import RegistryClient, RegistryClientError, SiblingFit
from node.runtime.policy import beats
from node.runtime.scores import sibling_clusters

__all__ = [
    "ExampleScores",
    "Fit",
    "SiblingScore",
    "is_sibling",
    "member_fits",
    "merge_into",
    "merge_plan",
    "report_group_siblings",
    "sattler_split",
    "score_examples",
    "sharing_weights",
    "sibling_candidates",
    "sibling_components",
    "split_off",
    "wilson_lower_bound",
]

log = logging.getLogger(__name__)

_EVAL_BATCH = 1024


@dataclass(frozen=True)
class ExampleScores:
    """Per-example results of one model: ``correct`` bool ``[N]``, ``loss`` float64 ``[N]``
    (cross-entropy, nats)."""

    correct: np.ndarray
    loss: np.ndarray

    @property
    def accuracy(self) -> float:
        """Share of examples right."""
        return float(self.correct.mean())

    @property
    def mean_loss(self) -> float:
        """Mean cross-entropy (nats)."""
        return float(self.loss.mean())


def score_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ExampleScores:
    """``model`` on ``(x, y)`` (x float32 ``[N, ...]``, y int64 ``[N]``, N > 0), one forward
    pass per batch of 1024; the model's train/eval mode is restored. Raises ``ValueError``
    when N = 0."""
    if len(y) == 0:
        raise ValueError("no examples to score")
    was_training = model.training
    model.eval()
    correct, losses = [], []
    with torch.no_grad():
        for start in range(0, len(y), _EVAL_BATCH):
            xb, yb = x[start : start + _EVAL_BATCH], y[start : start + _EVAL_BATCH]
            logits = model(xb)
            losses.append(nn.functional.cross_entropy(logits, yb, reduction="none").double())
            correct.append(logits.argmax(dim=1) == yb)
    model.train(was_training)
    return ExampleScores(torch.cat(correct).numpy(), torch.cat(losses).numpy())


@dataclass(frozen=True)
class Fit:
    """How a model fits some data, as sums so that members' fits add up at the host:
    ``correct`` examples right, ``loss_sum`` summed cross-entropy (nats), ``examples``."""

    correct: int
    loss_sum: float
    examples: int

    def __add__(self, other: Fit) -> Fit:
        return Fit(
            self.correct + other.correct,
            self.loss_sum + other.loss_sum,
            self.examples + other.examples,
        )

    @property
    def accuracy(self) -> float:
        """Share right (0 when there are no examples)."""
        return self.correct / self.examples if self.examples else 0.0

    @property
    def loss(self) -> float:
        """Mean cross-entropy (inf when there are no examples)."""
        return self.loss_sum / self.examples if self.examples else float("inf")


def member_fits(scores: ExampleScores, sizes: Sequence[int]) -> list[Fit]:
    """Split one batched evaluation over stacked members' data back into one ``Fit`` per
    member (``sizes``: each member's example count, in stacking order). Raises
    ``ValueError`` when the sizes do not add up to the examples scored."""
    if sum(sizes) != len(scores.correct):
        raise ValueError(f"sizes add up to {sum(sizes)}, not {len(scores.correct)} examples")
    out, start = [], 0
    for n in sizes:
        c, lo = scores.correct[start : start + n], scores.loss[start : start + n]
        out.append(Fit(int(c.sum()), float(lo.sum()), n))
        start += n
    return out


def wilson_lower_bound(accuracy: float, examples: int, z: float = 1.645) -> float:
    """One-sided lower confidence bound of an accuracy measured on ``examples`` examples
    (Wilson score interval, Wilson 1927; z = 1.645: 95 % one-sided). 0.0 for no examples."""
    if examples <= 0:
        return 0.0
    n, p = float(examples), min(max(accuracy, 0.0), 1.0)
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def is_sibling(own: Fit, other: Fit, threshold: float, chance: float = 0.0) -> bool:
    """True when ``other`` (another group's model on this group's members' data) fits as
    well as ``own`` (this group's model on the same data): its accuracy is not worse by
    more than the relative ``threshold`` and its mean loss not higher by more than it.
    The same 5% rule by which nodes choose groups (``node.runtime.policy.beats``).

    ``chance`` (1 / classes): ``other`` must also keep, with confidence, at least half of
    what ``own`` gained over chance (its Wilson lower bound minus chance >= half of own's
    accuracy minus chance). Without that, models that have learned little yet "fit as
    well" as each other: measured on 60 Fashion-MNIST nodes with 100 examples each, 46 of
    the 59 links of the first meta round joined different clusters, at fits of 0.08-0.2,
    and sharing across them kept the groups near chance; demanding only a lower bound
    above chance still left 18 of 25 links across clusters."""
    if other.examples == 0 or own.examples == 0:
        return False
    kept = wilson_lower_bound(other.accuracy, other.examples) - chance
    if chance > 0.0 and kept < max(own.accuracy - chance, 0.0) / 2:
        return False
    if kept <= 0.0 and chance > 0.0:
        return False
    return not beats(own.accuracy, other.accuracy, threshold) and other.loss <= own.loss * (
        1.0 + threshold
    )


@dataclass(frozen=True)
class SiblingScore:
    """``sibling_id``'s model on ``group_id``'s members' data: accuracy ``fit``, mean loss
    ``loss`` (nats) over ``examples``; ``own_fit`` is the group's own model there."""

    group_id: int
    sibling_id: int
    fit: float
    own_fit: float
    loss: float
    examples: int


def sibling_components(groups: Iterable[int], links: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Connected components of the sibling graph (``node.runtime.scores.sibling_clusters``):
    group id -> smallest group id of its component (a group with no link is its own
    component). Links naming a group outside ``groups`` are ignored."""
    known = set(groups)
    clusters = sibling_clusters(known, [(a, b) for a, b in links if a in known and b in known])
    smallest: dict[int, int] = {}
    for g, c in clusters.items():
        smallest[c] = min(smallest.get(c, int(g)), int(g))  # type: ignore[call-overload]
    return {int(g): smallest[c] for g, c in clusters.items()}  # type: ignore[call-overload]


def sibling_candidates(
    group_id: int,
    groups: Sequence[int],
    links: Iterable[tuple[int, int]],
    rng: random.Random,
    limit: int = 16,
) -> list[int]:
    """The groups whose models ``group_id`` scores this meta round, at most ``limit``:
    those in its sibling component first (known siblings stay checked), then a seeded
    sample of one representative per other component, then of the rest. Bounded, so 80
    groups cost 80 x 16 forward passes, not 80 x 79."""
    others = [g for g in sorted(groups) if g != group_id]
    comp = sibling_components(groups, links)
    linked = [g for g in others if comp[g] == comp.get(group_id, group_id)]
    rest = [g for g in others if g not in set(linked)]
    rng.shuffle(rest)
    reps: dict[int, int] = {}
    for g in rest:
        reps.setdefault(comp[g], g)
    chosen = linked[:limit]
    for g in list(reps.values()) + rest:
        if len(chosen) >= limit:
            break
        if g not in chosen:
            chosen.append(g)
    return chosen


def sharing_weights(own: tuple[int, float], siblings: Sequence[tuple[int, float]]) -> list[float]:
    """Weights of the knowledge-sharing mean: ``examples x fit`` for the group itself
    (``own``) and each sibling (``(training examples, accuracy on the group's data)``).

    FedAvg across compatible cluster models (McMahan et al., 2017, weighted by examples)
    as in clustered FL with hierarchical clustering (FL+HC, Briggs et al., 2020) and
    FedGroup (Duan et al., 2021), where models of one cluster are averaged: the siblings
    are the models the 5% rule found compatible, and scaling by fit makes a sibling that
    fits this group's data worse count for less."""
    pairs = [own, *siblings]
    return [float(n) * max(float(f), 0.0) for n, f in pairs]


def merge_plan(
    sizes: Mapping[int, int], siblings: Iterable[tuple[int, int]], capacity: int
) -> list[tuple[int, int]]:
    """Which groups merge: ``(smaller, into_larger)`` for mutual siblings (both
    ``(a, b)`` and ``(b, a)`` in ``siblings``) whose member counts together fit
    ``capacity``. Each group takes part in at most one merge; smallest pairs first; of
    two equal sizes the newer (higher id) merges into the older (deterministic)."""
    directed = set(siblings)
    pairs = sorted(
        {(min(a, b), max(a, b)) for a, b in directed if (b, a) in directed and a != b},
        key=lambda p: (sizes.get(p[0], 0) + sizes.get(p[1], 0), p),
    )
    busy: set[int] = set()
    plan = []
    for a, b in pairs:
        if a in busy or b in busy or a not in sizes or b not in sizes:
            continue
        if sizes[a] + sizes[b] > capacity:
            continue
        small, large = (a, b) if (sizes[a], -a) < (sizes[b], -b) else (b, a)
        plan.append((small, large))
        busy |= {a, b}
    return plan


def sattler_split(
    updates: Mapping[str, np.ndarray], threshold: float = 0.0, min_members: int = 4
) -> tuple[list[str], list[str], float] | None:
    """Clustered FL's split (Sattler, Müller & Samek, 2020, IEEE TNNLS): bipartition the
    members by the cosine similarity of their updates and split when they disagree.

    ``updates``: member -> flat float update (its model after local training minus the
    round's start model), all the same length. The bipartition is complete-linkage
    agglomerative clustering on ``1 - cosine`` (as in the paper's code), which keeps the
    most dissimilar members apart; the group splits when the largest cosine similarity
    across the two parts is below ``threshold`` (0: no member of one part has an update
    pointing even partly the way of any member of the other). The paper also waits
    until the group's mean update is small (near a stationary point of FedAvg); here
    one round's updates decide, and a wrong split is undone by the siblings' merge.
    Returns the two parts,
    each sorted, the larger first, and that cross similarity; None when there are fewer
    than ``min_members`` or the members agree.
    """
    names = sorted(updates)
    if len(names) < max(min_members, 2):
        return None
    m = np.stack([np.asarray(updates[n], dtype=np.float64).ravel() for n in names])
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    m = m / np.where(norms > 0, norms, 1.0)
    sim = np.clip(m @ m.T, -1.0, 1.0)
    labels = (
        AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="complete")
        .fit(1.0 - sim)
        .labels_
    )
    a = [i for i, lab in enumerate(labels) if lab == 0]
    b = [i for i, lab in enumerate(labels) if lab == 1]
    if not a or not b:
        return None
    cross = float(sim[np.ix_(a, b)].max())
    if cross >= threshold:
        return None
    parts = sorted(([names[i] for i in a], [names[i] for i in b]), key=lambda p: (-len(p), p))
    return parts[0], parts[1], cross


# --- carrying decisions out against the registry --------------------------------------


def report_group_siblings(
    client: RegistryClient, group_id: int, round_: int, siblings: Sequence[SiblingScore]
) -> bool:
    """The host reports its group's siblings (``PUT /groups/{id}/siblings``); False (and a
    log line) when the registry refuses or is away."""
    fits = [SiblingFit(s.sibling_id, s.fit, s.own_fit, s.loss, s.examples) for s in siblings]
    try:
        client.report_siblings(group_id, round_, fits)
    except RegistryClientError as exc:
        log.warning("group %s: siblings not reported: %s", group_id, exc)
        return False
    return True


def merge_into(client: RegistryClient, group_id: int, into: int) -> bool:
    """Ask the registry to move every member of ``group_id`` into its sibling ``into``
    (``POST /groups/{id}/merge``); a refusal (409: over capacity, no longer siblings) is
    skipped with a log line and gives False."""
    try:
        client.merge_group(group_id, into)
    except RegistryClientError as exc:
        log.info("group %s: merge into %s skipped: %s", group_id, into, exc)
        return False
    return True


def split_off(client: RegistryClient, group_id: int, members: Sequence[str], name: str) -> bool:
    """Ask the registry to move ``members`` of ``group_id`` into a new group ``name``
    (``POST /groups/{id}/split``); a refusal is logged and gives False."""
    try:
        client.split_group(group_id, list(members), name)
    except RegistryClientError as exc:
        log.info("group %s: split skipped: %s", group_id, exc)
        return False
    return True

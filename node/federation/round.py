"""One group round, the same code for every runtime.

A round, as the group's host runs it (``run_group_round``)::

    members train on the group model ─▶ the Flower strategy aggregates ─▶ the result is
    checked ─▶ the snapshot is uploaded ─▶ members evaluate the new model (and, to
    measure contributions, the leave-one-out models) on their own data and report
    their performance ─▶ contributions are computed and submitted to the ledger

and as a member takes part in it (``GroupMember``): train on the weights received,
evaluate the models received, adopt the group's new model, report.

Runtimes differ only in transport and clock. A transport implements ``Federation``:
``node.federation.inprocess.InMemoryFederation`` (Flower's message API over an
in-memory grid: the in-process network and the simulator) and
``node.federation.link.LinkFederation`` (Flower's gRPC link between node processes).
Registry I/O goes through ``GroupRegistry`` and ``PerformanceReporter``, which
``node.registry_client.RegistryClient`` implements; a failing registry call is logged
and the round goes on (its model is kept), except that an upload the registry
*refuses* (409: another host stored a newer round; 403: no longer a member) ends the
round, so the caller can step down.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from node.errors import (
    ConflictError,
    ForbiddenError,
    RegistryClientError,
    RemoteInputError,
)
from node.federation.contribution import (
    contributions_from_losses,
    example_weighted_mean,
    leave_one_out_models,
)
from node.federation.strategies import FEDAVG
from node.learning.learner import LOSS, Learner
from node.learning.weights import (
    SnapshotCache,
    Weights,
    WeightsSignature,
    check_weights,
    decode_weights,
    weights_to_bytes,
)

__all__ = [
    "Federation",
    "FitOutcome",
    "GroupMember",
    "GroupRegistry",
    "GroupRoundResult",
    "GroupSnapshot",
    "MemberEvaluation",
    "MemberUpdate",
    "PerformanceReporter",
    "SnapshotSource",
    "latest_group_model",
    "run_group_round",
]

log = logging.getLogger(__name__)


# --- what crosses the transport ----------------------------------------------------------


@dataclass(frozen=True)
class MemberUpdate:
    """A member's reply to a training instruction: its weights after local training."""

    member: str
    weights: Weights
    num_examples: int
    train_loss: float


@dataclass(frozen=True)
class MemberEvaluation:
    """A member's reply to an evaluation instruction: each model on its validation split.

    ``losses[j]`` and ``accuracies[j]`` belong to the j-th model sent; model 0 is the
    group's new model, which the member has adopted as its own. ``extra_seconds`` is
    the time spent on models 1.. (what measuring contributions cost this member).
    """

    member: str
    num_examples: int
    losses: list[float]
    accuracies: list[float]
    extra_seconds: float = 0.0


@dataclass(frozen=True)
class FitOutcome:
    """The training phase: the strategy's aggregate (None when nothing came back)."""

    weights: Weights | None
    updates: list[MemberUpdate]
    failures: int
    seconds: float


class Federation(Protocol):
    """How a host reaches its group's members for one round (a transport)."""

    @property
    def strategy(self) -> str:
        """Name of the Flower strategy that aggregates (``fedavg``, ``fedmedian``, ...)."""

    def fit(self, weights: Weights, round_: int, local_epochs: int) -> FitOutcome:
        """Send ``weights`` to every member to train; aggregate the replies with the strategy.

        Raises ``RemoteInputError`` when the replies cannot be aggregated at all.
        """

    def evaluate(
        self, models: Sequence[Weights], round_: int, group_id: int
    ) -> list[MemberEvaluation]:
        """Send ``models`` to every member to evaluate on its own data; the usable replies.

        Raises ``RemoteInputError`` when no reply can be read at all.
        """


class GroupRegistry(Protocol):
    """The registry calls a group's host makes in a round (``RegistryClient`` fits)."""

    def upload_model(self, group_id: int, round: int, data: bytes) -> object:
        """Store the group's snapshot for ``round``."""

    def submit_contributions(
        self,
        group_id: int,
        round: int,
        contributions: Mapping[str, float],
        *,
        num_examples: Mapping[str, int] | None = None,
        method: str = ...,
    ) -> object:
        """Submit every member's contribution to ``round``."""


class PerformanceReporter(Protocol):
    """The registry call a member makes in a round (``RegistryClient`` fits)."""

    def report_performance(
        self, group_id: int, *, value: float, round: int, num_examples: int = ..., metric: str = ...
    ) -> object:
        """Report the group model's accuracy on this member's own data."""


# --- the member's side -------------------------------------------------------------------


class GroupMember:
    """One member's part in group rounds: the same in process and in a node process.

    It owns nothing but a reference to the node's ``Learner`` (which serialises access
    to the model). Every list of weights received is checked against the learner's
    own signature before use: a bad one raises ``RemoteInputError`` and the learner is
    left untouched.
    """

    def __init__(
        self, node_id: str, learner: Learner, *, reporter: PerformanceReporter | None = None
    ) -> None:
        self.node_id = node_id
        self.learner = learner
        self.reporter = reporter
        self.signature = WeightsSignature.of(learner.get_weights())

    def train(self, weights: Sequence[np.ndarray], local_epochs: int) -> MemberUpdate:
        """Load the group's ``weights``, train ``local_epochs`` epochs on local data."""
        checked = check_weights(weights, self.signature)
        self.learner.set_weights(checked)
        metrics = self.learner.train(epochs=local_epochs)
        return MemberUpdate(
            member=self.node_id,
            weights=self.learner.get_weights(),
            num_examples=self.learner.num_train_examples,
            train_loss=float(metrics[LOSS]),
        )

    def evaluate(
        self, models: Sequence[Sequence[np.ndarray]], *, group_id: int, round_: int
    ) -> MemberEvaluation:
        """Adopt ``models[0]`` (the group's new model), evaluate every model on the
        validation split, and report model 0's accuracy for ``round_`` to the registry."""
        if not models:
            raise RemoteInputError("an evaluation instruction without a model")
        checked = [check_weights(m, self.signature) for m in models]
        self.learner.set_weights(checked[0])
        results = [self.learner.evaluate("val")]
        started = time.perf_counter()
        results += [self.learner.evaluate("val", weights=m) for m in checked[1:]]
        extra_seconds = time.perf_counter() - started
        own = results[0]
        if self.reporter is not None:
            try:
                self.reporter.report_performance(
                    group_id, value=own.accuracy, round=round_, num_examples=own.num_examples
                )
            except RegistryClientError as exc:
                log.warning("%s: performance report failed: %s", self.node_id, exc)
        return MemberEvaluation(
            member=self.node_id,
            num_examples=own.num_examples,
            losses=[r.loss for r in results],
            accuracies=[r.accuracy for r in results],
            extra_seconds=extra_seconds,
        )


# --- the host's side ---------------------------------------------------------------------


@dataclass
class GroupRoundResult:
    """What one group round did.

    ``weights`` is the group's model after the round: the new aggregate when
    ``aggregated``, else the model the round started from. ``accuracy`` is the
    example-weighted validation accuracy of the new model over the members that
    evaluated it. ``refused`` holds the registry's refusal of the upload (409/403),
    after which the round stopped: the caller should stop hosting.
    ``contribution_seconds`` is what measuring contributions cost: building the
    leave-one-out models plus every member's evaluation of them.
    """

    round: int
    weights: Weights
    aggregated: bool = False
    updates: list[MemberUpdate] = field(default_factory=list)
    evaluations: list[MemberEvaluation] = field(default_factory=list)
    contributions: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    accuracy: float | None = None
    refused: RegistryClientError | None = None
    fit_seconds: float = 0.0
    evaluate_seconds: float = 0.0
    contribution_seconds: float = 0.0


def run_group_round(
    federation: Federation,
    initial: Weights,
    *,
    group_id: int,
    round_: int,
    local_epochs: int = 1,
    registry: GroupRegistry | None = None,
    measure_contribution: bool = True,
) -> GroupRoundResult:
    """Run round ``round_`` of group ``group_id`` from ``initial`` (see the module docstring).

    ``registry`` None: nothing is uploaded or submitted (a simulation without a
    registry). Contributions are leave-one-out on the FedAvg aggregate, with federated
    losses (``node.federation.contribution``). Remote input never raises out of here:
    a bad aggregate is logged and the round keeps ``initial``.
    """
    result = GroupRoundResult(round=round_, weights=initial)
    try:
        fit = federation.fit(initial, round_, local_epochs)
    except RemoteInputError as exc:
        log.warning("group %s round %s: members' replies unusable: %s", group_id, round_, exc)
        return result
    result.updates, result.failures, result.fit_seconds = fit.updates, fit.failures, fit.seconds
    if fit.weights is None:
        log.info("group %s round %s: no member trained", group_id, round_)
        return result
    try:
        new = check_weights(fit.weights, WeightsSignature.of(initial))
    except RemoteInputError as exc:
        log.warning("group %s round %s: aggregate rejected, model kept: %s", group_id, round_, exc)
        return result
    started = time.perf_counter()
    models: list[Weights] = [new]
    loo = None
    if measure_contribution:
        try:
            models, loo = _models_to_evaluate(federation.strategy, new, fit.updates, initial)
        except ValueError as exc:  # e.g. example counts that cannot weigh a mean
            log.warning("group %s round %s: contributions not measured: %s", group_id, round_, exc)
    loo_seconds = time.perf_counter() - started
    if registry is not None:
        try:
            registry.upload_model(group_id, round_, weights_to_bytes(new))
        except (ConflictError, ForbiddenError) as exc:
            result.refused = exc
            log.info("group %s round %s: snapshot refused: %s", group_id, round_, exc)
            return result
        except RegistryClientError as exc:
            log.warning("group %s round %s: snapshot upload failed: %s", group_id, round_, exc)
    result.weights, result.aggregated = new, True
    started = time.perf_counter()
    try:
        result.evaluations = _usable(federation.evaluate(models, round_, group_id), len(models))
    except RemoteInputError as exc:
        log.warning("group %s round %s: evaluations unusable: %s", group_id, round_, exc)
    result.evaluate_seconds = time.perf_counter() - started
    if result.evaluations:
        result.accuracy = example_weighted_mean(
            [(e.num_examples, e.accuracies[0]) for e in result.evaluations]
        )
    if loo is not None and result.evaluations and fit.updates:
        result.contributions = _contributions(loo, fit.updates, result.evaluations)
        result.contribution_seconds = loo_seconds + sum(e.extra_seconds for e in result.evaluations)
        if registry is not None:
            _submit(registry, group_id, round_, result.contributions, fit.updates)
    return result


def _usable(evaluations: Sequence[MemberEvaluation], count: int) -> list[MemberEvaluation]:
    """The evaluations that answer for every model with finite figures and examples."""
    out = []
    for e in evaluations:
        figures = [*e.losses, *e.accuracies]
        if (
            len(e.losses) == len(e.accuracies) == count
            and e.num_examples > 0
            and all(math.isfinite(v) for v in figures)
        ):
            out.append(e)
        else:
            log.warning("%s's evaluation does not answer for the %d models sent", e.member, count)
    return out


@dataclass(frozen=True)
class _LeaveOneOut:
    """Where the contribution models sit in the list sent for evaluation."""

    with_all: int
    without: list[int | None]


def _models_to_evaluate(
    strategy: str, new: Weights, updates: Sequence[MemberUpdate], initial: Weights
) -> tuple[list[Weights], _LeaveOneOut | None]:
    """The new model first, then (to measure contributions) the leave-one-out models."""
    models = [new]
    if not updates:
        return models, None
    with_all, without = leave_one_out_models(
        [u.weights for u in updates], [u.num_examples for u in updates], baseline=initial
    )
    # With FedAvg the new model is the FedAvg model of all updates: no need to send it twice.
    index_all = 0
    if strategy != FEDAVG:
        models.append(with_all)
        index_all = len(models) - 1
    positions: list[int | None] = []
    for w in without:
        if w is None:
            positions.append(None)
        else:
            models.append(w)
            positions.append(len(models) - 1)
    return models, _LeaveOneOut(index_all, positions)


def _contributions(
    loo: _LeaveOneOut, updates: Sequence[MemberUpdate], evaluations: Sequence[MemberEvaluation]
) -> dict[str, float]:
    def loss(index: int) -> float:
        return example_weighted_mean([(e.num_examples, e.losses[index]) for e in evaluations])

    without = [None if i is None else loss(i) for i in loo.without]
    values = contributions_from_losses(loss(loo.with_all), without)
    return {u.member: c for u, c in zip(updates, values, strict=True)}


def _submit(
    registry: GroupRegistry,
    group_id: int,
    round_: int,
    contributions: Mapping[str, float],
    updates: Sequence[MemberUpdate],
) -> None:
    try:
        registry.submit_contributions(
            group_id,
            round_,
            contributions,
            num_examples={u.member: u.num_examples for u in updates},
        )
    except RegistryClientError as exc:
        log.warning("group %s round %s: contribution report failed: %s", group_id, round_, exc)


# --- resuming from the registry ----------------------------------------------------------


class SnapshotSource(Protocol):
    """Registry reads for a group's latest snapshot (``RegistryClient`` fits)."""

    def model_info(self, group_id: int) -> _Info | None:
        """Round and hash of the latest snapshot, without its bytes."""

    def download_model(self, group_id: int, round: int | None = None) -> _Blob | None:
        """The latest snapshot (or a given round's)."""


class _Info(Protocol):
    @property
    def round(self) -> int: ...


class _Blob(Protocol):
    @property
    def data(self) -> bytes: ...
    @property
    def round(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class GroupSnapshot:
    """A group's latest snapshot: its round, and its weights unless they failed their checks.

    A host that meets an unusable snapshot (``weights`` None) resumes from its own model
    and numbers its next round above it, so one bad upload cannot stall the group.
    """

    round: int
    weights: Weights | None


def latest_group_model(
    registry: SnapshotSource,
    group_id: int,
    signature: WeightsSignature,
    *,
    newer_than: int = -1,
    cache: SnapshotCache | None = None,
) -> GroupSnapshot | None:
    """The group's latest snapshot, when its round is newer than ``newer_than``.

    None when there is none, it is not newer, or the registry cannot be reached. A
    snapshot that fails its checks (corrupt, another architecture, not finite) is
    logged with its cause and returned without weights: never loaded, never fatal.
    The bytes are fetched only when the round is newer.
    """
    try:
        info = registry.model_info(group_id)
        if info is None or info.round <= newer_than:
            return None
        blob = registry.download_model(group_id, round=info.round)
    except RegistryClientError as exc:
        log.warning("group %s: cannot fetch its snapshot: %s", group_id, exc)
        return None
    if blob is None:
        return None
    try:
        if cache is not None:
            weights = cache.weights(blob.sha256, blob.data, signature)
        else:
            weights = decode_weights(blob.data, signature)
    except RemoteInputError as exc:
        log.warning("group %s: snapshot of round %s skipped: %s", group_id, blob.round, exc)
        return GroupSnapshot(blob.round, None)
    return GroupSnapshot(blob.round, [w.copy() for w in weights])

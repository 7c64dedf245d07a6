"""One group round, the same code for every runtime.

A round, as the group's host runs it (``run_group_round``)::

    members train on the group model ─▶ the Flower strategy aggregates ─▶ the result is
    checked ─▶ the snapshot is uploaded ─▶ members evaluate the new model, the round's
    start model and (to measure contributions) the leave-one-out models on their own
    data, and report ─▶ contributions are computed and submitted to the ledger

and as a member takes part in it (``GroupMember``): train on the weights received,
evaluate the models received, adopt the group's new model, report.

Every model of an evaluation carries a label (``new``, ``start``, ``all``,
``without:<member>``): members report their losses by label to the registry, which can
so check a host's contribution figures against the members' own.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np

from node.errors import (
    ConflictError,
    ForbiddenError,
    RegistryClientError,
    RemoteInputError,
)
from node.federation.contribution import (
    capped_loss,
    example_weighted_mean,
    leave_one_out_models,
    leave_one_out_on_others,
)
from node.federation.strategies import FEDAVG
from node.learning.learner import LOSS, Learner
from node.learning.snapshots import ConditionalSnapshotSource, SnapshotStore
from node.learning.weights import (
    SnapshotCache,
    Weights,
    WeightsSignature,
    check_count,
    check_weights,
    decode_weights,
    weights_to_bytes,
)
from node.rejections import Rejections

__all__ = [
    "ALL_MODEL",
    "NEW_MODEL",
    "START_MODEL",
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
    "screen_updates",
    "without_label",
]

log = logging.getLogger(__name__)

# Labels of the models in an evaluation instruction.
NEW_MODEL = "new"  # the round's aggregate: members adopt it
START_MODEL = "start"  # the model the round started from: the round's improvement
ALL_MODEL = "all"  # FedAvg of every update (sent when the strategy is not FedAvg)
_WITHOUT = "without:"


def without_label(member: str) -> str:
    """The label of the FedAvg model of every update but ``member``'s."""
    return f"{_WITHOUT}{member}"


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

    ``losses[j]`` and ``accuracies[j]`` belong to the j-th model sent (label
    ``labels[j]``); model 0 is the group's new model, which the member has adopted.
    ``extra_seconds`` is the time spent on models 1.. (what measuring contributions
    cost this member). ``own_accuracy`` is the member's own update of the round (before
    aggregation) on its validation split, when it trained in the round.
    """

    member: str
    num_examples: int
    losses: list[float]
    accuracies: list[float]
    extra_seconds: float = 0.0
    labels: list[str] = field(default_factory=list)
    own_accuracy: float | None = None

    def loss(self, label: str) -> float | None:
        """This member's loss on the model labelled ``label`` (None: not evaluated)."""
        return self.losses[self.labels.index(label)] if label in self.labels else None


@dataclass(frozen=True)
class FitOutcome:
    """The training phase: the strategy's aggregate (None when nothing came back).

    ``refused`` names the replies screened out before aggregation (``screen_updates``).
    """

    weights: Weights | None
    updates: list[MemberUpdate]
    failures: int
    seconds: float
    refused: list[tuple[str, RemoteInputError]] = field(default_factory=list)


# An update's example count weighs at most this many times the round's median count.
COUNT_CAP_FACTOR = 2.0


@dataclass(frozen=True)
class Screened:
    """What ``screen_updates`` kept (by index into its input, with the count to weigh
    each by) and refused (member, reason)."""

    kept: dict[int, int]
    refused: list[tuple[str, RemoteInputError]]


def screen_updates(
    updates: Sequence[tuple[str, Sequence[object], object]], signature: WeightsSignature
) -> Screened:
    """Check training replies before any strategy aggregates them.

    ``updates``: ``(member, weights, example count)`` as received. A reply is refused
    when its weights do not fit ``signature`` or are not finite, or its count is not a
    whole number of at least 1; the kept counts are clamped to ``COUNT_CAP_FACTOR``
    times their (lower) median, so no member buys the aggregate by claiming more
    examples (Flower's strategies weigh by the count). Both transports call this.
    """
    valid: dict[int, int] = {}
    refused: list[tuple[str, RemoteInputError]] = []
    for i, (member, weights, count) in enumerate(updates):
        try:
            check_weights(weights, signature)
            n = check_count(count, what="example count")
            if n < 1:
                raise RemoteInputError("example count 0: an update from no examples")
        except RemoteInputError as exc:
            refused.append((member, exc))
            continue
        valid[i] = n
    if valid:
        counts = sorted(valid.values())
        lower_median = counts[(len(counts) - 1) // 2]  # a minority of liars cannot raise it
        cap = max(1, int(COUNT_CAP_FACTOR * lower_median))
        valid = {i: min(n, cap) for i, n in valid.items()}
    return Screened(valid, refused)


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
        self, models: Sequence[Weights], labels: Sequence[str], round_: int, group_id: int
    ) -> list[MemberEvaluation]:
        """Send ``models`` (named by ``labels``) to every member to evaluate on its own
        data; the replies. Raises ``RemoteInputError`` when no reply can be read at all."""


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
    """The registry calls a member makes in a round (``RegistryClient`` fits)."""

    def report_performance(
        self, group_id: int, *, value: float, round: int, num_examples: int = ..., metric: str = ...
    ) -> object:
        """Report the group model's accuracy on this member's own data."""

    def report_evaluation(
        self,
        group_id: int,
        round: int,
        losses: Mapping[str, float],
        *,
        num_examples: int,
        accuracy: float | None = None,
    ) -> object:
        """Report this member's losses on the round's models, by label; with ``accuracy``
        it is also the member's performance report for the round."""


# --- the member's side -------------------------------------------------------------------


class GroupMember:
    """One member's part in group rounds: the same in process and in a node process.

    It owns nothing but a reference to the node's ``Learner`` (which serialises access
    to the model). Every list of weights received is checked against the learner's
    own signature before use: a bad one is counted in ``rejections``, raises
    ``RemoteInputError`` and leaves the learner untouched.
    """

    def __init__(
        self,
        node_id: str,
        learner: Learner,
        *,
        reporter: PerformanceReporter | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        self.node_id = node_id
        self.learner = learner
        self.reporter = reporter
        self.rejections = rejections if rejections is not None else Rejections(node_id)
        self.signature = WeightsSignature.of(learner.get_weights())
        self._last_update: Weights | None = None

    def train(self, weights: Sequence[np.ndarray], local_epochs: int) -> MemberUpdate:
        """Load the group's ``weights``, train ``local_epochs`` epochs on local data."""
        checked = self._checked(weights, "group model to train")
        self.learner.set_weights(checked)
        metrics = self.learner.train(epochs=local_epochs)
        update = self.learner.get_weights()
        self._last_update = update
        return MemberUpdate(
            member=self.node_id,
            weights=update,
            num_examples=self.learner.num_train_examples,
            train_loss=float(metrics[LOSS]),
        )

    def evaluate(
        self,
        models: Sequence[Sequence[np.ndarray]],
        labels: Sequence[str] = (),
        *,
        group_id: int,
        round_: int,
    ) -> MemberEvaluation:
        """Adopt ``models[0]`` (the group's new model), evaluate every model on the
        validation split, and report to the registry: model 0's accuracy for ``round_``,
        and every model's loss by label."""
        if not models or (labels and len(labels) != len(models)):
            raise RemoteInputError(f"{len(models)} models came with {len(labels)} labels")
        checked = [self._checked(m, "model to evaluate") for m in models]
        self.learner.set_weights(checked[0])
        results = [self.learner.evaluate("val")]
        started = time.perf_counter()
        results += [self.learner.evaluate("val", weights=m) for m in checked[1:]]
        extra_seconds = time.perf_counter() - started
        own_update, self._last_update = self._last_update, None
        own_accuracy = (
            self.learner.evaluate("val", weights=own_update).accuracy
            if own_update is not None
            else None
        )
        new = results[0]
        evaluation = MemberEvaluation(
            member=self.node_id,
            num_examples=new.num_examples,
            losses=[capped_loss(r.loss) for r in results],
            accuracies=[r.accuracy for r in results],
            extra_seconds=extra_seconds,
            labels=list(labels),
            own_accuracy=own_accuracy,
        )
        self._report(group_id, round_, evaluation)
        return evaluation

    def _checked(self, weights: Sequence[object], what: str) -> Weights:
        try:
            return check_weights(weights, self.signature)
        except RemoteInputError as exc:
            self.rejections.record(what, exc)
            raise

    def _report(self, group_id: int, round_: int, evaluation: MemberEvaluation) -> None:
        if self.reporter is None:
            return
        try:
            if evaluation.labels:  # one request: the losses, and the accuracy with them
                self.reporter.report_evaluation(
                    group_id,
                    round_,
                    dict(zip(evaluation.labels, evaluation.losses, strict=True)),
                    num_examples=evaluation.num_examples,
                    accuracy=evaluation.accuracies[0],
                )
            else:
                self.reporter.report_performance(
                    group_id,
                    value=evaluation.accuracies[0],
                    round=round_,
                    num_examples=evaluation.num_examples,
                )
        except RegistryClientError as exc:
            log.warning("%s: performance report failed: %s", self.node_id, exc)


# --- the host's side ---------------------------------------------------------------------


@dataclass
class GroupRoundResult:
    """What one group round did.

    ``weights`` is the group's model after the round: the new aggregate when
    ``aggregated``, else the model the round started from. ``accuracy`` is the
    example-weighted validation accuracy of the new model over the members that
    evaluated it. ``improvement`` is how much the round lowered the members' loss
    (start model minus new model, example-weighted), ``contributions`` each member's
    leave-one-out value to the *other* members (a member alone earns 0) and ``flagged``
    the members whose update made the model worse for the others by more than
    ``FLAG_MARGIN`` of their loss. ``refused`` holds the registry's refusal of the
    upload (409/403), after which the round stopped: the caller should stop hosting.
    ``contribution_seconds`` is what measuring contributions cost: building the
    leave-one-out models plus every member's evaluation of them.
    """

    round: int
    weights: Weights
    aggregated: bool = False
    updates: list[MemberUpdate] = field(default_factory=list)
    evaluations: list[MemberEvaluation] = field(default_factory=list)
    contributions: dict[str, float] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)
    improvement: float | None = None
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
    rejections: Rejections | None = None,
) -> GroupRoundResult:
    """Run round ``round_`` of group ``group_id`` from ``initial`` (see the module docstring).

    ``registry`` None: nothing is uploaded or submitted (a simulation without a
    registry). Contributions are leave-one-out on the FedAvg aggregate, measured on the
    other members' data (``node.federation.contribution``). Remote input never raises
    out of here: what fails its checks is counted in ``rejections``, logged and skipped,
    and a bad aggregate leaves the round with ``initial``.
    """
    rejections = rejections if rejections is not None else Rejections(f"group {group_id}")
    result = GroupRoundResult(round=round_, weights=initial)
    try:
        fit = federation.fit(initial, round_, local_epochs)
    except RemoteInputError as exc:
        rejections.record(f"round {round_} training replies", exc)
        return result
    result.updates, result.failures, result.fit_seconds = fit.updates, fit.failures, fit.seconds
    for member, reason in fit.refused:
        rejections.record(f"{member}'s round {round_} update", reason)
    if fit.weights is None:
        log.info("group %s round %s: no member trained", group_id, round_)
        return result
    try:
        new = check_weights(fit.weights, WeightsSignature.of(initial))
    except RemoteInputError as exc:
        rejections.record(f"round {round_} aggregate (model kept)", exc)
        return result
    # The model's own dtypes: a strategy may hand back float64.
    new = [w.astype(ref.dtype, copy=False) for w, ref in zip(new, initial, strict=True)]
    started = time.perf_counter()
    models, labels = [new, initial], [NEW_MODEL, START_MODEL]
    if measure_contribution:
        try:
            _add_leave_one_out(models, labels, federation.strategy, fit.updates)
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
        evaluations = federation.evaluate(models, labels, round_, group_id)
        result.evaluations = _usable(evaluations, labels, rejections)
    except RemoteInputError as exc:
        rejections.record(f"round {round_} evaluation replies", exc)
    result.evaluate_seconds = time.perf_counter() - started
    _figures(result, labels, fit.updates, measure_contribution)
    if result.contributions:
        result.contribution_seconds = loo_seconds + sum(e.extra_seconds for e in result.evaluations)
        if result.flagged:
            log.warning(
                "group %s round %s: flagged %s (the model is worse for the others with them)",
                group_id, round_, ", ".join(result.flagged),
            )  # fmt: skip
        if registry is not None:
            _submit(registry, group_id, round_, result.contributions, fit.updates)
    return result


def _add_leave_one_out(
    models: list[Weights], labels: list[str], strategy: str, updates: Sequence[MemberUpdate]
) -> None:
    """Append the FedAvg model of all updates (unless the strategy is FedAvg, whose new
    model it is) and, per member, the FedAvg model without it (groups of two or more)."""
    if len(updates) < 2:
        return
    with_all, without = leave_one_out_models(
        [u.weights for u in updates], [u.num_examples for u in updates]
    )
    if strategy != FEDAVG:
        models.append(with_all)
        labels.append(ALL_MODEL)
    for update, model in zip(updates, without, strict=True):
        if model is not None:
            models.append(model)
            labels.append(without_label(update.member))


def _usable(
    evaluations: Sequence[MemberEvaluation], labels: Sequence[str], rejections: Rejections
) -> list[MemberEvaluation]:
    """The evaluations that answer for every model sent with finite figures and examples."""
    out = []
    for e in evaluations:
        figures = [*e.losses, *e.accuracies]
        complete = len(e.losses) == len(e.accuracies) == len(labels)
        if complete and e.num_examples > 0 and all(math.isfinite(v) for v in figures):
            out.append(
                e
                if e.labels == list(labels)
                else MemberEvaluation(
                    e.member,
                    e.num_examples,
                    e.losses,
                    e.accuracies,
                    e.extra_seconds,
                    list(labels),
                    e.own_accuracy,
                )
            )
        else:
            rejections.record(
                f"{e.member}'s evaluation",
                RemoteInputError(f"does not answer for the {len(labels)} models sent"),
            )
    return out


def _figures(
    result: GroupRoundResult,
    labels: Sequence[str],
    updates: Sequence[MemberUpdate],
    measure_contribution: bool,
) -> None:
    """The round's accuracy, improvement, contributions and flags, from the evaluations."""
    evaluations = result.evaluations
    if not evaluations:
        return
    result.accuracy = example_weighted_mean(
        [(e.num_examples, e.accuracies[0]) for e in evaluations]
    )
    loss: Callable[[str], float] = lambda label: example_weighted_mean(  # noqa: E731
        [(e.num_examples, e.losses[labels.index(label)]) for e in evaluations]
    )
    result.improvement = loss(START_MODEL) - loss(NEW_MODEL)
    if not measure_contribution or not updates:
        return
    all_label = ALL_MODEL if ALL_MODEL in labels else NEW_MODEL
    losses = [
        (e.member, e.num_examples, dict(zip(labels, e.losses, strict=True))) for e in evaluations
    ]
    report = leave_one_out_on_others(
        losses, [u.member for u in updates], all_label=all_label, without_label=without_label
    )
    result.contributions = report.contributions
    result.flagged = report.flagged


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
    store: SnapshotStore | None = None,
    loss: Callable[[Weights], float] | None = None,
    rejections: Rejections | None = None,
) -> GroupSnapshot | None:
    """The group's latest snapshot, when its round is newer than ``newer_than``.

    None when there is none, it is not newer, or the registry cannot be reached. A
    snapshot that fails its checks (corrupt, another architecture, not finite), or
    whose ``loss`` on the caller's own data is not finite, is counted in
    ``rejections``, logged with its cause and returned without weights: never loaded,
    never fatal. The bytes are fetched only when the round is newer, and with
    ``store`` (whose ``registry`` must take ``download_model(..., known=)``, as
    ``RegistryClient`` does) only when the store does not hold that round already.
    """
    rejections = rejections if rejections is not None else Rejections(f"group {group_id}")
    try:
        info = registry.model_info(group_id)
        if info is None or info.round <= newer_than:
            return None
        if store is not None:
            return _from_store(
                store, cast(ConditionalSnapshotSource, registry), group_id, signature,
                info.round, loss, rejections,
            )  # fmt: skip
        blob = registry.download_model(group_id, round=info.round)
    except RegistryClientError as exc:
        log.warning("group %s: cannot fetch its snapshot: %s", group_id, exc)
        return None
    if blob is None:
        return None
    what = f"group {group_id}'s snapshot of round {blob.round}"
    try:
        if cache is not None:
            weights = cache.weights(blob.sha256, blob.data, signature)
        else:
            weights = decode_weights(blob.data, signature)
        if loss is not None and not math.isfinite(loss(weights)):
            raise RemoteInputError("its loss on this node's own data is not finite")
    except RemoteInputError as exc:
        rejections.record(what, exc)
        return GroupSnapshot(blob.round, None)
    return GroupSnapshot(blob.round, [w.copy() for w in weights])


def _from_store(
    store: SnapshotStore,
    registry: ConditionalSnapshotSource,
    group_id: int,
    signature: WeightsSignature,
    model_round: int,
    loss: Callable[[Weights], float] | None,
    rejections: Rejections,
) -> GroupSnapshot | None:
    """``latest_group_model``'s answer from ``store``; RegistryClientError when the
    download fails."""
    try:
        snap = store.latest(registry, group_id, signature, model_round)
        if snap is None:
            return None
        if loss is not None and not math.isfinite(loss(snap.weights)):
            raise RemoteInputError("its loss on this node's own data is not finite")
    except RemoteInputError as exc:
        rejections.record(f"group {group_id}'s snapshot of round {model_round}", exc)
        return GroupSnapshot(model_round, None)
    return GroupSnapshot(snap.round, [w.copy() for w in snap.weights])

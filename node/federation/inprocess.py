"""The in-process transport of a group round: Flower's message API over an in-memory grid.

``InMemoryFederation`` implements ``node.federation.round.Federation`` for members that
live in this process (the in-process network, the simulator). Training uses a Flower
message-based strategy (``FedAvg``, ``FedMedian``, ``FedTrimmedAvg``, ``Krum``) through
its public steps ``configure_train`` → ``Grid.send_and_receive`` → ``aggregate_train``;
evaluation sends every model to every member in one message and collects each
member's losses and accuracies.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.exception import InconsistentMessageReplies

from node.errors import RemoteInputError
from node.federation.grid import SERVER_NODE_ID, InMemoryGrid
from node.federation.keys import (
    ACCURACIES_KEY,
    ARRAYS_KEY,
    CONFIG_KEY,
    EXTRA_SECONDS_KEY,
    GROUP_ID_KEY,
    LABELS_KEY,
    LOCAL_EPOCHS_KEY,
    LOSSES_KEY,
    METRICS_KEY,
    MODEL_KEY,
    MODELS_KEY,
    NUM_EXAMPLES_KEY,
    OWN_ACCURACY_KEY,
    ROUND_KEY,
    TRAIN_LOSS_KEY,
)
from node.federation.round import (
    FitOutcome,
    GroupMember,
    GroupRoundResult,
    MemberEvaluation,
    MemberUpdate,
    run_group_round,
    screen_updates,
)
from node.federation.strategies import FEDAVG, check_strategy, make_strategy
from node.learning.learner import Learner
from node.learning.weights import Weights, WeightsSignature

__all__ = ["InMemoryFederation", "member_app", "train_in_memory"]

logger = logging.getLogger(__name__)

EVALUATE = "evaluate"


def member_app(member: GroupMember) -> ClientApp:
    """A Flower ClientApp whose train and evaluate handlers are ``member``'s."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        weights = msg.content.array_records[ARRAYS_KEY].to_numpy_ndarrays()
        config = msg.content.config_records[CONFIG_KEY]
        update = member.train(weights, int(cast(int, config[LOCAL_EPOCHS_KEY])))
        reply = RecordDict(
            {
                ARRAYS_KEY: ArrayRecord(update.weights),
                METRICS_KEY: MetricRecord(
                    {TRAIN_LOSS_KEY: update.train_loss, NUM_EXAMPLES_KEY: update.num_examples}
                ),
            }
        )
        return Message(content=reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config = msg.content.config_records[CONFIG_KEY]
        count = int(cast(int, config[MODELS_KEY]))
        models = [
            msg.content.array_records[MODEL_KEY.format(i)].to_numpy_ndarrays() for i in range(count)
        ]
        result = member.evaluate(
            models,
            [str(label) for label in cast(list[str], config.get(LABELS_KEY, []))],
            group_id=int(cast(int, config[GROUP_ID_KEY])),
            round_=int(cast(int, config[ROUND_KEY])),
        )
        metrics: dict[str, float | int | list[float]] = {
            NUM_EXAMPLES_KEY: result.num_examples,
            LOSSES_KEY: result.losses,
            ACCURACIES_KEY: result.accuracies,
            EXTRA_SECONDS_KEY: result.extra_seconds,
        }
        if result.own_accuracy is not None:
            metrics[OWN_ACCURACY_KEY] = result.own_accuracy
        reply = RecordDict({METRICS_KEY: MetricRecord(metrics)})  # type: ignore[arg-type]
        return Message(content=reply, reply_to=msg)

    return app


class InMemoryFederation:
    """A group's members in this process, reached through Flower's message API.

    ``app_factory(member, node_id)`` replaces the built-in ClientApp (for tests and
    custom clients). Members are Flower nodes 2, 3, ... in the order given; replies
    come back in that order, so rounds are reproducible. A member whose handler
    raises ``RemoteInputError`` (bad weights received) is counted as a failure.
    """

    def __init__(
        self,
        members: Sequence[GroupMember],
        *,
        strategy: str = FEDAVG,
        strategy_options: Mapping[str, Any] | None = None,
        app_factory: Callable[[GroupMember, int], ClientApp] | None = None,
    ) -> None:
        if not members:
            raise ValueError("a federation needs at least one member")
        self._strategy_name = check_strategy(strategy)
        self._options = dict(strategy_options or {})
        self.members = list(members)
        self._ids = {SERVER_NODE_ID + 1 + i: m.node_id for i, m in enumerate(self.members)}
        factory = app_factory or (lambda member, _node_id: member_app(member))
        apps = {nid: factory(m, nid) for nid, m in zip(self._ids, self.members, strict=True)}
        self.grid = InMemoryGrid(apps, caught=(RemoteInputError,))

    @property
    def strategy(self) -> str:
        """Name of the Flower strategy that aggregates."""
        return self._strategy_name

    def fit(self, weights: Weights, round_: int, local_epochs: int) -> FitOutcome:
        """Every member trains from ``weights``; the strategy aggregates the replies."""
        start = time.perf_counter()
        strategy = make_strategy(self._strategy_name, len(self.members), self._options)
        messages = strategy.configure_train(
            round_,
            ArrayRecord(list(weights)),
            ConfigRecord({LOCAL_EPOCHS_KEY: local_epochs}),
            self.grid,
        )
        replies = list(self.grid.send_and_receive(messages))
        answered = [r for r in replies if not r.has_error()]
        received = [_update(self._ids[r.metadata.src_node_id], r) for r in answered]
        screened = screen_updates(
            [(u.member, u.weights, u.num_examples) for u in received],
            WeightsSignature.of(weights),
        )
        kept = [answered[i] for i in screened.kept]
        for i, reply in zip(screened.kept, kept, strict=True):
            # The strategy weighs by the clamped count, not the claimed one.
            reply.content.metric_records[METRICS_KEY][NUM_EXAMPLES_KEY] = screened.kept[i]
        try:
            arrays, _ = strategy.aggregate_train(round_, kept) if kept else (None, None)
        except InconsistentMessageReplies as exc:
            raise RemoteInputError(f"round {round_}: replies cannot be aggregated: {exc}") from exc
        updates = [
            MemberUpdate(received[i].member, received[i].weights, n, received[i].train_loss)
            for i, n in screened.kept.items()
        ]
        seconds = time.perf_counter() - start
        logger.debug(
            "Round %d with %d members, %s: %.3f s", round_, len(updates), self.strategy, seconds
        )
        return FitOutcome(
            weights=arrays.to_numpy_ndarrays() if arrays is not None else None,
            updates=updates,
            failures=len(replies) - len(updates),
            seconds=seconds,
            refused=screened.refused,
        )

    def evaluate(
        self, models: Sequence[Weights], labels: Sequence[str], round_: int, group_id: int
    ) -> list[MemberEvaluation]:
        """Every member evaluates ``models`` (named by ``labels``) on its validation split."""
        config = {
            MODELS_KEY: len(models),
            LABELS_KEY: list(labels),
            ROUND_KEY: round_,
            GROUP_ID_KEY: group_id,
        }
        content = RecordDict(
            {
                **{MODEL_KEY.format(i): ArrayRecord(list(m)) for i, m in enumerate(models)},
                CONFIG_KEY: ConfigRecord(config),  # type: ignore[arg-type]
            }
        )
        messages = [
            self.grid.create_message(content, EVALUATE, node_id, str(round_))
            for node_id in self._ids
        ]
        out = []
        for reply in self.grid.send_and_receive(messages):
            if reply.has_error():
                continue
            metrics = reply.content.metric_records[METRICS_KEY]
            out.append(
                MemberEvaluation(
                    member=self._ids[reply.metadata.src_node_id],
                    num_examples=int(cast(int, metrics[NUM_EXAMPLES_KEY])),
                    losses=[float(v) for v in cast(list[float], metrics[LOSSES_KEY])],
                    accuracies=[float(v) for v in cast(list[float], metrics[ACCURACIES_KEY])],
                    extra_seconds=float(cast(float, metrics.get(EXTRA_SECONDS_KEY, 0.0))),
                    labels=list(labels),
                    own_accuracy=(
                        float(cast(float, metrics[OWN_ACCURACY_KEY]))
                        if OWN_ACCURACY_KEY in metrics
                        else None
                    ),
                )
            )
        return out


def _update(member: str, reply: Message) -> MemberUpdate:
    """A training reply as received (count and weights unchecked: ``screen_updates`` does)."""
    metrics = reply.content.metric_records[METRICS_KEY]
    loss = metrics.get(TRAIN_LOSS_KEY, 0.0)
    return MemberUpdate(
        member=member,
        weights=reply.content.array_records[ARRAYS_KEY].to_numpy_ndarrays(),
        num_examples=cast(int, metrics.get(NUM_EXAMPLES_KEY)),
        train_loss=float(loss) if isinstance(loss, int | float) else 0.0,
    )


def train_in_memory(
    learners: Sequence[Learner],
    initial: Weights,
    *,
    round_: int = 1,
    local_epochs: int = 1,
    strategy: str = FEDAVG,
    strategy_options: Mapping[str, Any] | None = None,
    measure_contribution: bool = False,
) -> GroupRoundResult:
    """One group round among ``learners`` of this process, with no registry.

    For experiments, benchmarks and tests: the same ``run_group_round`` as every
    runtime, members named ``learner-<i>`` in the order given. Afterwards every
    learner holds the round's model (``result.weights``).
    """
    members = [GroupMember(f"learner-{i}", learner) for i, learner in enumerate(learners)]
    return run_group_round(
        InMemoryFederation(members, strategy=strategy, strategy_options=strategy_options),
        initial,
        group_id=0,
        round_=round_,
        local_epochs=local_epochs,
        measure_contribution=measure_contribution,
    )

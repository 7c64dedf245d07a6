"""One participant's behaviour against the registry: register, discover, decide, move.

The decisions themselves are the pure functions of node.runtime.policy; this module gathers
their inputs (group listings, snapshots evaluated on local data) and carries them out.
A registry outage never stops a node: it keeps its model and retries next time.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from node.errors import ConfigError, NonFiniteWeightsError, RemoteInputError
from node.learning.learner import Learner
from node.learning.snapshots import SnapshotStore
from node.learning.weights import WeightsSignature, weights_to_bytes
from node.registry_client import (
    ConflictError,
    GroupPublic,
    RegistryClient,
    RegistryClientError,
    RegistryUnavailableError,
    UnauthorizedError,
)
from node.rejections import Rejections
from node.runtime.meta import ExampleScores, score_examples
from node.runtime.policy import (
    Candidate,
    Create,
    Join,
    Leave,
    Migrate,
    PolicyConfig,
    Stay,
    beats,
    get_policy,
    paired_lower_bound,
    rank_candidates,
)

__all__ = ["REJECTED_METRIC", "Move", "NodeAgent"]

# The heartbeat metric counting the inputs from elsewhere a node refused.
REJECTED_METRIC = "rejected_inputs"

log = logging.getLogger(__name__)


@dataclass
class Move:
    """A group change this node made, for the run's record."""

    round: int
    from_group: int | None
    to_group: int
    reason: str


@dataclass
class NodeAgent:
    """A node: its learner, its registry client, and the policy it follows."""

    node_id: str
    learner: Learner
    client: RegistryClient
    domain: str
    address: str = "in-process"
    policy: str = "local"
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    max_capacity: int = 5
    aggregation: str = "fedavg"  # the Flower strategy of the groups this node creates
    cluster: int | None = None
    # The latest snapshot per group; the agents of one process share one.
    store: SnapshotStore = field(default_factory=SnapshotStore)
    group_id: int | None = None
    rounds_since_move: int = 0
    registered: bool = False
    moves: list[Move] = field(default_factory=list)
    # (group model, best without the group) accuracies of the last rounds in the group.
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=8))
    # This node's own model's accuracy when it joined its current group.
    solo_accuracy: float | None = None
    # group id -> id of its sibling component (node.runtime.meta.sibling_components);
    # when set, the node scores one representative group per component first.
    sibling_view: Callable[[], Mapping[int, int]] | None = None
    # How many groups at most a node scores per decision when diversifying by component.
    max_scored: int = 6

    def __post_init__(self) -> None:
        self.signature = WeightsSignature.of(self.learner.get_weights(), self.learner.weight_names)
        self.rejections = Rejections(self.node_id)
        self._unusable: set[int] = set()
        # candidate group id -> evaluations in a row in which it beat the current group
        self._wins: dict[int, int] = {}
        # When the registry last heard that this node is alive (time.monotonic()), and
        # the metrics it last sent.
        self.last_beat = -math.inf
        self.last_metrics: dict[str, float] = {}
        # group id -> (snapshot sha256, its scores on this node's data) computed elsewhere
        self._prefetched: dict[int, tuple[str, ExampleScores]] = {}
        # group id -> round of its latest snapshot, as the last listing gave it
        self._listed_rounds: dict[int, int | None] = {}

    def data_changed(self) -> None:
        """This node's data changed (drift): the evidence gathered on the old data is void,
        and the node may reconsider its group at its next evaluation."""
        self.recent.clear()
        self._wins.clear()
        self._prefetched.clear()
        self.solo_accuracy = None
        self.rounds_since_move = max(self.rounds_since_move, self.policy_config.cooldown_rounds)

    # --- registry presence -----------------------------------------------------------

    def ensure_registered(self) -> bool:
        """Register (or re-assert the registration) with this node's model signature; False
        while the registry is away.

        Raises ``ConfigError`` when the registry refuses the node's model for its domain
        (another architecture trains there): nothing this node can do at run time fixes it.
        """
        try:
            try:
                self.client.register(
                    self.node_id,
                    self.address,
                    self.domain,
                    {"cluster_hint": "hidden"},
                    model_signature=self.signature,
                )
            except UnauthorizedError:
                # The registry lost us (a new database): start over with a new token.
                self.client.token = None
                self.client.register(
                    self.node_id, self.address, self.domain, model_signature=self.signature
                )
            node = self.client.get_node()
        except ConflictError as exc:
            raise ConfigError(
                f"{self.node_id}: the registry refuses this node's model in domain "
                f"'{self.domain}': {exc.detail}"
            ) from exc
        except RegistryUnavailableError as exc:
            log.warning("%s: registry unavailable (%s); training on locally", self.node_id, exc)
            self.registered = False
            return False
        if not self.registered:
            log.info("%s: registered with %s", self.node_id, self.client.base_url)
        self.registered = True
        self.last_beat = time.monotonic()
        self.group_id = node.group_id
        return True

    def heartbeat(self, metrics: dict[str, float]) -> None:
        """Send liveness and metrics (with ``rejected_inputs``: how many inputs from elsewhere
        this node refused); a failure only marks the node as unregistered."""
        self.last_metrics = dict(metrics)
        try:
            node = self.client.heartbeat({**metrics, REJECTED_METRIC: float(self.rejections.total)})
            self.group_id = node.group_id
            self.last_beat = time.monotonic()
        except RegistryClientError as exc:
            log.warning("%s: heartbeat failed: %s", self.node_id, exc)
            self.registered = False

    # --- evaluating groups -------------------------------------------------------------

    def score_group(self, group_id: int) -> float | None:
        """The group's latest snapshot's accuracy on this node's validation data (see
        ``score_group_examples``)."""
        scores = self.score_group_examples(group_id)
        return scores.accuracy if scores is not None else None

    def score_group_examples(
        self, group_id: int, model_round: int | None = None
    ) -> ExampleScores | None:
        """The group's latest snapshot on this node's validation data, per example.

        ``model_round``: the round of the group's latest snapshot as a fresh listing gave
        it; the shared ``store`` then answers without a request when it holds that round
        (None: one conditional download). Scores handed over by ``prefetch`` for the same
        snapshot (by sha256) are used instead of a forward pass.

        None when the group has no snapshot or its snapshot is unusable (corrupt, of
        another architecture, not finite): that is logged, and the group is no
        candidate until it stores a usable one. Raises ``RegistryClientError`` when the
        download fails.
        """
        try:
            snap = self.store.latest(self.client, group_id, self.signature, model_round)
            if snap is None:
                return None
            hit = self._prefetched.get(group_id)
            if hit is not None and hit[0] == snap.sha256:
                scores = hit[1]
            else:
                scores = self.score_weights(snap.weights)
            if not math.isfinite(scores.mean_loss):
                raise NonFiniteWeightsError("its loss on this node's own data is not finite")
        except RemoteInputError as exc:
            at = f" (round {model_round})" if model_round is not None else ""
            self.rejections.record(f"snapshot of group {group_id}{at}", exc)
            self._unusable.add(group_id)
            return None
        return scores

    def prefetch(self, group_id: int, sha256: str, scores: ExampleScores) -> None:
        """Hand over ``scores``: the group's snapshot ``sha256`` on this node's validation
        data (``correct``/``loss`` of length ``len(learner.data.val)``), computed elsewhere
        (one forward pass over many nodes' data). ``score_group_examples`` uses them while
        the group's latest snapshot is that one; ``forget_prefetched`` drops them."""
        self._prefetched[group_id] = (sha256, scores)

    def forget_prefetched(self) -> None:
        """Drop the scores ``prefetch`` handed over."""
        self._prefetched.clear()

    def score_weights(self, weights: list[np.ndarray]) -> ExampleScores:
        """``weights`` (checked, this node's signature) on this node's validation split,
        per example, in a module borrowed from the learner's workspace (the learner's own
        weights are untouched)."""
        val = self.learner.data.val
        x = torch.from_numpy(np.ascontiguousarray(val.x, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(val.y, dtype=np.int64))
        with self.learner.module(weights) as model:
            return score_examples(model, x, y)

    def scoring_plan(
        self, listing: Sequence[GroupPublic], *, exclude: int | None = None
    ) -> list[int]:
        """Which of ``listing``'s groups (the domain's, ``exclude`` left out) ``candidates``
        scores on local data, in listing order: the top K by reported performance with
        room, and with a sibling view one group per sibling component first, at most
        ``max_scored`` in all; none under a policy that does not score (not ``local``)."""
        if self.policy != "local":
            return []
        plain = _plain([g for g in listing if g.id != exclude])
        ranked = rank_candidates(plain, len(plain))
        to_score = {c.group_id for c in ranked[: self.policy_config.top_k] if c.has_room}
        if self.sibling_view is not None:
            components = self.sibling_view()
            seen: set[int] = set()
            for c in ranked:
                comp = components.get(c.group_id, c.group_id)
                if c.has_room and comp not in seen and len(to_score) < self.max_scored:
                    seen.add(comp)
                    to_score.add(c.group_id)
        return [c.group_id for c in plain if c.group_id in to_score]

    def candidates(
        self,
        *,
        exclude: int | None = None,
        baseline: ExampleScores | None = None,
        listing: Sequence[GroupPublic] | None = None,
    ) -> list[Candidate]:
        """The domain's groups (``listing``, else listed now); those of ``scoring_plan``
        are scored on local data. With ``baseline`` (the current group's model per
        example) each scored candidate carries its paired lower bound against it and its
        run of wins."""
        if listing is None:
            listing = self.client.list_groups(domain=self.domain)
        self._listed_rounds = {g.id: g.model_round for g in listing}
        plain = _plain([g for g in listing if g.id != exclude])
        if self.policy != "local":
            return plain
        to_score = set(self.scoring_plan(listing, exclude=exclude))
        self._unusable.clear()
        scored = []
        for c in plain:
            scores = (
                self.score_group_examples(c.group_id, self._listed_rounds.get(c.group_id))
                if c.group_id in to_score
                else None
            )
            if scores is None:
                scored.append(c)
                continue
            bound = (
                paired_lower_bound(
                    scores.correct, baseline.correct, self.policy_config.confidence_z
                )
                if baseline is not None
                else None
            )
            scored.append(
                Candidate(
                    c.group_id,
                    c.name,
                    c.members,
                    c.capacity,
                    c.reported,
                    scores.accuracy,
                    local_loss=scores.mean_loss,
                    margin_bound=bound,
                    wins=self._wins.get(c.group_id, 0),
                )
            )
        return [c for c in scored if c.group_id not in self._unusable]

    def _count_wins(self, candidates: list[Candidate], current: ExampleScores) -> None:
        """Update the runs of wins: a candidate that beats the current group by the
        threshold with a lower loss extends its run; any other candidate's run ends."""
        t = self.policy_config.switch_threshold
        self._wins = {
            c.group_id: c.wins + 1
            for c in candidates
            if c.local_score is not None
            and c.local_loss is not None
            and beats(c.local_score, current.accuracy, t)
            and c.local_loss < current.mean_loss
        }

    # --- decisions ---------------------------------------------------------------------

    def choose_group(self, round_: int) -> int | None:
        """Join the best group for this node's data, or create one; returns the group id."""
        if not self.registered and not self.ensure_registered():
            return None
        try:
            own = self.learner.evaluate("val").accuracy
            decision = get_policy(self.policy).choose(own, self.candidates(), self.policy_config)
            if isinstance(decision, Join):
                try:
                    self._join(decision.group_id, round_, decision.reason)
                    return self.group_id
                except ConflictError as exc:  # filled up since we looked: create instead
                    log.info("%s: group %s became full (%s)", self.node_id, decision.group_id, exc)
                    decision = Create(reason="chosen group filled up")
            return self._create(round_, decision.reason)
        except RegistryUnavailableError as exc:
            log.warning("%s: registry unavailable while choosing a group: %s", self.node_id, exc)
            self.registered = False
            return None
        except RegistryClientError as exc:
            log.warning("%s: registry refused while choosing a group: %s", self.node_id, exc)
            return None

    def note_round(self, group_id: int, group_accuracy: float, own_accuracy: float | None) -> None:
        """Remember a round of the current group, as the evidence for leaving a bad group:
        the group model's accuracy on this node's validation data, and the best this node
        had without the group, its own update of the round or the model it had before it
        joined (``solo_accuracy``), whichever is higher."""
        if group_id != self.group_id:
            return
        alone = max(a for a in (own_accuracy, self.solo_accuracy, 0.0) if a is not None)
        self.recent.append((group_accuracy, alone))

    def reconsider(self, round_: int) -> Stay | Migrate | Leave | None:
        """Re-evaluate the current group against the others; migrate when one is better,
        and leave (for the best other group, or a new one) when the group hurts."""
        if self.group_id is None:
            return None
        try:
            listing = self.client.list_groups(domain=self.domain)
            rounds = {g.id: g.model_round for g in listing}
            current = self.score_group_examples(self.group_id, rounds.get(self.group_id))
            if current is None:
                current = self.score_weights(self.learner.get_weights())
            candidates = self.candidates(
                exclude=self.group_id if self.policy == "local" else None,
                baseline=current,
                listing=listing,
            )
            decision = get_policy(self.policy).reevaluate(
                self.group_id,
                current.accuracy,
                candidates,
                self.rounds_since_move,
                self.policy_config,
                list(self.recent),
                current_loss=current.mean_loss,
            )
            self._count_wins(candidates, current)
            if isinstance(decision, Migrate):
                try:
                    self._join(decision.to_group, round_, decision.reason)
                except ConflictError as exc:
                    log.info("%s: migration target filled up: %s", self.node_id, exc)
                    return Stay(reason=f"target {decision.to_group} filled up")
            if isinstance(decision, Leave):
                self._leave_for_another(round_, decision)
            return decision
        except RegistryUnavailableError as exc:
            log.warning("%s: registry unavailable while re-evaluating: %s", self.node_id, exc)
            self.registered = False
            return None
        except RegistryClientError as exc:
            log.warning("%s: registry refused while re-evaluating: %s", self.node_id, exc)
            return None

    def leave(self) -> None:
        """Leave the current group so its slot frees at once."""
        if self.group_id is None:
            return
        try:
            self.client.leave()
        except RegistryClientError as exc:
            log.warning("%s: could not leave group %s: %s", self.node_id, self.group_id, exc)
        self.group_id = None

    # --- carrying decisions out --------------------------------------------------------

    def _leave_for_another(self, round_: int, decision: Leave) -> None:
        """Choose afresh without the group being left: join the best other or create one."""
        own = self.learner.evaluate("val").accuracy
        candidates = self.candidates(exclude=decision.from_group)
        choice = get_policy(self.policy).choose(own, candidates, self.policy_config)
        reason = f"left: {decision.reason}"
        if isinstance(choice, Join):
            try:
                self._join(choice.group_id, round_, f"{reason}; {choice.reason}")
                return
            except ConflictError as exc:
                log.info("%s: group %s became full (%s)", self.node_id, choice.group_id, exc)
        self._create(round_, reason)

    def _join(self, group_id: int, round_: int, reason: str) -> None:
        previous = self.group_id
        self.client.join(group_id)
        self.solo_accuracy = self.learner.evaluate("val").accuracy
        self._cold_start(group_id)
        self._wins.clear()
        self.record_move(round_, group_id, reason)
        verb = "migrated" if previous is not None else "joined"
        log.info("%s: %s group %s (from %s): %s", self.node_id, verb, group_id, previous, reason)

    def _cold_start(self, group_id: int) -> None:
        """Start from the group's snapshot (the best-fitting one: this node just chose
        it, from the listing it chose on, so the store holds it), not from this node's
        own model: load it into the learner. A snapshot that is gone or unusable leaves
        the learner as it is."""
        try:
            snap = self.store.latest(
                self.client, group_id, self.signature, self._listed_rounds.get(group_id)
            )
            if snap is None:
                return
            weights = snap.weights
        except RemoteInputError as exc:
            self.rejections.record(f"snapshot of group {group_id} to start from", exc)
            return
        except RegistryClientError as exc:
            log.warning(
                "%s: no snapshot of group %s to start from: %s", self.node_id, group_id, exc
            )
            return
        self.learner.set_weights(weights)

    def _create(self, round_: int, reason: str) -> int:
        name = f"{self.domain}-{self.node_id}-r{round_}"
        self.solo_accuracy = self.learner.evaluate("val").accuracy
        group = self.client.create_group(
            name,
            self.domain,
            max_capacity=self.max_capacity,
            join=True,
            model_signature=self.signature,
            aggregation=self.aggregation,
        )
        # The group starts from its creator's model, so others can evaluate it at once.
        self.client.upload_model(group.id, 0, weights_to_bytes(self.learner.get_weights()))
        self.record_move(round_, group.id, f"created: {reason}")
        log.info("%s: created group %s (%s): %s", self.node_id, group.id, name, reason)
        return group.id

    def record_move(self, round_: int, group_id: int, reason: str) -> None:
        """Note that this node is now in ``group_id`` (it joined or created it, or the
        registry moved it there in a merge or split): the move is kept with its reason,
        the cooldown restarts and the old group's rounds stop counting as evidence."""
        self.moves.append(Move(round_, self.group_id, group_id, reason))
        self.group_id = group_id
        self.rounds_since_move = 0
        self.recent.clear()

    def record(self) -> dict[str, Any]:
        """Plain-data view of this node's moves."""
        return {
            "moves": [
                {"round": m.round, "from": m.from_group, "to": m.to_group, "reason": m.reason}
                for m in self.moves
            ]
        }


def _plain(groups: Sequence[GroupPublic]) -> list[Candidate]:
    """The groups as candidates, unscored (reported accuracy only)."""
    return [
        Candidate(g.id, g.name, g.member_count, g.max_capacity, g.accuracy, None) for g in groups
    ]

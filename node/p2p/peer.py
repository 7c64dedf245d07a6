"""Synchronous peer-to-peer rounds between devices: train, send to every peer, wait, average.

Each round ``r`` a peer trains locally from the round's start model, encodes its
update (trained minus start, through the configured codec with error feedback) and
sends it to every peer, which acknowledges with its own id. It then waits until
every live peer's update for round ``r`` has arrived or ``listen_timeout`` has
passed; a missing peer is reported in the round's ``RoundReport`` and the round goes
on with the updates that arrived, its own included: their example-weighted mean, or
(``aggregation``) their coordinate-wise median or trimmed mean, which one wild update
cannot drag far.

Updates come from strangers, so each passes ``inbound``'s checks first: an example
count outside ``[1, max_example_count]``, bytes that do not decode within the shapes
of this peer's own model, or a NaN is refused, logged on one line and counted in the
round's ``RoundReport.refused`` by reason. A refused update never reaches the merge.

Rounds are numbered: an update for a round this peer has already closed is dropped
as late, one too far ahead is dropped too, so rounds never mix. A peer whose port
refuses connections after it had answered before (its process died) is not waited
for; one missing ``down_after_misses`` rounds in a row is marked down and not waited
for until it answers again. So a killed peer stalls the others at most one
``listen_timeout``, and usually not at all.

The pure parts (``encode_local_update``, ``combine_updates``) are what the
compression benchmark drives without a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from node.addresses import Address
from node.errors import (
    FrameAuthError,
    FrameError,
    PeerRefusedError,
    PeerUnreachableError,
    RemoteInputError,
)
from node.learning.learner import Learner
from node.learning.merge import add_update, subtract
from node.learning.weights import WeightsSignature
from node.p2p.aggregation import MEAN, aggregate, check_aggregation
from node.p2p.auth import DEFAULT_REPLAY_WINDOW_S, FrameAuth
from node.p2p.codecs import Codec, EncodedUpdate, ErrorFeedback, compress_with_feedback
from node.p2p.inbound import (
    DEFAULT_MAX_EXAMPLE_COUNT,
    REFUSED_EXAMPLE_COUNT,
    check_example_count,
    decode_update,
    note_refusal,
    refusal_reason,
)
from node.p2p.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Envelope,
    TransportServer,
    request,
)

__all__ = [
    "ACK",
    "UPDATE",
    "PeerTrainer",
    "RoundReport",
    "check_peer_list",
    "combine_updates",
    "encode_local_update",
]

logger = logging.getLogger(__name__)

UPDATE = "update"
ACK = "ack"
NUM_EXAMPLES_META = "n"
LATE_META = "late"
# How many rounds ahead of its own a peer buffers updates (a fast peer is at most one ahead).
LOOKAHEAD_ROUNDS = 2
_RETRY_DELAY = 0.1
_MAX_RETRY_DELAY = 0.5


# --- pure round arithmetic ----------------------------------------------------------


def encode_local_update(
    codec: Codec,
    start: list[np.ndarray],
    trained: list[np.ndarray],
    feedback: ErrorFeedback,
    *,
    error_feedback: bool = True,
) -> tuple[EncodedUpdate, list[np.ndarray], ErrorFeedback]:
    """Encode ``trained - start``; return the encoding, what peers will decode, the new feedback."""
    update = subtract(trained, start)
    if not error_feedback:
        encoded = codec.encode(update)
        return encoded, codec.decode(encoded), feedback
    return compress_with_feedback(codec, update, feedback)


def combine_updates(
    start: list[np.ndarray],
    updates: Sequence[list[np.ndarray]],
    num_examples: Sequence[float],
    *,
    aggregation: str = MEAN,
    trim_fraction: float = 0.2,
) -> list[np.ndarray]:
    """The next round's model: ``start`` plus the aggregate of the updates.

    ``aggregation`` ``mean`` weighs each update by its ``num_examples``; ``median`` and
    ``trimmed_mean`` (``trim_fraction`` per side) are coordinate-wise and ignore the
    counts. Shapes and dtypes are ``start``'s. Raises ``ValueError`` for a bad mode,
    fraction or counts, ``WeightsMismatchError`` when shapes differ.
    """
    combined = aggregate(list(updates), list(num_examples), aggregation, trim_fraction)
    return add_update(start, combined)


# --- the networked peer -------------------------------------------------------------


@dataclass
class RoundReport:
    """What one round did, as this peer saw it.

    ``received_from``: peers whose update was merged; ``refused``: updates refused by
    reason (``inbound``'s ``REFUSED_*``: ``example_count``, ``malformed``, ``shape``,
    ``non_finite``); a refused peer is neither received from nor missing.
    """

    round: int
    received_from: list[str]
    missing: list[str]
    val_accuracy: float
    val_loss: float
    train_loss: float
    message_bytes: int
    bytes_sent: int
    seconds: float
    refused: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


@dataclass
class _PeerState:
    address: Address
    node_id: str | None = None
    answered_once: bool = False
    misses: int = 0
    down: bool = False


@dataclass
class _RoundSends:
    acked: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)


# Hosts that name this machine's own listening socket when it listens on loopback or on
# every address.
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


def check_peer_list(peers: Sequence[Address], own: Address | None) -> None:
    """Refuse a peer list that names a peer twice, or names this peer itself.

    A peer listed twice (or this peer listed as its own peer) would send to and wait
    for the same process twice and count its update twice in the merge. ``own`` is
    where this peer listens (``None`` while its port is still to be chosen); loopback
    names and the wildcard address count as the same host. Raises ``ValueError``
    naming the address.
    """

    def key(address: Address) -> tuple[str, int]:
        host = address.host.lower()
        return ("local" if host in _LOCAL_HOSTS else host, address.port)

    seen: set[tuple[str, int]] = set()
    for address in peers:
        k = key(address)
        if k in seen:
            raise ValueError(f"peer {address} is listed twice")
        seen.add(k)
        if own is not None and k == key(own):
            raise ValueError(
                f"peer {address} is this peer itself (it listens on {own}): "
                "list only the other peers"
            )


class PeerTrainer:
    """One device in synchronous P2P training: a listening port plus the round loop.

    ``await start()`` opens the port (``port`` is then the bound one), ``await
    run(rounds)`` runs the rounds and returns their reports, ``await stop()`` closes
    everything. The learner is only touched from one worker thread at a time.
    ``max_example_count`` bounds the counts accepted from peers; ``aggregation``
    (``mean``, ``median``, ``trimmed_mean``) and ``trim_fraction`` choose the merge
    (``ValueError`` for others). Frames are signed and verified with ``auth``
    (``node.p2p.auth``); a peer that refuses this peer's frames (wrong secret or key) is
    not waited for, and ``refused_by`` maps its address to the reason it gave.
    """

    def __init__(
        self,
        learner: Learner,
        peers: Sequence[Address],
        codec: Codec,
        *,
        auth: FrameAuth,
        replay_window_s: float = DEFAULT_REPLAY_WINDOW_S,
        node_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        listen_timeout: float = 30.0,
        error_feedback: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        down_after_misses: int = 2,
        max_example_count: int = DEFAULT_MAX_EXAMPLE_COUNT,
        aggregation: str = MEAN,
        trim_fraction: float = 0.2,
    ) -> None:
        check_aggregation(aggregation, trim_fraction)
        if max_example_count < 1:
            raise ValueError(f"max_example_count must be at least 1, got {max_example_count}")
        check_peer_list(peers, Address(host, port) if port else None)
        self.max_example_count = max_example_count
        self.aggregation = aggregation
        self.trim_fraction = trim_fraction
        self.learner = learner
        self.codec = codec
        self.node_id = node_id
        self.listen_timeout = listen_timeout
        self.error_feedback = error_feedback
        self.max_message_bytes = max_message_bytes
        self.down_after_misses = down_after_misses
        self.peers = [_PeerState(address=a) for a in peers]
        self.auth = auth
        self.refused_by: dict[str, str] = {}
        self.server = TransportServer(
            self._handle,
            auth=auth,
            host=host,
            port=port,
            max_message_bytes=max_message_bytes,
            replay_window_s=replay_window_s,
        )
        self.feedback = ErrorFeedback()
        self.current_round = 0
        self._inbox: dict[int, dict[str, Envelope]] = {}
        self._changed = asyncio.Event()
        self.late_dropped = 0

    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        return self.server.port

    async def start(self) -> None:
        """Open the listening port."""
        self.server.name = f"peer {self.node_id or 'unnamed'}"
        await self.server.start()
        if self.node_id is None:
            self.node_id = f"{self.server.host}:{self.server.port}"
            self.server.name = f"peer {self.node_id}"

    async def stop(self) -> None:
        """Close the listening port."""
        await self.server.stop()

    # -- receiving --

    async def _handle(self, envelope: Envelope) -> Envelope | None:
        assert self.node_id is not None
        if envelope.kind != UPDATE:
            logger.warning(
                "Peer %s ignored a %r message from %s", self.node_id, envelope.kind, envelope.sender
            )
            return None
        late = envelope.round < self.current_round
        if late:
            self.late_dropped += 1
            logger.info(
                "Peer %s dropped %s's update for round %d: already in round %d",
                self.node_id,
                envelope.sender,
                envelope.round,
                self.current_round,
            )
        elif envelope.round > self.current_round + LOOKAHEAD_ROUNDS:
            logger.warning(
                "Peer %s dropped %s's update for round %d: too far ahead of round %d",
                self.node_id,
                envelope.sender,
                envelope.round,
                self.current_round,
            )
        else:
            self._inbox.setdefault(envelope.round, {})[envelope.sender] = envelope
            self._changed.set()
        return Envelope(sender=self.node_id, kind=ACK, round=envelope.round, meta={LATE_META: late})

    # -- sending --

    async def _send_update(
        self, peer: _PeerState, envelope: Envelope, deadline: float, sends: _RoundSends
    ) -> None:
        key = str(peer.address)
        delay = _RETRY_DELAY
        while True:
            remaining = deadline - time.monotonic()
            try:
                reply = await request(
                    peer.address,
                    envelope,
                    auth=self.auth,
                    timeout=max(0.05, remaining),
                    max_message_bytes=self.max_message_bytes,
                    stats=self.server.stats,
                )
            except PeerUnreachableError as exc:
                # Keep trying a peer that has never answered (it may still be starting);
                # one that answered before and now refuses has gone away.
                if peer.down or peer.answered_once or remaining <= delay:
                    logger.info(
                        "Peer %s: could not send round %d to %s: %s",
                        self.node_id,
                        envelope.round,
                        key,
                        exc,
                    )
                    sends.failed.add(key)
                    self._changed.set()
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            except (PeerRefusedError, FrameAuthError, FrameError) as exc:
                # Either side's signature failed: retrying cannot help this round.
                reason = getattr(exc, "reason", "malformed_frame")
                if self.refused_by.get(key) != reason:
                    logger.error(
                        "Peer %s and %s do not trust each other's frames (%s): %s; "
                        "check both use the same p2p.shared_secret (or registered keys)",
                        self.node_id,
                        key,
                        reason,
                        exc,
                    )
                self.refused_by[key] = reason
                sends.failed.add(key)
                self._changed.set()
                return
            peer.node_id = reply.sender
            peer.answered_once = True
            peer.down = False
            sends.acked.add(key)
            self._changed.set()
            return

    def _settled(self, peer: _PeerState, rnd: int, sends: _RoundSends) -> bool:
        """True when this round needs nothing more from ``peer``."""
        if peer.node_id is not None and peer.node_id in self._inbox.get(rnd, {}):
            return True
        return peer.down or str(peer.address) in sends.failed

    # -- the round loop --

    async def run_round(self, rnd: int) -> RoundReport:
        """Run round ``rnd``: train, exchange, average, evaluate."""
        assert self.node_id is not None
        began = time.monotonic()
        self.current_round = rnd
        start = self.learner.get_weights()
        train_metrics = await asyncio.to_thread(self.learner.train)
        trained = self.learner.get_weights()
        encoded, own_update, self.feedback = encode_local_update(
            self.codec, start, trained, self.feedback, error_feedback=self.error_feedback
        )
        payload = encoded.to_bytes()
        envelope = Envelope(
            sender=self.node_id,
            kind=UPDATE,
            round=rnd,
            payload=payload,
            meta={NUM_EXAMPLES_META: self.learner.num_train_examples},
        )
        sent_before = self.server.stats.bytes_sent
        deadline = time.monotonic() + self.listen_timeout
        sends = _RoundSends()
        tasks = [
            asyncio.create_task(self._send_update(p, envelope, deadline, sends)) for p in self.peers
        ]
        try:
            while not (
                all(t.done() for t in tasks)
                and all(self._settled(p, rnd, sends) for p in self.peers)
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Close the round before reading the inbox: later arrivals count as late.
        self.current_round = rnd + 1
        arrived = self._inbox.pop(rnd, {})
        updates, weights, received = [own_update], [float(self.learner.num_train_examples)], []
        signature = WeightsSignature.of(own_update)
        refused: dict[str, int] = {}
        for sender, env in sorted(arrived.items()):
            try:
                count = check_example_count(
                    env.meta.get(NUM_EXAMPLES_META, 1), self.max_example_count
                )
            except RemoteInputError as exc:
                self._refuse(refused, REFUSED_EXAMPLE_COUNT, sender, rnd, exc)
                continue
            try:
                update = decode_update(self.codec, env.payload, signature)
            except RemoteInputError as exc:
                self._refuse(refused, refusal_reason(exc), sender, rnd, exc)
                continue
            updates.append(update)
            weights.append(float(count))
            received.append(sender)
        missing = self._note_misses(arrived)
        new_weights = combine_updates(
            start, updates, weights, aggregation=self.aggregation, trim_fraction=self.trim_fraction
        )
        await asyncio.to_thread(self.learner.set_weights, new_weights)
        val = await asyncio.to_thread(self.learner.evaluate, "val")
        report = RoundReport(
            round=rnd,
            received_from=received,
            missing=missing,
            val_accuracy=val.accuracy,
            val_loss=val.loss,
            train_loss=float(train_metrics.get("loss", 0.0)),
            message_bytes=len(payload),
            bytes_sent=self.server.stats.bytes_sent - sent_before,
            seconds=time.monotonic() - began,
            refused=refused,
        )
        if missing:
            logger.warning(
                "Peer %s round %d: no update from %s", self.node_id, rnd, ", ".join(missing)
            )
        logger.info(
            "Peer %s round %d: %d/%d peers, val accuracy %.3f, %d bytes per message, %.2f s",
            self.node_id,
            rnd,
            len(received),
            len(self.peers),
            val.accuracy,
            len(payload),
            report.seconds,
        )
        return report

    def _refuse(
        self, refused: dict[str, int], reason: str, sender: str, rnd: int, exc: Exception
    ) -> None:
        note_refusal(
            refused, reason, receiver=f"Peer {self.node_id} round {rnd}", sender=sender, error=exc
        )

    def _note_misses(self, arrived: dict[str, Envelope]) -> list[str]:
        missing = []
        for peer in self.peers:
            if peer.node_id is not None and peer.node_id in arrived:
                peer.misses = 0
                peer.down = False
                continue
            missing.append(str(peer.address))
            peer.misses += 1
            if peer.misses >= self.down_after_misses and not peer.down:
                peer.down = True
                logger.warning(
                    "Peer %s: %s missed %d rounds; not waiting for it until it answers",
                    self.node_id,
                    peer.address,
                    peer.misses,
                )
        return missing

    async def run(self, rounds: int, *, first_round: int = 1) -> list[RoundReport]:
        """Run ``rounds`` rounds numbered from ``first_round``."""
        return [await self.run_round(r) for r in range(first_round, first_round + rounds)]

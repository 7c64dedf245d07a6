"""P2P rounds among strangers, over real TCP on loopback: each attack on a receiver fails.

A receiver runs one round with an honest peer and an attacker. The right outcome is the
honest-only one: the receiver is alive, its model is exactly what the round gives
without the attacker, and its report counts the refusal by reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from node.addresses import Address, free_port
from node.cli.peer import build_trainer
from node.learning.partition import NodeData
from node.p2p.codecs import (
    DATA_KEY,
    INDEX_DTYPE_KEY,
    INDEX_KEY,
    KIND_KEY,
    SHAPE_KEY,
    SPARSE,
    DenseCodec,
    EncodedUpdate,
)
from node.p2p.config import load_config
from node.p2p.peer import ACK, NUM_EXAMPLES_META, UPDATE, PeerTrainer, RoundReport
from node.p2p.transport import Envelope, TransportServer, request
from tests.node.helpers import digits_learner
from tests.node.p2p.signing import AUTH

pytestmark = pytest.mark.usefixtures("no_peer_environment")

HONEST = "honest"
ATTACKER = "attacker"


class _ScriptedPeer:
    """A peer that sends one prepared update and acknowledges what it is sent."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.server = TransportServer(self._ack, auth=AUTH, name=node_id)

    async def _ack(self, envelope: Envelope) -> Envelope:
        return Envelope(sender=self.node_id, kind=ACK, round=envelope.round)

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.server.port)

    async def send_update(self, to: Address, rnd: int, payload: bytes, count: object) -> None:
        meta = {NUM_EXAMPLES_META: count}
        envelope = Envelope(sender=self.node_id, kind=UPDATE, round=rnd, payload=payload, meta=meta)
        await request(to, envelope, auth=AUTH)


@dataclass
class _Outcome:
    report: RoundReport
    weights: list[np.ndarray]


async def _receive_one_round(
    data: NodeData, updates: Sequence[tuple[str, bytes, object]], **trainer_options: object
) -> _Outcome:
    """Round 1 of a fresh receiver whose peers each send one scripted (payload, count)."""
    peers = [_ScriptedPeer(name) for name, _, _ in updates]
    for peer in peers:
        await peer.server.start()
    learner = digits_learner(data)
    receiver = PeerTrainer(
        learner,
        [p.address for p in peers],
        DenseCodec(),
        auth=AUTH,
        node_id="receiver",
        listen_timeout=20,
        **trainer_options,  # type: ignore[arg-type]
    )
    await receiver.start()
    try:
        to = Address("127.0.0.1", receiver.port)
        for peer, (_, payload, count) in zip(peers, updates, strict=True):
            await peer.send_update(to, 1, payload, count)
        (report,) = await receiver.run(1)
    finally:
        await receiver.stop()
        for peer in peers:
            await peer.server.stop()
    return _Outcome(report, learner.get_weights())


@pytest.fixture(scope="module")
def honest_update(iid_digits_nodes: list[NodeData]) -> bytes:
    """What an honest peer sends in round 1: its trained weights minus the start."""
    learner = digits_learner(iid_digits_nodes[1])
    start = learner.get_weights()
    learner.train()
    update = [t - s for t, s in zip(learner.get_weights(), start, strict=True)]
    return DenseCodec().encode(update).to_bytes()


@pytest.fixture(scope="module")
def honest_only(iid_digits_nodes: list[NodeData], honest_update: bytes) -> _Outcome:
    """The receiver's round 1 with the honest peer alone."""
    return asyncio.run(_receive_one_round(iid_digits_nodes[0], [(HONEST, honest_update, 300)]))


def _shifted_by(amount: float, like: list[np.ndarray]) -> bytes:
    return DenseCodec().encode([np.full_like(w, amount) for w in like]).to_bytes()


def _assert_untouched_by_the_attacker(outcome: _Outcome, honest_only: _Outcome) -> None:
    assert outcome.report.received_from == [HONEST]
    assert outcome.report.missing == []
    for got, expected in zip(outcome.weights, honest_only.weights, strict=True):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert outcome.report.val_accuracy == pytest.approx(honest_only.report.val_accuracy)


@pytest.mark.parametrize(
    "count",
    [-1, 0, 1e12, 2**64 - 1, 2.5],
    ids=["negative", "zero", "huge", "uint64-max", "fraction"],
)
def test_an_update_with_an_example_count_out_of_bounds_is_refused(
    iid_digits_nodes: list[NodeData],
    honest_update: bytes,
    honest_only: _Outcome,
    count: float | int,
) -> None:
    # Prepare: the attacker's update would move every weight by +5 (a takeover at 1e12)
    takeover = _shifted_by(5.0, honest_only.weights)
    updates = [(HONEST, honest_update, 300), (ATTACKER, takeover, count)]

    # Execute
    outcome = asyncio.run(_receive_one_round(iid_digits_nodes[0], updates))

    # Assert: the receiver finished its round with the honest outcome, refusal counted
    _assert_untouched_by_the_attacker(outcome, honest_only)
    assert outcome.report.refused == {"example_count": 1}


def test_the_example_count_bound_comes_from_the_receiver(
    iid_digits_nodes: list[NodeData], honest_update: bytes, honest_only: _Outcome
) -> None:
    # Prepare: an honest-looking count of 300, above a receiver's bound of 299
    updates = [(HONEST, honest_update, 299), (ATTACKER, honest_update, 300)]

    # Execute
    outcome = asyncio.run(_receive_one_round(iid_digits_nodes[0], updates, max_example_count=299))

    # Assert
    assert outcome.report.received_from == [HONEST]
    assert outcome.report.refused == {"example_count": 1}


def test_an_update_holding_nan_leaves_the_receivers_weights_finite(
    iid_digits_nodes: list[NodeData], honest_update: bytes, honest_only: _Outcome
) -> None:
    # Prepare: a well-formed update whose first tensor holds one NaN
    poisoned = [np.zeros_like(w) for w in honest_only.weights]
    poisoned[0].flat[0] = np.nan
    updates = [
        (HONEST, honest_update, 300),
        (ATTACKER, DenseCodec().encode(poisoned).to_bytes(), 300),
    ]

    # Execute
    outcome = asyncio.run(_receive_one_round(iid_digits_nodes[0], updates))

    # Assert
    _assert_untouched_by_the_attacker(outcome, honest_only)
    assert outcome.report.refused == {"non_finite": 1}


def test_a_sparse_frame_asking_for_ten_billion_values_is_refused(
    iid_digits_nodes: list[NodeData], honest_update: bytes, honest_only: _Outcome
) -> None:
    # Prepare: a few hundred bytes whose first record claims a 100,000 x 100,000 tensor
    records = DenseCodec().encode([np.zeros_like(w) for w in honest_only.weights]).tensors
    records[0] = {
        KIND_KEY: SPARSE,
        SHAPE_KEY: [100_000, 100_000],
        INDEX_KEY: np.array([7], dtype=np.uint32).tobytes(),
        INDEX_DTYPE_KEY: "<u4",
        DATA_KEY: np.array([1.0], dtype=np.float32).tobytes(),
    }
    bomb = EncodedUpdate("top1%", records).to_bytes()
    updates = [(HONEST, honest_update, 300), (ATTACKER, bomb, 300)]

    # Execute
    outcome = asyncio.run(_receive_one_round(iid_digits_nodes[0], updates))

    # Assert: refused for not fitting the receiver's model (memory: see test_codecs)
    _assert_untouched_by_the_attacker(outcome, honest_only)
    assert outcome.report.refused == {"shape": 1}


@dataclass(frozen=True)
class _SignFlipTimesTen(DenseCodec):
    """An attacker's codec: sends -10 times its honest update."""

    def encode(self, arrays: list[np.ndarray]) -> EncodedUpdate:
        return super().encode([-10.0 * np.asarray(a) for a in arrays])


def _train_together(
    config_file: Path, data: list[NodeData], *, attacker: bool, rounds: int
) -> list[float]:
    """Two honest peers set up from ``config_file`` (plus the attacker): their test accuracy."""
    ports = [free_port() for _ in range(3 if attacker else 2)]
    addresses = [Address("127.0.0.1", p) for p in ports]

    def honest(i: int) -> PeerTrainer:
        overrides = {"p2p.host": "127.0.0.1", "p2p.local_port": ports[i]}
        config = load_config(config_file, {**overrides, "p2p.listen_timeout_s": 20})
        others = [a for j, a in enumerate(addresses) if j != i]
        return build_trainer(config, others, digits_learner(data[i]), AUTH)

    async def scenario() -> list[float]:
        peers = [honest(0), honest(1)]
        everyone = list(peers)
        if attacker:
            everyone.append(
                PeerTrainer(
                    digits_learner(data[2]),
                    addresses[:2],
                    _SignFlipTimesTen(),
                    auth=AUTH,  # an insider: it holds the secret, only its updates are wild
                    host="127.0.0.1",
                    port=ports[2],
                    listen_timeout=20,
                    error_feedback=False,
                )
            )
        for peer in everyone:
            await peer.start()
        try:
            results = await asyncio.gather(*(p.run(rounds) for p in everyone))
        finally:
            for peer in everyone:
                await peer.stop()
        assert all(len(r.received_from) == len(everyone) - 1 for r in results[0] + results[1])
        return [p.learner.evaluate("test").accuracy for p in peers]

    return asyncio.run(scenario())


@pytest.mark.slow
def test_median_peers_learn_despite_a_sign_flipping_peer(
    tmp_path: Path, iid_digits_nodes: list[NodeData]
) -> None:
    # Prepare: YAML files choosing the mean and the median; 10 rounds of two honest peers
    mean_file, median_file = tmp_path / "mean.yaml", tmp_path / "median.yaml"
    mean_file.write_text("p2p:\n  aggregation: mean\n")
    median_file.write_text("p2p:\n  aggregation: median\n")
    rounds = 10

    # Execute: without the attacker, then with a peer sending -10 x its update each round
    unattacked = _train_together(mean_file, iid_digits_nodes, attacker=False, rounds=rounds)
    with_median = _train_together(median_file, iid_digits_nodes, attacker=True, rounds=rounds)
    with_mean = _train_together(mean_file, iid_digits_nodes, attacker=True, rounds=rounds)

    # Assert: the attacker ruins a mean (the attack is real) but not a median, with
    # which every honest peer ends within 5 points of its attacker-free accuracy
    assert max(with_mean) < 0.5, with_mean
    for clean, robust in zip(unattacked, with_median, strict=True):
        assert robust >= clean - 0.05, (unattacked, with_median)

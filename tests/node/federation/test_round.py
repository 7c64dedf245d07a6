"""The group round's defences: what a host resumes from, and what it refuses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from node.federation.round import latest_group_model
from node.learning.partition import NodeData
from node.learning.weights import WeightsSignature, weights_to_bytes
from node.rejections import Rejections
from tests.node.helpers import digits_learner


@dataclass(frozen=True)
class _Info:
    round: int


@dataclass(frozen=True)
class _Blob:
    data: bytes
    round: int
    sha256: str


class _StoredSnapshot:
    """A registry's snapshot read as the host reads it; stands in for a registry that
    stored what it should not have (an older registry, a damaged disk)."""

    def __init__(self, data: bytes, round_: int) -> None:
        self.blob = _Blob(data, round_, hashlib.sha256(data).hexdigest())

    def model_info(self, group_id: int) -> _Info:
        return _Info(self.blob.round)

    def download_model(self, group_id: int, round: int | None = None) -> _Blob:
        return self.blob


def test_a_host_never_resumes_from_a_snapshot_that_is_not_finite(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: the group's latest snapshot is all NaN, with a later round
    host = digits_learner(iid_digits_nodes[0])
    signature = WeightsSignature.of(host.get_weights())
    nan = [np.full_like(w, np.nan) for w in host.get_weights()]
    rejections = Rejections("host")

    # Execute
    latest = latest_group_model(
        _StoredSnapshot(weights_to_bytes(nan), 9), 1, signature, newer_than=3, rejections=rejections
    )

    # Assert: the host learns the round (and so numbers its next one above it), not the model
    assert latest is not None and latest.round == 9 and latest.weights is None
    assert rejections.counts() == {"NonFiniteWeightsError": 1}


def test_a_host_never_resumes_from_a_snapshot_whose_loss_is_not_finite(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: finite weights so large that the host's own loss on them overflows
    host = digits_learner(iid_digits_nodes[0])
    signature = WeightsSignature.of(host.get_weights())
    huge = [np.full_like(w, 3e38) for w in host.get_weights()]
    rejections = Rejections("host")

    # Execute
    latest = latest_group_model(
        _StoredSnapshot(weights_to_bytes(huge), 4),
        1,
        signature,
        loss=lambda weights: host.evaluate("val", weights=weights).loss,
        rejections=rejections,
    )

    # Assert
    assert latest is not None and latest.weights is None
    assert rejections.total == 1


def test_a_usable_snapshot_is_resumed_from(iid_digits_nodes: list[NodeData]) -> None:
    host = digits_learner(iid_digits_nodes[0])
    weights = digits_learner(iid_digits_nodes[1], seed=5).get_weights()
    latest = latest_group_model(
        _StoredSnapshot(weights_to_bytes(weights), 2),
        1,
        WeightsSignature.of(host.get_weights()),
        loss=lambda w: host.evaluate("val", weights=w).loss,
    )
    assert latest is not None and latest.weights is not None
    assert all(np.array_equal(a, b) for a, b in zip(weights, latest.weights, strict=True))

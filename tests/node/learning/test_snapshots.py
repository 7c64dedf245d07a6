"""SnapshotStore and conditional downloads against a real registry: a group's snapshot is
fetched once per change (requests counted on the wire), decoded once, and a bad one is
refused every time without being fetched again."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from node.errors import WeightsMismatchError
from node.learning.snapshots import SnapshotStore
from node.learning.weights import WeightsSignature, weights_to_bytes
from node.registry_client import RegistryClient
from tests.support.registry_proc import RegistryProcess

NAMES = ("w", "b")


def _weights(fill: float) -> list[np.ndarray]:
    return [np.full((3, 2), fill, np.float32), np.full(2, fill, np.float32)]


SIGNATURE = WeightsSignature.of(_weights(0.0), NAMES)


@dataclass
class _Wire:
    """Snapshot downloads seen on the wire, by answer status."""

    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, response: httpx.Response) -> None:
        if response.request.method == "GET" and response.request.url.path.endswith("/model"):
            with self.lock:
                self.statuses.append(response.status_code)


@dataclass
class _Setup:
    client: RegistryClient  # the group's member: uploads
    reader: RegistryClient  # another node's client, whose requests are counted
    wire: _Wire
    group_id: int

    def upload(self, round_: int, fill: float) -> None:
        self.client.upload_model(self.group_id, round_, weights_to_bytes(_weights(fill)))

    def model_round(self) -> int | None:
        return next(g for g in self.reader.list_groups() if g.id == self.group_id).model_round


@pytest.fixture
def setup(sqlite_registry: RegistryProcess) -> Iterator[_Setup]:
    wire = _Wire()
    http = httpx.Client(base_url=sqlite_registry.url, event_hooks={"response": [wire.hook]})
    domain = f"store-{uuid.uuid4().hex[:8]}"
    with (
        RegistryClient(sqlite_registry.url) as member,
        RegistryClient(sqlite_registry.url, client=http) as reader,
    ):
        member.register(f"{domain}-a", "x:1", domain, model_signature=SIGNATURE)
        reader.register(f"{domain}-b", "x:2", domain, model_signature=SIGNATURE)
        group = member.create_group(domain, domain, model_signature=SIGNATURE)
        yield _Setup(member, reader, wire, group.id)
    http.close()


def test_download_with_the_known_snapshot_returns_it_until_it_changes(setup: _Setup) -> None:
    # Prepare
    setup.upload(0, 0.1)
    first = setup.reader.download_model(setup.group_id)
    assert first is not None

    # Execute
    same = setup.reader.download_model(setup.group_id, known=first)
    setup.upload(1, 0.2)
    changed = setup.reader.download_model(setup.group_id, known=first)

    # Assert: the very object while unchanged (304), the new snapshot after the upload
    assert same is first
    assert changed is not None and changed.round == 1 and changed.sha256 != first.sha256
    assert changed.data == weights_to_bytes(_weights(0.2))
    assert setup.wire.statuses == [200, 304, 200]


def test_store_fetches_each_change_once_and_asks_nothing_for_a_known_round(
    setup: _Setup,
) -> None:
    # Prepare
    store = SnapshotStore()
    setup.upload(0, 0.1)

    # Execute: as N nodes would ask with the listing's round, then after a new round
    first = [
        store.latest(setup.reader, setup.group_id, SIGNATURE, setup.model_round()) for _ in range(5)
    ]
    unknown_round = store.latest(setup.reader, setup.group_id, SIGNATURE)
    setup.upload(1, 0.3)
    second = store.latest(setup.reader, setup.group_id, SIGNATURE, setup.model_round())
    again = store.latest(setup.reader, setup.group_id, SIGNATURE, 1)

    # Assert: one download per snapshot, one 304 for the unknown round, decoded once
    assert setup.wire.statuses == [200, 304, 200]
    assert store.downloads == 2
    assert all(s is not None and s.round == 0 for s in first)
    assert first[0] is not None and all(
        s is not None and s.weights is first[0].weights for s in first
    )
    assert unknown_round is not None and unknown_round.weights is first[0].weights
    assert second is not None and second.round == 1
    np.testing.assert_array_equal(second.weights[0], _weights(0.3)[0])
    assert again is second


def test_a_snapshot_that_does_not_fit_is_refused_each_time_but_fetched_once(
    setup: _Setup,
) -> None:
    # Prepare: the caller's model has other shapes than the group's
    other = WeightsSignature.of([np.zeros((4, 2), np.float32), np.zeros(2, np.float32)], NAMES)
    store = SnapshotStore()
    setup.upload(0, 0.1)

    # Execute / Assert
    for _ in range(3):
        with pytest.raises(WeightsMismatchError):
            store.latest(setup.reader, setup.group_id, other, 0)
    assert setup.wire.statuses == [200]
    fits = store.latest(setup.reader, setup.group_id, SIGNATURE, 0)
    assert fits is not None and fits.round == 0  # its own entry: one more download
    assert setup.wire.statuses == [200, 200]


def test_threads_asking_at_once_download_once(setup: _Setup) -> None:
    # Prepare
    store = SnapshotStore()
    setup.upload(0, 0.1)
    start = threading.Barrier(8)
    got: list[object] = []

    def ask() -> None:
        start.wait()
        got.append(store.latest(setup.reader, setup.group_id, SIGNATURE, 0))

    # Execute
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Assert
    assert setup.wire.statuses == [200]
    assert len(got) == 8 and all(g is got[0] for g in got)


def test_a_group_without_a_snapshot_is_none(setup: _Setup) -> None:
    assert SnapshotStore().latest(setup.reader, setup.group_id, SIGNATURE) is None


def test_a_snapshot_this_process_uploaded_is_held_and_revalidates_as_unchanged(
    setup: _Setup,
) -> None:
    # Prepare: the member uploads round 2 and puts what it sent into the store
    store = SnapshotStore()
    data = weights_to_bytes(_weights(0.4))
    setup.client.upload_model(setup.group_id, 2, data)

    # Execute
    store.put(setup.group_id, SIGNATURE, 2, data, _weights(0.4))
    by_round = store.latest(setup.reader, setup.group_id, SIGNATURE, setup.model_round())
    unknown_round = store.latest(setup.reader, setup.group_id, SIGNATURE)

    # Assert: no request for the listed round, one 304 (same hash) for an unknown round
    assert setup.wire.statuses == [304]
    assert store.downloads == 0
    assert by_round is not None and by_round.round == 2 and unknown_round is not None
    np.testing.assert_array_equal(unknown_round.weights[1], _weights(0.4)[1])

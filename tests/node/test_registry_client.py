"""RegistryClient against a real registry: typed results, errors by status, outages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from node.addresses import free_port
from node.registry_client import (
    ConflictError,
    ForbiddenError,
    RegistryClient,
    RegistryUnavailableError,
    UnauthorizedError,
)
from tests.support.registry_proc import RegistryProcess


def test_client_covers_the_node_lifecycle(sqlite_registry: RegistryProcess) -> None:
    with RegistryClient(sqlite_registry.url) as a, RegistryClient(sqlite_registry.url) as b:
        first = a.register("client-a", "127.0.0.1:1", "digits")
        again = a.register("client-a", "127.0.0.1:2", "digits")  # update, with the kept token
        b.register("client-b", "127.0.0.1:3", "digits")
        group = a.create_group("client-group", "digits", max_capacity=2)
        joined = b.join(group.id)
        a.report_performance(group.id, value=0.5, round=1, num_examples=10)
        after = b.report_performance(group.id, value=1.0, round=1, num_examples=30)
        info = a.upload_model(group.id, 1, b"\x00weights")
        blob = b.download_model(group.id)
        beat = a.heartbeat({"accuracy": 0.5})
        left = b.leave()

    assert first.created and first.token and not again.created and again.token is None
    assert again.node.address == "127.0.0.1:2"
    assert joined.group_id == group.id and not joined.migrated
    assert after.accuracy == pytest.approx(0.875)
    assert blob is not None and blob.data == b"\x00weights" and blob.sha256 == info.sha256
    assert beat.metrics == {"accuracy": 0.5}
    assert left == group.id


def test_refusals_raise_typed_errors(sqlite_registry: RegistryProcess) -> None:
    with RegistryClient(sqlite_registry.url) as a, RegistryClient(sqlite_registry.url) as b:
        a.register("typed-a", "x:1", "digits")
        b.register("typed-b", "x:2", "digits")
        g = a.create_group("typed-full", "digits", max_capacity=1)
        with pytest.raises(ConflictError) as full:
            b.join(g.id)
        with pytest.raises(ForbiddenError):
            b.report_performance(g.id, value=1.0, round=1)
        stranger = RegistryClient(sqlite_registry.url, token="forged", node_id="typed-a")
        with pytest.raises(UnauthorizedError):
            stranger.heartbeat()
    assert full.value.status == 409 and "full" in str(full.value.detail)


def test_unreachable_registry_raises_after_retries_with_backoff() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.1)
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailableError) as err:
        client.list_groups()
    elapsed = time.monotonic() - t0
    assert "after 3 tries" in str(err.value)
    assert elapsed >= 0.3  # 0.1 + 0.2 of backoff


def test_client_recovers_when_the_registry_returns(tmp_path: Path) -> None:
    reg = RegistryProcess(tmp_path / "r").start()
    client = RegistryClient(reg.url, retries=8, backoff=0.2)
    client.register("phoenix", "x:1", "digits")
    reg.stop()
    back = RegistryProcess(tmp_path / "r", port=reg.port)
    import threading

    threading.Timer(1.0, back.start).start()
    try:
        node = client.heartbeat()  # retried through the outage
    finally:
        time.sleep(0.1)
        back.stop()
    assert node.id == "phoenix"

"""Push: a node follows its domain's event stream and re-evaluates without waiting."""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.addresses import free_port
from node.config import NodeConfig
from node.learning.partition import PartitionSpec
from node.registry_client import EventPublic, RegistryClient
from node.runtime.follow import EventFollower, wakes
from node.runtime.process import NodeProcess, ProcessOptions
from tests.support.registry_proc import RegistryProcess
from tests.support.stranger import harmful_snapshot
from tests.support.tls import TestPKI

SAFETY_S = 60.0  # a safety net only: every wait below ends on an event or a count


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Other:
    """Another node of a domain, driving the registry over raw HTTP."""

    def __init__(self, url: str, node_id: str, domain: str = "digits", **tls: Any) -> None:
        self.http = httpx.Client(base_url=url, timeout=10, **tls)
        reg = self.http.post(
            "/nodes/register", json={"node_id": node_id, "address": "10.0.0.7:1", "domain": domain}
        )
        reg.raise_for_status()
        self.auth = {"Authorization": f"Bearer {reg.json()['token']}"}
        self.domain = domain

    def create_group(self) -> int:
        body = {"name": f"g-{time.monotonic_ns()}", "domain": self.domain, "join": True}
        r = self.http.post("/groups", json=body, headers=self.auth)
        r.raise_for_status()
        return int(r.json()["id"])

    def upload(self, group_id: int) -> None:
        r = self.http.put(
            f"/groups/{group_id}/model",
            params={"round": 1},
            content=harmful_snapshot(),
            headers=self.auth,
        )
        r.raise_for_status()


@pytest.fixture
def woken() -> queue.Queue[EventPublic]:
    return queue.Queue()


@contextlib.contextmanager
def follow(
    client: RegistryClient, woken: queue.Queue[EventPublic], domain: str = "digits"
) -> Iterator[EventFollower]:
    follower = EventFollower(
        client, domain=domain, node_id="me", group_id=lambda: None, wake=woken.put, retry_s=0.1
    )
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield follower
    finally:
        stop.set()
        client.close()


def ev(type_: str, node_id: str | None, group_id: int | None) -> EventPublic:
    return EventPublic.model_validate(
        {"id": 1, "type": type_, "node_id": node_id, "group_id": group_id, "data": {},
         "created_at": "2026-12-01T00:00:00Z", "domain": "d"}
    )  # fmt: skip


def test_what_wakes_a_node() -> None:
    # Another group's snapshot, any membership change by another node: yes
    assert wakes(ev("model_uploaded", "x", 2), node_id="me", group_id=1)
    assert wakes(ev("left", "x", 1), node_id="me", group_id=1)
    assert wakes(ev("group_archived", None, 3), node_id="me", group_id=None)
    # Its own moves, and its own group's rounds: no
    assert not wakes(ev("joined", "me", 2), node_id="me", group_id=2)
    assert not wakes(ev("model_uploaded", "x", 1), node_id="me", group_id=1)
    assert not wakes(ev("performance_reported", "x", 1), node_id="me", group_id=1)


def test_a_follower_wakes_on_its_domain_only(
    sqlite_registry: RegistryProcess, woken: queue.Queue[EventPublic]
) -> None:
    # Prepare: a follower of domain "alpha", connected once it has its starting id
    url = sqlite_registry.url
    alpha, beta = Other(url, "a-1", "alpha"), Other(url, "b-1", "beta")
    with follow(RegistryClient(url), woken, "alpha") as follower:
        wait_for(lambda: follower.last_id is not None, "the follower's starting id")

        # Execute: a group and a snapshot in beta, then in alpha
        beta.upload(beta.create_group())
        group = alpha.create_group()
        alpha.upload(group)

        # Assert: alpha's events only, in order, the snapshot last
        got = [woken.get(timeout=SAFETY_S) for _ in range(3)]
        assert [(e.type, e.group_id) for e in got] == [
            ("group_created", group), ("joined", group), ("model_uploaded", group),
        ]  # fmt: skip
        assert woken.empty()


def test_a_follower_polls_while_the_registry_is_down_and_resumes(
    tmp_path: Path, woken: queue.Queue[EventPublic], caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a follower of a registry that is not there yet
    port = free_port()
    caplog.set_level(logging.INFO, logger="node.runtime.follow")
    with follow(RegistryClient(f"http://127.0.0.1:{port}", retries=0), woken) as follower:
        wait_for(lambda: "event stream down" in caplog.text, "the follower's first failure")

        # Execute: the registry comes up; another node creates a group
        with RegistryProcess(tmp_path / "r", port=port) as registry:
            wait_for(lambda: follower.last_id is not None, "the follower's starting id")
            group = Other(registry.url, "other").create_group()

            # Assert: the follower connected and was woken; "down" was said once (counted
            # for this registry's port: a follower of an earlier test may still be
            # stopping, and caplog hears every thread)
            assert woken.get(timeout=SAFETY_S).group_id == group
            own = f"127.0.0.1:{port}/"
            downs = [
                r
                for r in caplog.records
                if "event stream down" in r.getMessage() and own in r.getMessage()
            ]
            assert len(downs) == 1


def test_a_follower_uses_the_nodes_ca_over_tls(
    tmp_path: Path, pki: TestPKI, woken: queue.Queue[EventPublic]
) -> None:
    registry = RegistryProcess(tmp_path / "r", tls=(pki.ca, pki.cert, pki.key))
    with registry, follow(RegistryClient(registry.url, ca_cert=pki.ca), woken) as follower:
        wait_for(lambda: follower.last_id is not None, "the follower's starting id")
        verify = ssl.create_default_context(cafile=pki.ca)
        group = Other(registry.url, "other", verify=verify).create_group()
        assert woken.get(timeout=SAFETY_S).group_id == group


# --- a node process ----------------------------------------------------------------------


def node_process(
    url: str, data_dir: Path, *, client: RegistryClient | None = None, interval_s: float = 3600
) -> NodeProcess:
    """A node that re-evaluates on its interval only every `interval_s` seconds (by
    default hourly: only a push explains an earlier re-evaluation)."""
    return NodeProcess(
        NodeConfig(
            registry_url=url,
            node_id=data_dir.name,
            data_dir=data_dir,
            node_address="127.0.0.1:0",
            heartbeat_interval_s=0.5,
            group_evaluation_interval_s=interval_s,
            event_wake_gap_s=0,
        ),
        PartitionSpec(num_partitions=2, samples_per_node=120),
        ProcessOptions(warmup_epochs=0, listen="127.0.0.1:0", round_pause_s=0.5, join_wait_s=0.2),
        client=client,
    )


@contextlib.contextmanager
def run_in_thread(proc: NodeProcess) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.slow
def test_a_node_reevaluates_when_another_group_uploads_a_snapshot(
    sqlite_registry: RegistryProcess, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Prepare: a node in a group of its own, following its domain's stream; another group
    caplog.set_level(logging.INFO, logger="node.runtime.process")
    url = sqlite_registry.url
    proc = node_process(url, tmp_path / "pushed")
    proc.prepare()
    with run_in_thread(proc):
        wait_for(lambda: proc.agent.group_id is not None, "the node's own group")
        wait_for(lambda: proc.follower and proc.follower.last_id is not None, "the stream")
        other = Other(url, "uploader")
        group = other.create_group()
        wait_for(lambda: proc.reevaluations >= 1, "the re-evaluation the new group woke")
        before = proc.reevaluations

        # Execute: the other group uploads a snapshot
        other.upload(group)

        # Assert: the node re-evaluated again long before its hourly interval, on that event
        wait_for(lambda: proc.reevaluations > before, "a re-evaluation after the snapshot")
        assert "re-evaluating now: model_uploaded (node uploader, group" in caplog.text
        assert proc.failure is None


class _OldRegistry(httpx.BaseTransport):
    """A registry without the filtered stream: /events/stream answers 422 (a fault of an
    older version that this registry cannot show for real); the rest is the real one."""

    def __init__(self) -> None:
        self.real = httpx.HTTPTransport()
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/events/stream":
            self.refused += 1
            detail = [{"loc": ["query", "domain"], "msg": "extra inputs are not permitted"}]
            return httpx.Response(422, json={"detail": detail})
        return self.real.handle_request(request)


@pytest.mark.slow
def test_a_node_falls_back_to_its_interval_when_the_stream_is_refused(
    sqlite_registry: RegistryProcess, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Prepare: the node's registry refuses the stream; the node re-evaluates every 0.3 s
    caplog.set_level(logging.INFO)
    url = sqlite_registry.url
    old = _OldRegistry()
    client = RegistryClient(url, client=httpx.Client(base_url=url, transport=old, timeout=10))
    proc = node_process(url, tmp_path / "polled", client=client, interval_s=0.3)
    proc.prepare()

    # Execute
    with run_in_thread(proc):
        wait_for(lambda: proc.reevaluations >= 3, "re-evaluations on the interval")

        # Assert: asked once, said so once, and the node lives on polling
        assert old.refused == 1
        assert caplog.text.count("refuses to filter its event stream") == 1
        assert proc.failure is None

"""Event filters over real HTTP: `domain=` and `types=` on /events and its live stream."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.registry.helpers import create_group, register, unique
from tests.support.registry_proc import RegistryProcess

Event = dict[str, Any]


@pytest.fixture
def client(registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, timeout=10) as c:
        yield c


def last_event_id(client: httpx.Client) -> int:
    return int(client.get("/events", params={"latest": True, "limit": 1}).json()["last_id"])


class Listener:
    """A thread following /events/stream with `params` until `done` accepts an event."""

    def __init__(self, url: str, params: dict[str, Any], done: Callable[[Event], bool]) -> None:
        self.url, self.params, self.done = url, params, done
        self.events: list[Event] = []
        self.connected = threading.Event()
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with (
            httpx.Client(base_url=self.url, timeout=30) as c,
            connect_sse(c, "GET", "/events/stream", params=self.params) as source,
        ):
            self.connected.set()
            for sse in source.iter_sse():
                self.events.append(sse.json())
                if self.done(self.events[-1]):
                    self.finished.set()
                    return

    def wait(self) -> list[Event]:
        assert self.finished.wait(30), f"stream {self.params} saw only {self.events}"
        return self.events


def created(name: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "group_created" and e["data"].get("name") == name


def test_a_domain_stream_carries_its_domain_only(
    registry: RegistryProcess, client: httpx.Client
) -> None:
    # Prepare: one stream per domain, each ending at its domain's sentinel group
    last = last_event_id(client)
    end_a, end_b = unique("end-a"), unique("end-b")
    alpha = Listener(registry.url, {"domain": "alpha", "after_id": last}, created(end_a))
    beta = Listener(registry.url, {"domain": "beta", "after_id": last}, created(end_b))
    assert alpha.connected.wait(10) and beta.connected.wait(10)

    # Execute: the two domains' nodes register, create and join groups, interleaved
    a1, ha = register(client, domain="alpha")
    b1, hb = register(client, domain="beta")
    ga = create_group(client, ha, domain="alpha")
    gb = create_group(client, hb, domain="beta", join=False)
    assert client.post("/groups/join", headers=hb, json={"group_id": gb}).status_code == 200
    create_group(client, hb, domain="beta", name=end_b, join=False)
    create_group(client, ha, domain="alpha", name=end_a, join=False)

    # Assert: each stream saw its own domain's events, in order, and none of the other's
    seen_a, seen_b = alpha.wait(), beta.wait()
    assert {e["domain"] for e in seen_a} == {"alpha"}
    assert {e["domain"] for e in seen_b} == {"beta"}
    assert [(e["type"], e["node_id"]) for e in seen_a if e["group_id"] in (None, ga)] == [
        ("registered", a1), ("group_created", a1), ("joined", a1),
    ]  # fmt: skip
    assert ("joined", b1, gb) in {(e["type"], e["node_id"], e["group_id"]) for e in seen_b}
    assert b1 not in {e["node_id"] for e in seen_a}
    assert gb not in {e["group_id"] for e in seen_a}
    # ... and the pageable log filters the same way
    page = client.get("/events", params={"after_id": last, "domain": "beta"}).json()["data"]
    assert [e["id"] for e in page] == [e["id"] for e in seen_b]


def test_a_types_stream_carries_those_types_only(
    registry: RegistryProcess, client: httpx.Client
) -> None:
    # Prepare
    last = last_event_id(client)
    node, h = register(client, domain="alpha")
    done: Callable[[Event], bool] = lambda e: e["type"] == "left" and e["node_id"] == node  # noqa: E731
    params = {"domain": "alpha", "types": "joined, left", "after_id": last}
    listener = Listener(registry.url, params, done)
    assert listener.connected.wait(10)

    # Execute: register (before), create+join, leave, join again, leave
    gid = create_group(client, h, domain="alpha")
    client.post("/groups/leave", headers=h).raise_for_status()
    create_group(client, h, domain="alpha")
    client.post("/groups/leave", headers=h).raise_for_status()

    # Assert: only joins and leaves, the first leave ends the wait
    seen = [(e["type"], e["node_id"], e["group_id"]) for e in listener.wait()]
    assert seen == [("joined", node, gid), ("left", node, gid)]


@pytest.mark.parametrize("path", ["/events", "/events/stream"])
def test_an_unknown_event_type_is_a_422_naming_it(
    sqlite_registry: RegistryProcess, path: str
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        r = c.get(path, params={"types": "joined,nonsense"})
        empty = c.get(path, params={"types": " , "})
        long = c.get(path, params={"domain": "d" * 65})
        single = c.get(path, params={"type": "nonsense"})
    assert r.status_code == 422
    assert single.status_code == 422 and "'nonsense'" in single.json()["detail"][0]["msg"]
    msg = r.json()["detail"][0]["msg"]
    assert "'nonsense'" in msg and "model_uploaded" in msg  # names it and what is known
    assert empty.status_code == 422 and "no event type" in empty.json()["detail"][0]["msg"]
    assert long.status_code == 422


def test_many_streams_each_receive_a_burst_of_joins(sqlite_registry: RegistryProcess) -> None:
    # Prepare: 40 streams of one domain, all connected before the burst
    url = sqlite_registry.url
    domain = unique("burst")
    with httpx.Client(base_url=url, timeout=10) as client:
        last = last_event_id(client)
        owner, ho = register(client, domain=domain)
        gid = create_group(client, ho, domain=domain, capacity=50)
        members = [register(client, domain=domain) for _ in range(20)]
        final = members[-1][0]
        done: Callable[[Event], bool] = lambda e: e["node_id"] == final  # noqa: E731
        params = {"domain": domain, "types": "joined", "after_id": last}
        listeners = [Listener(url, params, done) for _ in range(40)]
        assert all(x.connected.wait(20) for x in listeners)

        # Execute: 20 joins in a burst
        for _, h in members:
            assert client.post("/groups/join", headers=h, json={"group_id": gid}).status_code == 200

    # Assert: every stream got the owner's join and the 20 others, once each, in order
    expected = [owner, *(m for m, _ in members)]
    for x in listeners:
        assert [e["node_id"] for e in x.wait()] == expected

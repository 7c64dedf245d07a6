"""RegistryClient against a real registry: typed results, errors by status, outages,
and its retry policy against real loopback servers that fail on cue."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.addresses import free_port
from node.learning.weights import WeightsSignature, weights_to_bytes
from node.registry_client import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RegistryClient,
    RegistryRequestError,
    RegistryUnavailableError,
    SiblingFit,
    UnauthorizedError,
)
from tests.support.registry_proc import RegistryProcess


def test_client_covers_the_node_lifecycle(sqlite_registry: RegistryProcess) -> None:
    snapshot = weights_to_bytes([np.ones((3, 2), dtype=np.float32), np.zeros(2, np.float32)])
    with RegistryClient(sqlite_registry.url) as a, RegistryClient(sqlite_registry.url) as b:
        first = a.register("client-a", "127.0.0.1:1", "digits")
        again = a.register("client-a", "127.0.0.1:2", "digits")  # update, with the kept token
        b.register("client-b", "127.0.0.1:3", "digits")
        group = a.create_group("client-group", "digits", max_capacity=2)
        joined = b.join(group.id)
        a.report_performance(group.id, value=0.5, round=1, num_examples=10)
        after = b.report_performance(group.id, value=1.0, round=1, num_examples=30)
        info = a.upload_model(group.id, 1, snapshot)
        blob = b.download_model(group.id)
        beat = a.heartbeat({"accuracy": 0.5})
        left = b.leave()

    assert first.created and first.token and not again.created and again.token is None
    assert again.node.address == "127.0.0.1:2"
    assert joined.group_id == group.id and not joined.migrated
    assert after.accuracy == pytest.approx(0.875)
    assert blob is not None and blob.data == snapshot and blob.sha256 == info.sha256
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


def test_client_reports_siblings_merges_and_splits(sqlite_registry: RegistryProcess) -> None:
    # Prepare: groups A (a, c, d) and B (b) of one domain; A measures B
    url = sqlite_registry.url
    with (
        RegistryClient(url) as a,
        RegistryClient(url) as b,
        RegistryClient(url) as c,
        RegistryClient(url) as d,
    ):
        for client, name in ((a, "meta-a"), (b, "meta-b"), (c, "meta-c"), (d, "meta-d")):
            client.register(name, f"x:{len(name)}", "meta")
        ga = a.create_group("meta-group-a", "meta", max_capacity=4)
        gb = b.create_group("meta-group-b", "meta", max_capacity=4)
        c.join(ga.id)
        d.join(ga.id)

        # Execute
        stored = a.report_siblings(
            ga.id, 2, [SiblingFit(group_id=gb.id, fit=0.9, own_fit=0.8, loss=None, examples=12)]
        )
        seen_from_b = b.siblings(gb.id)
        in_domain = a.links("meta")
        split = c.split_group(ga.id, ["meta-d"], "meta-group-d")
        with pytest.raises(ConflictError) as not_sibling:
            d.merge_group(split.group.id, gb.id)
        with pytest.raises(NotFoundError):
            a.report_siblings(ga.id, 3, [SiblingFit(2**31 - 2, 0.5, 0.5, 0.1, 1)])
        with pytest.raises(RegistryRequestError) as itself:
            a.report_siblings(ga.id, 3, [SiblingFit(ga.id, 0.5, 0.5, 0.1, 1)])
        merged = c.merge_group(ga.id, gb.id)

    # Assert
    [link] = stored
    assert (link.group_id, link.sibling_id, link.fit, link.loss, link.round) == (
        ga.id,
        gb.id,
        0.9,
        None,
        2,
    )
    assert seen_from_b == stored == in_domain
    assert split.moved == ["meta-d"] and split.group.member_count == 1
    assert split.group.name == "meta-group-d" and split.group.max_capacity == 4
    assert not_sibling.value.status == 409 and "not a sibling" in str(not_sibling.value.detail)
    assert itself.value.status == 422
    assert sorted(merged.moved) == ["meta-a", "meta-c"]
    assert merged.group.id == gb.id and merged.group.member_count == 3


def test_a_node_of_another_model_is_refused_at_the_door(sqlite_registry: RegistryProcess) -> None:
    # Prepare: a digits-like model declared by the domain's first group, and a bigger one
    digits = [np.zeros((16, 64), np.float32), np.zeros(16, np.float32)]
    fashion = [np.zeros((8, 1, 5, 5), np.float32), np.zeros(8, np.float32)]
    names = ["net.1.weight", "net.1.bias"]
    ours = WeightsSignature.of(digits, names)
    theirs = WeightsSignature.of(fashion, ["features.0.weight", "features.0.bias"])
    with RegistryClient(sqlite_registry.url) as a, RegistryClient(sqlite_registry.url) as b:
        before = a.domain_signature("sig-door")
        a.register("sig-door-a", "x:1", "sig-door", model_signature=ours)
        group = a.create_group("sig-door-group", "sig-door", model_signature=ours)

        # Execute
        with pytest.raises(ConflictError) as refused:
            b.register("sig-door-b", "x:2", "sig-door", model_signature=theirs)
        known = a.domain_signature("sig-door")
        nan = [np.full_like(w, np.nan) for w in digits]
        with pytest.raises(RegistryRequestError) as poisoned:
            a.upload_model(group.id, 1, weights_to_bytes(nan))
        stored = a.upload_model(group.id, 1, weights_to_bytes(digits))

    # Assert: the newcomer learns why, the domain's model is readable, NaN never stored
    assert before is None
    assert refused.value.status == 409
    assert "domain 'sig-door' uses a model of 2 tensors (net.1.weight [16, 64] float32" in str(
        refused.value.detail
    )
    assert "yours is features.0.weight [8, 1, 5, 5] float32" in str(refused.value.detail)
    assert known is not None and known.source == "declared" and known.declared_by == "sig-door-a"
    assert WeightsSignature.from_json(known.signature.model_dump()) == ours
    assert poisoned.value.status == 422 and "NaN" in str(poisoned.value.detail)
    assert stored.round == 1


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


# --- retry policy, against scripted loopback servers -----------------------------------

NODE = {
    "id": "n1",
    "address": "127.0.0.1:1",
    "domain": "digits",
    "capabilities": {},
    "status": "active",
    "group_id": 7,
    "registered_at": "2025-01-01T00:00:00Z",
    "last_heartbeat": "2025-01-01T00:00:00Z",
    "metrics": {},
}
GROUP = {
    "id": 7,
    "name": "g",
    "domain": "digits",
    "description": None,
    "max_capacity": 5,
    "member_count": 1,
    "performance": {},
    "accuracy": None,
    "round": 0,
    "model_round": None,
    "created_by": "n1",
    "created_at": "2025-01-01T00:00:00Z",
    "updated_at": "2025-01-01T00:00:00Z",
    "archived": False,
}
JOINED = {"node_id": "n1", "group_id": 7, "previous_group_id": None, "migrated": False}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: after `delay_s` seconds, `status` with a JSON `body`."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() waits for the handlers still sleeping


class ScriptedServer:
    """A real HTTP server on loopback answering the n-th request with `replies[n]` (the
    last one repeats); `seen` lists (method, path, monotonic time) of each request received."""

    def __init__(self, replies: Sequence[Reply], *, port: int | None = None) -> None:
        self.replies = list(replies)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _next(self, method: str, path: str) -> Reply:
        with self._lock:
            self.seen.append((method, path, time.monotonic()))
            return self.replies[min(len(self.seen), len(self.replies)) - 1]

    def start(self) -> ScriptedServer:
        """Listen and serve in a thread."""
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = script._next(self.command, self.path)
                time.sleep(reply.delay_s)
                payload = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and wait until every request received has been answered."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def methods(self) -> list[str]:
        """The method of each request received, in order."""
        return [m for m, _, _ in self.seen]

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _client(url: str, **kwargs: Any) -> RegistryClient:
    return RegistryClient(url, token="t", node_id="n1", **kwargs)


def test_refused_connection_is_retried_until_the_registry_listens() -> None:
    # Prepare: nothing listens on the port when the call starts
    server = ScriptedServer([Reply(body=JOINED)])
    threading.Timer(0.2, server.start).start()
    client = _client(server.url, retries=4)

    # Execute: even a non-idempotent POST, since a refused request never reached the server
    try:
        joined = client.join(7)
    finally:
        time.sleep(0.3)  # the timer has fired: the server exists to stop
        server.stop()

    # Assert
    assert joined.group_id == 7
    assert server.methods() == ["POST"]


def test_refused_connection_is_reported_with_method_url_and_tries() -> None:
    # Prepare
    url = f"http://127.0.0.1:{free_port()}"

    # Execute
    with pytest.raises(RegistryUnavailableError) as err:
        _client(url, retries=2, backoff=0.01).join(7)

    # Assert
    message = str(err.value)
    assert f"POST {url}/groups/join failed after 3 tries" in message
    assert "ConnectError" in message


def test_idempotent_get_rides_out_503s() -> None:
    # Prepare
    replies = [Reply(503, {"detail": "busy"}), Reply(503, {"detail": "busy"}), Reply(body=NODE)]

    # Execute
    with ScriptedServer(replies) as server:
        node = _client(server.url, retries=3, backoff=0.01).get_node("n1")

    # Assert
    assert node.id == "n1" and node.group_id == 7
    assert server.methods() == ["GET", "GET", "GET"]


def test_get_gives_up_after_its_retries_naming_the_last_failure() -> None:
    # Prepare
    server = ScriptedServer([Reply(504, {"detail": "gateway"})])

    # Execute
    with server, pytest.raises(RegistryUnavailableError) as err:
        _client(server.url, retries=2, backoff=0.01).list_groups()

    # Assert
    assert f"GET {server.url}/groups failed after 3 tries: HTTP 504" in str(err.value)
    assert server.methods() == ["GET"] * 3


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        (lambda c: c.join(7), JOINED),
        (lambda c: c.create_group("g", "digits"), GROUP),
    ],
    ids=["join", "create_group"],
)
def test_non_idempotent_post_is_not_repeated_after_a_read_timeout(
    call: Callable[[RegistryClient], object], answer: dict[str, Any]
) -> None:
    # Prepare: the server receives the request, then answers after the client stopped waiting
    server = ScriptedServer([Reply(body=answer, delay_s=1.0), Reply(body=answer)]).start()
    client = _client(server.url, timeout=0.3, retries=3, backoff=0.01)

    # Execute
    try:
        with pytest.raises(RegistryUnavailableError) as err:
            call(client)
    finally:
        server.stop()  # waits for the slow handler, so every request sent was counted

    # Assert: one request only, which the registry may have applied
    assert server.methods() == ["POST"]
    assert "after 1 try: ReadTimeout" in str(err.value)
    assert "not retried" in str(err.value)


def test_idempotent_post_is_repeated_after_a_read_timeout() -> None:
    # Prepare: a heartbeat is safe to send twice
    server = ScriptedServer([Reply(body=NODE, delay_s=1.0), Reply(body=NODE)]).start()
    client = _client(server.url, timeout=0.3, retries=2, backoff=0.01)

    # Execute
    try:
        node = client.heartbeat({"accuracy": 0.5})
    finally:
        server.stop()

    # Assert
    assert node.id == "n1"
    assert server.methods() == ["POST", "POST"]


@pytest.mark.parametrize("status", [502, 504])
def test_non_idempotent_post_is_not_repeated_after_a_gateway_error(status: int) -> None:
    # Prepare
    server = ScriptedServer([Reply(status, {"detail": "gateway"}), Reply(body=JOINED)])

    # Execute
    with server, pytest.raises(RegistryUnavailableError) as err:
        _client(server.url, retries=3, backoff=0.01).join(7)

    # Assert
    assert server.methods() == ["POST"]
    assert f"after 1 try: HTTP {status}" in str(err.value)


def test_503_is_retried_for_a_non_idempotent_post_after_retry_after() -> None:
    # Prepare: the registry's "database busy, nothing applied; retry in 1 s"
    busy = Reply(503, {"detail": "database busy"}, headers={"Retry-After": "1"})
    with ScriptedServer([busy, Reply(body=JOINED)]) as server:
        # Execute
        joined = _client(server.url, retries=3, backoff=0.01).join(7)

    # Assert: the second try waited for Retry-After, not the 0.01 s backoff
    assert joined.group_id == 7
    assert server.methods() == ["POST", "POST"]
    assert server.seen[1][2] - server.seen[0][2] >= 1.0


def test_all_nodes_and_all_events_read_every_page(sqlite_registry: RegistryProcess) -> None:
    # Prepare: five nodes of their own domain, more than one page of two
    with RegistryClient(sqlite_registry.url) as client:
        for i in range(5):
            RegistryClient(sqlite_registry.url).register(f"paged-{i}", f"x:{i}", "paged")

        # Execute
        nodes = client.all_nodes(domain="paged", page_size=2)
        paged = client.all_events(page_size=2)
        whole = client.events(limit=1000)

    # Assert
    assert sorted(n.id for n in nodes) == [f"paged-{i}" for i in range(5)]
    assert [e.id for e in paged.data] == [e.id for e in whole.data]
    assert paged.last_id == whole.last_id == whole.data[-1].id

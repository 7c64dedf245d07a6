"""Who may join a host's Flower rounds (round tickets) and the link over TLS."""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

from node.addresses import free_port
from node.errors import ListenError
from node.federation.keys import GROUP_ID_KEY, NODE_ID_KEY
from node.federation.link import GroupServer, run_client
from node.round_tickets import TicketGate
from registry.schemas import RoundKey, RoundTicketClaims, sign_round_ticket
from tests.support.tls import TestPKI

GROUP, EPOCH = 7, 3
KEY = secrets.token_bytes(32)


class _Client(NumPyClient):
    """Adds 1 to what it gets and claims to be ``says`` (whoever its ticket names)."""

    def __init__(self, says: str = "someone-else") -> None:
        self.says = says

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        return [parameters[0] + 1.0], 10, {NODE_ID_KEY: self.says}


def _ticket(node_id: str, *, group: int = GROUP, epoch: int = EPOCH, ttl: float = 60.0) -> str:
    claims = RoundTicketClaims(
        group_id=group, node_id=node_id, host_epoch=epoch, expires_at=time.time() + ttl
    )
    return sign_round_ticket(claims, KEY)


def _gate(members: set[str]) -> TicketGate:
    key = RoundKey(group_id=GROUP, host_epoch=EPOCH, key=base64.urlsafe_b64encode(KEY).decode())
    return TicketGate(key, lambda: members)


def _connect(
    address: str, ticket: str | None, outcome: list[str], root: bytes | None = None
) -> threading.Thread:
    def target() -> None:
        try:
            run_client(address, _Client(), ticket=ticket, root_certificates=root)
            outcome.append("returned")
        except grpc.RpcError as exc:
            outcome.append(exc.code().name)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def gated() -> Iterator[GroupServer]:
    srv = GroupServer(
        f"127.0.0.1:{free_port()}", round_timeout_s=5.0, admit=_gate({"alice", "bob"}).admit
    )
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("ticket", "code", "why"),
    [
        (lambda: None, "UNAUTHENTICATED", "no round ticket"),
        (lambda: "v1.e30.AAAA", "UNAUTHENTICATED", "MAC does not match"),
        (lambda: _ticket("alice", group=GROUP + 1), "UNAUTHENTICATED", f"for group {GROUP + 1}"),
        (lambda: _ticket("alice", epoch=EPOCH - 1), "UNAUTHENTICATED", f"host epoch {EPOCH - 1}"),
        (lambda: _ticket("alice", ttl=-1.0), "UNAUTHENTICATED", "expired"),
        (lambda: _ticket("mallory"), "PERMISSION_DENIED", "not a member of group 7"),
    ],
    ids=["none", "forged", "other-group", "old-epoch", "expired", "non-member"],
)
def test_a_client_without_a_members_ticket_is_refused_and_logged(
    gated: GroupServer,
    caplog: pytest.LogCaptureFixture,
    ticket: Callable[[], str | None],
    code: str,
    why: str,
) -> None:
    # Prepare
    outcome: list[str] = []
    caplog.set_level(logging.WARNING, logger="node.federation.link")

    # Execute
    _connect(gated.listen, ticket(), outcome).join(timeout=30)

    # Assert: the stream was refused with the reason, never counted as a member
    assert outcome == [code]
    assert gated.connected == 0
    refusals = [r.getMessage() for r in caplog.records if "refused the client" in r.getMessage()]
    assert len(refusals) == 1
    assert "127.0.0.1" in refusals[0] and why in refusals[0]


def test_a_member_with_its_ticket_trains_and_is_known_by_its_ticket(gated: GroupServer) -> None:
    # Prepare: alice connects with her ticket, but her replies claim another node id
    outcome: list[str] = []
    thread = _connect(gated.listen, _ticket("alice"), outcome)
    assert gated.wait_for_clients(1, timeout=30) == 1

    # Execute
    result = gated.fit([np.zeros(2)], 1, {GROUP_ID_KEY: GROUP})
    gated.stop()
    thread.join(timeout=30)

    # Assert: her update counted, attributed to the node her ticket names
    assert result.weights is not None
    np.testing.assert_allclose(result.weights[0], np.ones(2))
    assert [u.member for u in result.updates] == ["alice"]
    assert outcome != ["UNAUTHENTICATED"] and outcome != ["PERMISSION_DENIED"]


def test_a_round_over_tls_completes_and_a_plaintext_client_is_not_served(pki: TestPKI) -> None:
    # Prepare: a TLS-only server; one member verifies it with the CA, one speaks plaintext
    srv = GroupServer(
        f"127.0.0.1:{free_port()}", round_timeout_s=5.0, certificates=pki.certificates()
    )
    outcome: list[str] = []
    plain: list[str] = []
    try:
        member = _connect(srv.listen, None, outcome, root=pki.ca.read_bytes())
        assert srv.wait_for_clients(1, timeout=30) == 1
        _connect(srv.listen, None, plain).join(timeout=60)

        # Execute
        result = srv.fit([np.zeros(2)], 1, {GROUP_ID_KEY: GROUP})
    finally:
        srv.stop()
    member.join(timeout=30)

    # Assert
    assert result.weights is not None and len(result.updates) == 1
    assert plain == ["UNAVAILABLE"]


def test_a_taken_port_raises_listen_error_naming_it() -> None:
    # Prepare
    first = GroupServer(f"127.0.0.1:{free_port()}")
    try:
        # Execute / Assert
        with pytest.raises(ListenError, match=f"cannot serve Flower on {first.listen}: .*in use"):
            GroupServer(first.listen)
    finally:
        first.stop()


def test_a_member_that_left_is_dropped_from_the_next_round(gated: GroupServer) -> None:
    # Prepare: alice and bob connected with their tickets; then bob leaves the group
    outcomes: list[str] = []
    threads = [_connect(gated.listen, _ticket(n), outcomes) for n in ("alice", "bob")]
    assert gated.wait_for_clients(2, timeout=30) == 2

    # Execute: the host learns the new membership
    dropped = gated.keep_only({"alice"})
    result = gated.fit([np.zeros(2)], 1, {GROUP_ID_KEY: GROUP})

    # Assert: bob's stream was closed and the round had alice only
    assert dropped == ["bob"]
    assert [u.member for u in result.updates] == ["alice"]
    threads[1].join(timeout=30)
    assert not threads[1].is_alive()
    gated.stop()
    threads[0].join(timeout=30)

"""The group's Flower server and members' clients over gRPC, in threads of one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

from node.addresses import free_port
from node.errors import SessionEnded
from node.federation.keys import GROUP_ID_KEY
from node.federation.link import GroupServer, check_legacy_compat, run_client


class _Client(NumPyClient):
    """Adds ``delta`` to what it gets; can leave, or hang, in a given round."""

    def __init__(self, delta: float, *, leave_at: int = 0, hang_at: int = 0) -> None:
        self.delta, self.leave_at, self.hang_at = delta, leave_at, hang_at

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        if config["round"] == self.leave_at:
            raise SessionEnded("leaving")
        if config["round"] == self.hang_at:
            time.sleep(3)
        return [parameters[0] + self.delta], 10, {}

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return 0.0, 10, {"loss-0": 0.0, "accuracy-0": 0.5}


@pytest.fixture
def server() -> Iterator[GroupServer]:
    srv = GroupServer(f"127.0.0.1:{free_port()}", round_timeout_s=1.0)
    try:
        yield srv
    finally:
        srv.stop()


def _connect(server: GroupServer, client: _Client, outcome: list[str]) -> threading.Thread:
    def target() -> None:
        try:
            run_client(server.listen, client)
            outcome.append("returned")
        except SessionEnded:
            outcome.append("left")
        except Exception as exc:
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_flower_still_offers_the_legacy_parts_used() -> None:
    check_legacy_compat()


def test_a_round_goes_on_without_a_member_that_leaves_or_hangs(server: GroupServer) -> None:
    # Prepare: three members; one leaves in round 1, one hangs past the deadline in round 2
    outcomes: list[str] = []
    clients = [_Client(1.0), _Client(3.0, leave_at=1), _Client(5.0, hang_at=2)]
    threads = [_connect(server, c, outcomes) for c in clients]
    assert server.wait_for_clients(3, timeout=30) == 3
    config: dict[str, Scalar] = {GROUP_ID_KEY: 1}

    # Execute
    first = server.fit([np.zeros(2)], 1, config)
    started = time.monotonic()
    second = server.fit([np.zeros(2)], 2, config)
    waited = time.monotonic() - started
    evaluated = server.evaluate([[np.zeros(2)]], 2, config)

    # Assert
    assert (len(first.updates), first.failures) == (2, 1)
    assert first.weights is not None and np.allclose(first.weights[0], 3.0)  # mean of 1 and 5
    assert "left" in outcomes
    assert (len(second.updates), second.failures) == (1, 1)
    assert second.weights is not None and np.allclose(second.weights[0], 1.0)
    assert waited < 2.5  # the round deadline, not the hung member, decided
    assert evaluated and all(e.accuracies == [pytest.approx(0.5)] for e in evaluated)
    server.stop()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


def test_a_host_whose_members_are_gone_does_not_block(server: GroupServer) -> None:
    # Prepare: one member connects, then leaves for good
    outcomes: list[str] = []
    thread = _connect(server, _Client(1.0, leave_at=1), outcomes)
    assert server.wait_for_clients(1, timeout=30) == 1
    config: dict[str, Scalar] = {GROUP_ID_KEY: 1}
    server.fit([np.zeros(2)], 1, config)
    thread.join(timeout=30)
    assert outcomes == ["left"]

    # Execute: the next round's phases find nobody (Flower alone would wait a day)
    fit = server.fit([np.zeros(2)], 2, config)
    evaluated = server.evaluate([[np.zeros(2)]], 2, config)

    # Assert
    assert fit.weights is None and fit.updates == []
    assert evaluated == []


def test_a_member_sending_nan_over_the_link_is_screened_out(server: GroupServer) -> None:
    # Prepare: an honest member and one whose updates are NaN
    outcomes: list[str] = []
    threads = [_connect(server, c, outcomes) for c in (_Client(1.0), _Client(float("nan")))]
    assert server.wait_for_clients(2, timeout=30) == 2

    # Execute
    fit = server.fit([np.zeros(2)], 1, {GROUP_ID_KEY: 1})

    # Assert: the NaN update never reached the strategy; the aggregate is the honest one's
    assert len(fit.refused) == 1 and "NaN" in str(fit.refused[0][1])
    assert fit.weights is not None and np.allclose(fit.weights[0], 1.0)
    assert len(fit.updates) == 1
    server.stop()
    for t in threads:
        t.join(timeout=10)

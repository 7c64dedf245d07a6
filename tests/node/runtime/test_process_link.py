"""Node processes over TLS with members-only Flower rounds; a node that cannot serve says so."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from flwr.client import NumPyClient

from node.config import NodeConfig
from node.errors import NodeError
from node.federation.link import run_client
from node.learning.partition import PartitionSpec
from node.runtime.process import NodeProcess, ProcessOptions
from tests.node.runtime.test_process import NodeProcs, wait_until
from tests.support.registry_proc import RegistryProcess
from tests.support.tls import TestPKI

pytestmark = pytest.mark.slow


@pytest.fixture
def https_registry(tmp_path: Path, pki: TestPKI) -> Iterator[RegistryProcess]:
    with RegistryProcess(
        tmp_path / "r",
        extra=["--heartbeat-ttl", "4", "--sweep-interval", "0.5"],
        tls=(pki.ca, pki.cert, pki.key),
    ) as reg:
        yield reg


def test_members_train_over_tls_and_the_host_refuses_a_stranger(
    https_registry: RegistryProcess, pki: TestPKI, tmp_path: Path
) -> None:
    # Prepare: two nodes of one data distribution, TLS to the registry and between them
    url = https_registry.url
    nodes = NodeProcs(tmp_path, url)
    tls = [
        "--ca-cert", str(pki.ca), "--tls-certfile", str(pki.cert), "--tls-keyfile", str(pki.key),
        "--partition", "iid", "--warmup-epochs", "0",
    ]  # fmt: skip
    api = httpx.Client(base_url=url, timeout=10, verify=ssl.create_default_context(cafile=pki.ca))

    def group_of_two() -> dict[str, Any] | None:
        for g in api.get("/groups").json()["data"]:
            detail = api.get(f"/groups/{g['id']}").json()
            if len(detail["members"]) == 2 and (detail["model_round"] or 0) >= 2:
                return dict(detail)
        return None

    try:
        nodes.start(0, *tls)
        wait_until(lambda: any(g["model_round"] for g in api.get("/groups").json()["data"]),
                   120, "n0's group and its first snapshot", nodes)  # fmt: skip
        nodes.start(1, *tls)

        # Execute: both train together; then a stranger knocks on the host's Flower port
        group = wait_until(group_of_two, 120, "a group of two with two rounds", nodes)
        host_log = tmp_path / f"{group['host_node_id']}.log"
        outcome: list[str] = []

        def stranger() -> None:
            try:
                run_client(group["host_address"], NumPyClient(), root_certificates=pki.ca_bytes)
                outcome.append("served")
            except grpc.RpcError as exc:
                outcome.append(exc.code().name)

        knock = threading.Thread(target=stranger, daemon=True)
        knock.start()
        knock.join(timeout=60)
        before = group["model_round"]

        def two_more_rounds() -> bool:
            later = group_of_two()
            return later is not None and later["model_round"] >= before + 2

        wait_until(two_more_rounds, 120, "two more rounds after the stranger", nodes)
    finally:
        nodes.kill_all()
        api.close()

    # Assert: rounds went on over TLS; the stranger was refused and the host logged it
    assert outcome == ["UNAUTHENTICATED"]
    refusals = [ln for ln in host_log.read_text().splitlines() if "refused the client" in ln]
    assert refusals and "no round ticket" in refusals[0] and "127.0.0.1" in refusals[0]


def test_a_node_whose_flower_port_is_taken_exits_saying_so(
    tmp_path: Path, sqlite_registry: RegistryProcess
) -> None:
    # Prepare: the node is told to serve Flower on the registry's own port
    taken = f"127.0.0.1:{sqlite_registry.port}"
    cmd = [
        sys.executable, "-m", "node",
        "--registry-url", sqlite_registry.url, "--node-id", "busy-port",
        "--address", taken, "--listen", taken, "--warmup-epochs", "0",
        "--heartbeat-interval-s", "0.5",
    ]  # fmt: skip

    # Execute
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    # Assert: exit status 1, one line naming the address, no traceback; hosting freed
    assert done.returncode == 1, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: cannot serve Flower on {taken}: Port in server address {taken} "
                      "is already in use."]  # fmt: skip
    assert "Traceback" not in done.stderr
    node = httpx.get(f"{sqlite_registry.url}/nodes/busy-port", timeout=5).json()
    assert node["group_id"] is None


def test_a_node_whose_heartbeat_thread_dies_stops_and_says_which(
    sqlite_registry: RegistryProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a node whose heartbeat meets a fault no registry answer can cause (mocked)
    proc = NodeProcess(
        NodeConfig(
            registry_url=sqlite_registry.url,
            node_id="dies-in-heartbeat",
            node_address="127.0.0.1:0",
            heartbeat_interval_s=0.05,
        ),
        PartitionSpec(num_partitions=2),
        ProcessOptions(warmup_epochs=0, listen="127.0.0.1:0"),
    )
    proc.prepare()

    def broken(_metrics: dict[str, float]) -> None:
        raise RuntimeError("boom")

    proc.agent.heartbeat = broken  # type: ignore[method-assign]
    stop = threading.Event()
    caplog.set_level(logging.ERROR, logger="node.runtime.process")
    timer = threading.Timer(60, stop.set)  # a safety net: the run must end on its own
    timer.start()

    # Execute
    try:
        with pytest.raises(NodeError, match=r"dies-in-heartbeat died: RuntimeError\('boom'\)"):
            proc.run(stop)
    finally:
        timer.cancel()

    # Assert: it ended by itself, said which thread, and left its group
    assert not stop.is_set()
    assert any("heartbeat thread died" in r.getMessage() for r in caplog.records)
    node = httpx.get(f"{sqlite_registry.url}/nodes/dies-in-heartbeat", timeout=5).json()
    assert node["group_id"] is None

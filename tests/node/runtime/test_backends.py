"""Group rounds on a backend: worker processes give the serial results; replay as the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from node.errors import ForbiddenError
from node.federation.round import GroupRoundResult
from node.learning.data import load_digits
from node.learning.partition import partition
from node.learning.weights import weights_to_bytes
from node.registry_client import RegistryClient
from node.runtime.backends import (
    GroupOutcome,
    ProcessBackend,
    SerialBackend,
    child_processes,
    make_backend,
    replay,
)
from node.runtime.network import InProcessNetwork, NetworkConfig
from tests.support.procs import wait_for_exit
from tests.support.registry_proc import RegistryProcess


def _run(url: str, backend: SerialBackend | ProcessBackend) -> tuple[object, dict[str, float]]:
    data = partition(load_digits(), 6, "clustered", seed=0, clusters=2)
    net = InProcessNetwork(url, data, NetworkConfig(seed=0), backend=backend)
    try:
        net.start()
        for _ in range(2):
            stats = net.run_round()
        return stats.groups, stats.node_accuracy
    finally:
        net.shutdown()


def test_worker_processes_train_exactly_as_the_serial_backend(tmp_path: Path) -> None:
    # Prepare: one partition, two registries
    with RegistryProcess(tmp_path / "a") as a, RegistryProcess(tmp_path / "b") as b:
        # Execute: the same network, in this thread and on two spawned worker processes
        serial = _run(a.url, SerialBackend())
        processes = _run(b.url, ProcessBackend(2))

    # Assert: the same groups, and every node's model scores the same on its own data
    assert processes == serial
    assert len(serial[0]) < 6  # nodes did group


def test_bare_training_leaves_every_node_as_it_was(tmp_path: Path) -> None:
    data = partition(load_digits(), 4, "iid", seed=0)
    with RegistryProcess(tmp_path / "r") as reg:
        net = InProcessNetwork(reg.url, data, NetworkConfig(seed=0, warmup_epochs=0))
        net.start()
        before = [a.learner.get_weights() for a in net.agents]
        seconds = net.bare_round()
        after = [a.learner.get_weights() for a in net.agents]
        net.shutdown()
    assert seconds > 0
    for w0, w1 in zip(before, after, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(w0, w1, strict=True))


def test_a_refused_upload_stops_the_replay_before_the_reports(tmp_path: Path) -> None:
    # Prepare: node a hosts a group; stranger b (no member) replays a round's calls as host
    with RegistryProcess(tmp_path / "r") as reg, httpx.Client(base_url=reg.url) as http:
        a, b = RegistryClient(reg.url), RegistryClient(reg.url)
        a.register("node-a", "in-process/a", "digits")
        b.register("node-b", "in-process/b", "digits")
        group = a.create_group("g", "digits", join=True)
        weights = [np.zeros((2, 2), np.float32)]
        outcome = GroupOutcome(
            group.id,
            GroupRoundResult(round=1, weights=weights),
            {},
            {},
            [
                (None, "upload_model", (group.id, 1, weights_to_bytes(weights)), {}),
                ("node-a", "report_performance", (group.id,), {"value": 0.9, "round": 1}),
            ],
        )

        # Execute
        refused = replay(outcome, b, {"node-a": a})
        shown = http.get(f"/groups/{group.id}").json()
        a.close()
        b.close()

    # Assert: 403 (not a member) ends the replay; node a's report was never sent
    assert isinstance(refused, ForbiddenError)
    assert shown["accuracy"] is None


def test_unknown_backends_and_attacks_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        make_backend("gpu")
    with RegistryProcess(tmp_path / "r") as reg:
        net = InProcessNetwork(reg.url, partition(load_digits(), 2, "iid", seed=0))
        with pytest.raises(ValueError, match="unknown attack"):
            net.set_attack("node-000", "bribery")
        with pytest.raises(ValueError, match="no node 'node-9'"):
            net.set_attack("node-9", "sign_flip")
        net.shutdown()


def test_nodes_heartbeat_mid_round_once_their_last_heartbeat_is_old(tmp_path: Path) -> None:
    # Prepare: no end-of-round heartbeats, and no moves after round 1 (a join counts as a
    # heartbeat); any heartbeat older than 1 ms is old
    data = partition(load_digits(), 4, "iid", seed=0)
    cfg = NetworkConfig(
        seed=0,
        heartbeat_every_rounds=1000,
        evaluate_every_rounds=1000,
        meta_federation=False,
        heartbeat_seconds=0.001,
    )
    with RegistryProcess(tmp_path / "r") as reg, httpx.Client(base_url=reg.url) as http:
        net = InProcessNetwork(reg.url, data, cfg)
        net.start()

        def beats() -> dict[str, str]:
            nodes = http.get("/nodes", params={"limit": 100}).json()["data"]
            return {n["id"]: n["last_heartbeat"] for n in nodes}

        net.run_round()
        before = beats()
        net.run_round()
        after = beats()
        net.shutdown()

    # Assert: every node's heartbeat moved during the round
    assert set(before) == {a.node_id for a in net.agents}
    assert all(after[n] > before[n] for n in before)


# The command line of a process started by multiprocessing's spawn method (not its
# resource tracker).
SPAWNED = b"spawn_main"


def test_worker_processes_ignore_ctrl_c_and_the_driver_goes_on(tmp_path: Path) -> None:
    # Prepare: a network on two worker processes
    data = partition(load_digits(), 4, "clustered", seed=0, clusters=2)
    with RegistryProcess(tmp_path / "r") as reg:
        backend = ProcessBackend(2)
        net = InProcessNetwork(reg.url, data, NetworkConfig(seed=0), backend=backend)
        try:
            net.start()
            workers = set(backend.pids)
            assert len(workers) == 2  # both started

            # Execute: Ctrl+C reaches the workers (a terminal signals the whole group)
            for pid in workers:
                os.kill(pid, signal.SIGINT)
            stats = net.run_round()

            # Assert: the same workers ran the round, to its reports, and still run
            assert workers <= set(child_processes(SPAWNED))
            assert len(stats.node_accuracy) == 4
        finally:
            net.shutdown()


_DRIVER = """
import sys, time
from node.learning.data import load_digits
from node.learning.models import build_model
from node.learning.partition import partition
from node.learning.pool import DataPool
from node.runtime.backends import ProcessBackend, WorkerSetup

if __name__ == "__main__":
    pool, _ = DataPool.of(partition(load_digits(), 4, "iid", seed=0))
    backend = ProcessBackend(2)  # held: a collected executor stops its workers
    backend.start(WorkerSetup(build_model("digits", seed=0)), pool)
    print(pool.to_file().path, *backend.pids, flush=True)  # the file written by start
    time.sleep(600)
"""


def test_workers_of_a_killed_driver_exit_and_remove_the_pool_file(tmp_path: Path) -> None:
    # Prepare: a driver with two started workers and its data pool in a file
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None
    path, *pids = driver.stdout.readline().split()
    pool_file, workers = Path(path), {int(pid) for pid in pids}
    assert pool_file.exists() and len(workers) == 2

    # Execute: the driver is killed outright (as the out-of-memory killer would)
    driver.kill()
    driver.wait()

    # Assert: its workers end, and its pool file is gone from /dev/shm
    assert all(wait_for_exit(pid) for pid in workers)
    assert not pool_file.exists()

"""With several workers, exactly one runs the background jobs (sweeper, simulations)."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from node.runtime.backends import child_processes
from registry.db import Database
from registry.events import EventType
from registry.migrate import upgrade
from registry.models import Event, Simulation, utcnow
from registry.schemas import SimulationCreate
from registry.settings import build_settings
from registry.simulations import SimulationManager, Status, get_simulation
from tests.registry.helpers import register
from tests.support.registry_proc import RegistryProcess

LEADS = re.compile(r"leader: worker pid (\d+) runs the sweeper")
FAST = ["--heartbeat-ttl", "1", "--sweep-interval", "0.2"]


def _wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll until `predicate()` is truthy; the timeout is only a safety net."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _leaders(reg: RegistryProcess) -> list[int]:
    return [int(pid) for pid in LEADS.findall(reg.log())]


def _gauge(c: httpx.Client, name: str) -> float:
    for family in text_string_to_metric_families(c.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def _expired(c: httpx.Client, node_id: str) -> list[object]:
    params = {"type": "expired", "node_id": node_id}
    data: list[object] = c.get("/events", params=params).json()["data"]
    return data


def test_two_workers_elect_one_leader_and_another_takes_over_when_it_dies(
    tmp_path: Path, database_url: str | None
) -> None:
    # Prepare: two workers, both started (each tries to lead as soon as it is up)
    with (
        RegistryProcess(tmp_path / "r", database_url=database_url, workers=2, extra=FAST) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        _wait_for(lambda: reg.log().count("registry ready") == 2)
        silent = [register(c)[0] for _ in range(3)]

        # Execute: the nodes stay silent past their TTL
        _wait_for(lambda: all(_expired(c, node_id) for node_id in silent))
        expired = {node_id: len(_expired(c, node_id)) for node_id in silent}
        elected = _leaders(reg)
        leader_gauge = _gauge(c, "mycelium_registry_leader")

        # Execute: SIGKILL the leader (no clean shutdown: its lease must go with it)
        os.kill(elected[0], signal.SIGKILL)
        _wait_for(lambda: len(_leaders(reg)) == 2)
        late, _ = register(c)
        _wait_for(lambda: _expired(c, late))
        leaders = _leaders(reg)
        gauge_after = _gauge(c, "mycelium_registry_leader")

    # Assert: one expiry per node, one leader in the logs and in the summed gauge
    assert expired == dict.fromkeys(silent, 1)
    assert len(elected) == 1 and leader_gauge == 1, reg.log()
    # ... then another worker leads and sweeps; the dead one no longer counts
    assert leaders[1] != leaders[0] and gauge_after == 1


def test_a_request_recorded_by_a_worker_that_does_not_lead_is_run_by_the_leader(
    tmp_path: Path,
) -> None:
    # Prepare: two workers' managers on one database; only the second leads. A dead
    # leader left one run running and one request queued since long ago.
    settings = build_settings(data_dir=tmp_path, max_simulations=3)
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    follower, leader = SimulationManager(db, settings), SimulationManager(db, settings)
    url = "http://127.0.0.1:9"  # where the run should find the registry
    params = SimulationCreate(nodes=2, rounds=200)
    long_ago = utcnow() - dt.timedelta(minutes=5)
    with db.write() as session:
        orphan = Simulation(params=params.model_dump(), status=Status.RUNNING)
        forgotten = Simulation(params=params.model_dump(), status=Status.QUEUED)
        forgotten.created_at = long_ago
        session.add_all([orphan, forgotten])
    try:
        # Execute: the follower records the request; the leader starts it
        queued = follower.start(params, url)
        leader.lead()

        def running() -> bool:
            with db.read() as session:
                return get_simulation(session, sim_id=queued.id).started_at is not None

        _wait_for(running)
        with db.read() as session:
            started = session.scalars(
                select(Event).where(Event.type == EventType.SIMULATION_STARTED)
            ).all()
        command = Path(f"/proc/{started[0].data['pid']}/cmdline").read_bytes()
    finally:
        leader.shutdown()
        follower.shutdown()
    with db.read() as session:
        final = get_simulation(session, sim_id=queued.id)
        left_running = get_simulation(session, sim_id=orphan.id)
        left_queued = get_simulation(session, sim_id=forgotten.id)
    db.dispose()

    # Assert: queued at first, then started once, with the URL the follower recorded
    assert queued.status == Status.QUEUED
    assert len(started) == 1 and url.encode() in command.split(b"\0")
    assert final.status == Status.FAILED and "stopped" in (final.error or "")
    assert left_running.status == Status.FAILED and "stopped" in (left_running.error or "")
    assert left_queued.status == Status.FAILED and "not started" in (left_queued.error or "")


def test_workers_started_by_the_mycelium_command_load_the_registry_only(
    tmp_path: Path,
) -> None:
    """`mycelium registry` imports every command (and so torch); its workers must not."""
    script = Path(sys.executable).parent / "mycelium"
    with RegistryProcess(tmp_path, workers=2, command=[str(script), "registry"]) as reg:
        assert reg.proc is not None
        workers = child_processes(b"spawn_main", reg.proc.pid)  # uvicorn's, serving requests
        assert len(workers) == 2
        for pid in workers:
            assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" in Path(f"/proc/{reg.proc.pid}/maps").read_text()  # the parent does

"""Simulations the registry runs against itself: admin only, recorded, streamed live."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.registry.helpers import register
from tests.support.registry_proc import RegistryProcess

ADMIN = "admin-token-for-tests"
TINY = {"nodes": 3, "rounds": 2, "dataset": "digits", "partition": "iid", "seed": 1}


@pytest.fixture(scope="module")
def admin_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """An SQLite registry with a known admin token, one simulation at a time."""
    extra = ["--admin-token", ADMIN, "--max-simulations", "1"]
    with RegistryProcess(tmp_path_factory.mktemp("registry"), extra=extra) as proc:
        yield proc


def _wait_final(c: httpx.Client, sim_id: int, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = c.get(f"/simulations/{sim_id}").json()
        if rec["status"] in ("finished", "failed"):
            return rec
        time.sleep(0.5)
    raise AssertionError(f"simulation {sim_id} did not end in {timeout} s")


def test_only_the_admin_token_starts_a_simulation(admin_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=admin_registry.url, timeout=10) as c:
        _, node_headers = register(c)
        anonymous = c.post("/simulations", json=TINY)
        as_node = c.post("/simulations", headers=node_headers, json=TINY)
        wrong = c.post("/simulations", headers={"Authorization": "Bearer nope"}, json=TINY)
        bad_params = c.post(
            "/simulations", headers={"Authorization": f"Bearer {ADMIN}"}, json={"nodes": 0}
        )
        listed = c.get("/simulations").json()
    assert anonymous.status_code == 401
    assert as_node.status_code == 403 and wrong.status_code == 403
    assert bad_params.status_code == 422
    assert listed["count"] == 0


def test_a_simulation_runs_to_finished_with_metrics_and_streams_its_log(
    admin_registry: RegistryProcess, tmp_path: Path
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=admin_registry.url, timeout=30) as c:
        # Execute: start one; a second while it runs is refused
        started = c.post("/simulations", headers=admin, json=TINY)
        busy = c.post("/simulations", headers=admin, json=TINY)
        sim_id = started.json()["id"]
        lines: list[str] = []
        end: dict[str, object] = {}
        with c.stream("GET", f"/simulations/{sim_id}/stream", timeout=120) as resp:
            event = ""
            for raw in resp.iter_lines():
                if raw.startswith("event:"):
                    event = raw[6:].strip()
                elif raw.startswith("data:"):
                    if event == "end":
                        end = json.loads(raw[5:])
                        break
                    lines.append(raw[5:].strip())
        record = _wait_final(c, sim_id)
        listed = c.get("/simulations").json()
        replay = []
        with c.stream("GET", f"/simulations/{sim_id}/stream") as resp:
            replay = [r for r in resp.iter_lines() if r.startswith("data:")]
        ledger = c.get("/ledger", params={"limit": 1000}).json()
        events = c.get("/events", params={"type": "simulation_finished"}).json()["data"]

    # Assert: accepted, refused while busy, finished with metrics, log streamed and replayable
    assert started.status_code == 202 and started.json()["params"]["nodes"] == 3
    assert busy.status_code == 429
    assert record["status"] == "finished", record.get("error")
    metrics = record["metrics"]
    assert isinstance(metrics, dict) and 0.0 <= metrics["mean_accuracy"] <= 1.0
    assert metrics["rounds"] == 2 and record["summary"]["rounds"] == 2
    assert end["status"] == "finished"
    assert any(line.startswith("round 2/2") for line in lines), lines
    assert len(replay) == len(lines) + 1  # every line again, then the end
    assert listed["data"][0]["id"] == sim_id and listed["data"][0]["summary"] is None
    assert any(e["node_id"].startswith(f"sim{sim_id}-") for e in ledger["data"])
    assert events and events[-1]["data"]["simulation_id"] == sim_id


def test_an_unknown_simulation_is_404(admin_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=admin_registry.url, timeout=10) as c:
        assert c.get("/simulations/4242").status_code == 404
        assert c.get("/simulations/4242/stream").status_code == 404


def test_a_simulation_worker_does_not_inherit_the_registrys_secrets(tmp_path: Path) -> None:
    # Prepare: a registry whose admin token and settings reach it through its environment
    extra = ["--admin-token", ADMIN, "--max-simulations", "1"]
    long_run = {**TINY, "rounds": 200}
    with (
        RegistryProcess(tmp_path / "registry", extra=extra) as proc,
        httpx.Client(base_url=proc.url, timeout=10) as c,
    ):
        started = c.post(
            "/simulations", headers={"Authorization": f"Bearer {ADMIN}"}, json=long_run
        )
        assert started.status_code == 202, started.text
        pid = None
        for _ in range(200):  # the event follows the worker's start at once
            events = c.get("/events", params={"type": "simulation_started"}).json()["data"]
            if events:
                pid = events[0]["data"]["pid"]
                break
            time.sleep(0.05)
        assert pid is not None

        # Execute: read the worker's environment while it runs (the registry stops it after)
        raw = Path(f"/proc/{pid}/environ").read_bytes()

    # Assert: what it needs is there, the registry's own settings are not
    names = {entry.split(b"=", 1)[0].decode() for entry in raw.split(b"\0") if entry}
    assert "PATH" in names and "PYTHONUNBUFFERED" in names
    assert ADMIN.encode() not in raw
    assert not [n for n in names if n.startswith("MYCELIUM_REGISTRY_")]

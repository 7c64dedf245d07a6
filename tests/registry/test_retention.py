"""Bounded history: old events, performance reports and simulation logs are pruned (by age
and by count); recent ones, and everything the ledger and live rounds need, stay."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from registry.db import Database
from registry.models import Event, PerformanceReport, Simulation, SimulationLog, utcnow
from registry.retention import prune_once
from registry.settings import RegistrySettings
from tests.registry.helpers import create_group, register
from tests.support.registry_proc import RegistryProcess

LONG_AGO = utcnow() - dt.timedelta(days=10)


def _settings(data_dir: Path, database_url: str | None, **limits: object) -> RegistrySettings:
    return RegistrySettings(data_dir=data_dir, database_url=database_url, **limits)  # type: ignore[arg-type]


def _report(c: httpx.Client, gid: int, h: dict[str, str], round_: int) -> None:
    r = c.put(f"/groups/{gid}/performance", headers=h, json={"value": 0.5, "round": round_})
    assert r.status_code == 200, r.text


def _pay_round_one(c: httpx.Client, gid: int, ids: list[str], hs: list[dict[str, str]]) -> None:
    """Members report their losses for round 1, then the first pays it: ledger entries."""
    for me, h in zip(ids, hs, strict=True):
        losses = {"new": 1.0, "start": 2.0} | {f"without:{n}": 1.1 for n in ids if n != me}
        r = c.put(
            f"/groups/{gid}/rounds/1/evaluations",
            headers=h,
            json={"num_examples": 50, "losses": losses},
        )
        assert r.status_code == 201, r.text
    body = {"contributions": [{"node_id": n, "contribution": 0.1} for n in ids]}
    r = c.post(f"/groups/{gid}/rounds/1/contributions", headers=hs[0], json=body)
    assert r.status_code == 201, r.text


def _first_streamed_id(url: str, last_event_id: int) -> int:
    """The id of the first event a stream resuming after `last_event_id` sends."""
    with (
        httpx.Client(base_url=url, timeout=10) as sc,
        sc.stream("GET", "/events/stream", headers={"Last-Event-ID": str(last_event_id)}) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("id:"):
                return int(line[3:].strip())
    raise AssertionError("the stream ended without an event")


def test_pruning_by_age_keeps_recent_history_and_what_the_rules_need(
    tmp_path: Path, database_url: str | None
) -> None:
    # Prepare: three members; two report rounds 1..6, the third only round 1; round 1 paid
    data_dir = tmp_path / "registry"
    with (
        RegistryProcess(data_dir, database_url=database_url) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        nodes = [register(c) for _ in range(3)]
        ids, hs = [n for n, _ in nodes], [h for _, h in nodes]
        gid = create_group(c, hs[0])
        for h in hs[1:]:
            assert c.post("/groups/join", headers=h, json={"group_id": gid}).status_code == 200
        _report(c, gid, hs[2], 1)
        _pay_round_one(c, gid, ids, hs)
        for round_ in range(1, 7):
            for h in hs[:2]:
                _report(c, gid, h, round_)
        ledger_before = c.get("/ledger", params={"limit": 1000}).json()
        balances_before = c.get("/ledger/balances").json()
        events = c.get("/events", params={"limit": 1000}).json()["data"]
    settings = _settings(data_dir, database_url, retention_days=7, prune_batch_rows=2)
    db = Database(settings.effective_database_url)
    try:
        # Older than a week: the first half of the events, every report, two simulations' logs
        cut = events[len(events) // 2]["id"]
        with db.write() as s:
            s.execute(update(Event).where(Event.id <= cut).values(created_at=LONG_AGO))
            s.execute(update(PerformanceReport).values(created_at=LONG_AGO))
            done = Simulation(params={}, status="finished", created_at=LONG_AGO)
            running = Simulation(params={}, status="running", created_at=LONG_AGO)
            s.add_all([done, running])
            s.flush()
            for i in range(3):
                s.add(SimulationLog(simulation_id=done.id, line=f"old {i}", created_at=LONG_AGO))
                s.add(SimulationLog(simulation_id=running.id, line=f"run {i}", created_at=LONG_AGO))
            s.add(SimulationLog(simulation_id=done.id, line="recent"))
            done_id, running_id = done.id, running.id

        # Execute
        pruned = prune_once(db, settings)

        # Assert: old events gone, recent ones kept
        with db.read() as s:
            kept_events = list(s.scalars(select(Event.id).order_by(Event.id)))
            reports = s.execute(select(PerformanceReport.node_id, PerformanceReport.round)).all()
            logs = s.execute(select(SimulationLog.simulation_id, SimulationLog.line)).all()
        assert kept_events == [e["id"] for e in events if e["id"] > cut]
        assert pruned.events == len(events) - len(kept_events)
        # Reports: the last three rounds (the ledger may still pay them) and each member's
        # latest report (the third member reported round 1 only) stay, though all are old
        assert sorted(reports) == sorted(
            [(n, r) for n in ids[:2] for r in (4, 5, 6)] + [(ids[2], 1)]
        )
        assert pruned.performance_reports == 6
        # Logs: an ended simulation loses its old lines; a running one keeps all of them
        assert sorted(logs) == sorted(
            [(done_id, "recent")] + [(running_id, f"run {i}") for i in range(3)]
        )
        assert pruned.simulation_logs == 3
        # A second pass finds nothing more to do
        assert prune_once(db, settings).total == 0
    finally:
        db.dispose()

    # The restarted registry: the ledger is whole, events page back, streams resume
    with (
        RegistryProcess(data_dir, database_url=database_url) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        assert c.get("/ledger", params={"limit": 1000}).json() == ledger_before
        assert c.get("/ledger/balances").json() == balances_before
        # (the restart adds an event: the running simulation's record is closed as failed)
        now = [e["id"] for e in c.get("/events", params={"limit": 1000}).json()["data"]]
        assert now[: len(kept_events)] == kept_events
        latest = c.get("/events", params={"latest": "true", "limit": 5}).json()["data"]
        assert [e["id"] for e in latest] == now[-5:]
        older = c.get("/events", params={"before": latest[0]["id"], "limit": 1000}).json()
        assert [e["id"] for e in older["data"]] == now[:-5]
        oldest_two = c.get("/events", params={"before": now[2], "limit": 5}).json()["data"]
        assert [e["id"] for e in oldest_two] == now[:2]
        # A client whose last seen event was pruned gets what remains, not an error
        assert _first_streamed_id(reg.url, events[0]["id"]) == kept_events[0]


def test_the_sweeper_keeps_the_newest_events_by_count(tmp_path: Path) -> None:
    # Prepare: a registry that keeps 10 events and prunes at every sweep
    extra = ["--events-max-rows", "10", "--prune-interval-s", "0.1", "--sweep-interval", "0.1"]
    with (
        RegistryProcess(tmp_path / "r", extra=extra) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        # Execute: 25 registrations, 25 events
        ids = [register(c)[0] for _ in range(25)]

        # Assert: only the newest 10 stay, the last registration among them; one log line
        def newest_ten() -> bool:
            data = c.get("/events", params={"limit": 1000}).json()["data"]
            return [e["node_id"] for e in data] == ids[-10:]

        deadline = time.monotonic() + 20
        while not newest_ten():
            assert time.monotonic() < deadline, c.get("/events").json()
            time.sleep(0.05)
        assert "retention: pruned" in reg.log()
        # Nodes themselves are not history: every one is still registered
        assert c.get("/nodes", params={"limit": 100}).json()["count"] == 25


@pytest.mark.parametrize("query", [{"before": 0}, {"before": "x"}, {"latest": "maybe"}])
def test_a_bad_page_back_cursor_is_a_422(sqlite_registry: RegistryProcess, query: object) -> None:
    r = httpx.get(f"{sqlite_registry.url}/events", params=query)  # type: ignore[arg-type]
    assert r.status_code == 422 and "detail" in r.json()

"""Snapshots read through RegistryClient: what the registry serves, and old files still load."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from node.registry_client import RegistryClient
from tests.support.registry_proc import RegistryProcess
from tests.viz.helpers import Network
from viz.snapshot import (
    EventRecord,
    GroupState,
    Migration,
    NodeState,
    Snapshot,
    SnapshotFetcher,
    load_snapshots,
)

# A file as the recorder wrote it before it read through RegistryClient; the second line
# is from an earlier writer still, without capacity, wall time or events.
OLD_FILE = (
    '{"format": "mycelium-viz-snapshots", "version": 1, "registry_url": "http://127.0.0.1:8000"}\n'
    '{"index":0,"time":0.0,"groups":[{"id":1,"name":"alpha","members":["a"],"accuracy":null,'
    '"round":0}],"nodes":[{"id":"a","group_id":1,"status":"active","accuracy":null}]}\n'
    '{"index":1,"time":1.5,"groups":[{"id":1,"name":"alpha","members":["a","b"],'
    '"accuracy":0.75,"round":3,"capacity":5}],"nodes":[{"id":"a","group_id":1,"status":"active",'
    '"accuracy":0.7},{"id":"b","group_id":1,"status":"inactive","accuracy":null}],"events":[{"id":9,'
    '"type":"migrated","node_id":"b","group_id":1,"data":{"from_group":2},'
    '"created_at":"2025-01-01T00:00:00.123456Z"}],"wall_time":1700000000.5}\n'
)


def test_snapshot_files_written_before_still_load(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "snapshots.jsonl"
    path.write_text(OLD_FILE)

    # Execute
    first, second = load_snapshots(path)

    # Assert
    assert first == Snapshot(
        0, 0.0, (GroupState(1, "alpha", ("a",), None, 0),), (NodeState("a", 1, "active", None),)
    )
    assert second.groups == (GroupState(1, "alpha", ("a", "b"), 0.75, 3, 5),)
    assert second.nodes[1] == NodeState("b", 1, "inactive", None)
    assert second.events == (
        EventRecord(9, "migrated", "b", 1, {"from_group": 2}, "2025-01-01T00:00:00.123456Z"),
    )
    assert second.migrations == (Migration("b", 2, 1, 9),)
    assert second.wall_time == 1700000000.5


def test_fetched_snapshot_holds_what_the_registry_serves(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # Prepare: a group of two, a report and a heartbeat with the node's own accuracy
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as http:
        net = Network(http, prefix=f"s{uuid.uuid4().hex[:6]}")
        a, b = net.register("a"), net.register("b")
        gid = net.create_group(a, f"{net.prefix}-g", capacity=3)
        net.join(b, gid)
        net.report(a, gid, 2, 0.8)
        raw_events = http.get("/events", params={"limit": 1000}).json()["data"]
        raw_group = http.get(f"/groups/{gid}").json()

    # Execute
    with RegistryClient(sqlite_registry.url) as client:
        fetcher = SnapshotFetcher(client)
        snap = fetcher.fetch()
        again = fetcher.fetch()

    # Assert: the group as GET /groups/{id} has it, members from the node list
    group = {g.id: g for g in snap.groups}[gid]
    assert group == GroupState(
        gid,
        raw_group["name"],
        tuple(sorted(m["id"] for m in raw_group["members"])),
        raw_group["accuracy"],
        raw_group["round"],
        raw_group["max_capacity"],
    )
    assert {n.id: n.accuracy for n in snap.nodes}[a] == pytest.approx(0.8)
    # every event once, with the registry's own timestamp text
    assert [(e.id, e.created_at) for e in snap.events] == [
        (e["id"], e["created_at"]) for e in raw_events
    ]
    assert again.events == () and again.index == 1
    # and the snapshot survives the file format unchanged
    path = tmp_path / "one.jsonl"
    path.write_text(OLD_FILE.splitlines()[0] + "\n" + json.dumps(snap.to_json()) + "\n")
    assert load_snapshots(path) == [snap]

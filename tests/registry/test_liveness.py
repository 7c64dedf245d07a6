"""Silent nodes expire and free their slot; empty groups are archived after a grace period."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.registry.helpers import create_group, register
from tests.support.registry_proc import RegistryProcess


def _wait_for(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_silent_node_expires_frees_its_slot_and_empty_group_is_archived(
    tmp_path: Path, database_url: str | None
) -> None:
    # Prepare: TTL 1.5 s; a node that keeps beating and one that goes silent, same group
    extra = ["--heartbeat-ttl", "1.5", "--sweep-interval", "0.2", "--archive-grace", "1"]
    with (
        RegistryProcess(tmp_path / "r", database_url=database_url, extra=extra) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        alive, h_alive = register(c)
        silent, h_silent = register(c)
        gid = create_group(c, h_alive, capacity=2)
        assert c.post("/groups/join", headers=h_silent, json={"group_id": gid}).status_code == 200
        lonely, h_lonely = register(c)
        lonely_gid = create_group(c, h_lonely)

        # Execute: only `alive` keeps sending heartbeats for a while
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert c.post(f"/nodes/{alive}/heartbeat", headers=h_alive).status_code == 200
            time.sleep(0.3)

        # Assert: the silent node is inactive and out; its slot is free for a newcomer
        assert c.get(f"/nodes/{silent}").json()["status"] == "inactive"
        assert c.get(f"/nodes/{silent}").json()["group_id"] is None
        assert c.get(f"/nodes/{alive}").json()["status"] == "active"
        group = c.get(f"/groups/{gid}").json()
        assert [m["id"] for m in group["members"]] == [alive]
        _, h_new = register(c)
        assert c.post("/groups/join", headers=h_new, json={"group_id": gid}).status_code == 200
        expired = c.get("/events", params={"type": "expired", "node_id": silent}).json()["data"]
        assert expired and expired[0]["group_id"] == gid

        # The lonely node also went silent: its group empties, then is archived
        assert _wait_for(lambda: c.get(f"/groups/{lonely_gid}").json()["archived"])
        live_ids = [g["id"] for g in c.get("/groups").json()["data"]]
        assert lonely_gid not in live_ids and gid in live_ids
        archived = c.get("/events", params={"type": "group_archived"}).json()["data"]
        assert [e["group_id"] for e in archived] == [lonely_gid]

        # A heartbeat brings an expired node back (not into its old group)
        assert c.post(f"/nodes/{silent}/heartbeat", headers=h_silent).status_code == 200
        back = c.get(f"/nodes/{silent}").json()
        assert back["status"] == "active" and back["group_id"] is None

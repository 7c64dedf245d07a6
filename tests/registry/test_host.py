"""Group hosting: one host at a time, claimed atomically, freed when the host goes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.registry.helpers import create_group, register
from tests.support.registry_proc import RegistryProcess


def test_one_host_at_a_time_and_takeover_when_it_leaves(
    tmp_path: Path, database_url: str | None
) -> None:
    with (
        RegistryProcess(tmp_path / "r", database_url=database_url, workers=2) as reg,
        httpx.Client(base_url=reg.url, timeout=20) as c,
    ):
        # Prepare: a group of 6 members
        first, h_first = register(c)
        gid = create_group(c, h_first, capacity=6)
        members = [(first, h_first)] + [register(c) for _ in range(5)]
        for _, h in members[1:]:
            assert c.post("/groups/join", headers=h, json={"group_id": gid}).status_code == 200

        # Execute: all six race to host
        results: list[dict[str, object]] = [{}] * 6
        barrier = threading.Barrier(6)

        def claim(i: int) -> None:
            with httpx.Client(base_url=reg.url, timeout=20) as cc:
                barrier.wait()
                results[i] = cc.post(
                    f"/groups/{gid}/host",
                    headers=members[i][1],
                    json={"address": f"127.0.0.1:{9000 + i}"},
                ).json()

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        # Assert: exactly one won; everyone was told who
        winners = [r for r in results if r["claimed"]]
        assert len(winners) == 1
        host = winners[0]["host_node_id"]
        assert {r["host_node_id"] for r in results} == {host}
        group = c.get(f"/groups/{gid}").json()
        assert group["host_node_id"] == host and group["host_epoch"] == 1

        # The host leaves: hosting is free, the next claimant gets it with a higher epoch
        host_headers = next(h for n, h in members if n == host)
        other_id, other_h = next((n, h) for n, h in members if n != host)
        c.post("/groups/leave", headers=host_headers)
        assert c.get(f"/groups/{gid}").json()["host_node_id"] is None
        again = c.post(f"/groups/{gid}/host", headers=other_h, json={"address": "127.0.0.1:1"})
        assert again.json()["claimed"] and again.json()["host_epoch"] == 2
        assert again.json()["host_node_id"] == other_id
        types = [e["type"] for e in c.get("/events", params={"group_id": gid}).json()["data"]]
        assert types.count("host_claimed") == 2 and "host_released" in types


def test_a_dead_host_is_replaced_after_it_expires(tmp_path: Path) -> None:
    extra = ["--heartbeat-ttl", "1", "--sweep-interval", "0.2"]
    with (
        RegistryProcess(tmp_path / "r", extra=extra) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        host, h_host = register(c)
        gid = create_group(c, h_host)
        survivor, h_surv = register(c)
        c.post("/groups/join", headers=h_surv, json={"group_id": gid})
        assert c.post(f"/groups/{gid}/host", headers=h_host, json={"address": "a:1"}).json()[
            "claimed"
        ]
        refused = c.post(f"/groups/{gid}/host", headers=h_surv, json={"address": "b:2"}).json()
        assert not refused["claimed"] and refused["host_node_id"] == host

        # Only the survivor keeps beating; the silent host expires
        deadline = time.monotonic() + 10
        while c.get(f"/nodes/{host}").json()["status"] == "active":
            assert time.monotonic() < deadline
            c.post(f"/nodes/{survivor}/heartbeat", headers=h_surv)
            time.sleep(0.2)
        took = c.post(f"/groups/{gid}/host", headers=h_surv, json={"address": "b:2"}).json()
        assert took["claimed"] and took["host_node_id"] == survivor


def test_only_members_may_host(sqlite_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        _, h = register(c)
        gid = create_group(c, h)
        _, outsider = register(c)
        r = c.post(f"/groups/{gid}/host", headers=outsider, json={"address": "x:1"})
        assert r.status_code == 403
        assert c.post(f"/groups/{gid}/host", json={"address": "x:1"}).status_code == 401

"""Capacity holds under real races: 4 worker processes, 50 simultaneous joins."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.registry.helpers import create_group, register
from tests.support.registry_proc import RegistryProcess


@pytest.fixture
def multi_worker_registry(tmp_path: Path, database_url: str | None) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "reg", database_url=database_url, workers=4) as proc:
        yield proc


def _race(url: str, headers: list[dict[str, str]], body_for: list[dict[str, int]]) -> list[int]:
    """Fire one request per node at once (released together by a barrier)."""
    barrier = threading.Barrier(len(headers))
    codes: list[int] = [0] * len(headers)

    def go(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            barrier.wait()
            codes[i] = c.post("/groups/join", headers=headers[i], json=body_for[i]).status_code

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(headers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def test_fifty_concurrent_joins_fill_exactly_the_capacity(
    multi_worker_registry: RegistryProcess,
) -> None:
    # Prepare: a group of capacity 5 created (not joined) by its owner, and 50 nodes
    url = multi_worker_registry.url
    with httpx.Client(base_url=url, timeout=30) as c:
        _, owner = register(c)
        gid = create_group(c, owner, capacity=5, join=False)
        nodes = [register(c) for _ in range(50)]

    # Execute
    codes = _race(url, [h for _, h in nodes], [{"group_id": gid}] * 50)

    # Assert: exactly five succeed, the rest hear "full", and the registry agrees
    assert Counter(codes) == {200: 5, 409: 45}
    with httpx.Client(base_url=url, timeout=30) as c:
        group = c.get(f"/groups/{gid}").json()
        in_group = c.get("/nodes", params={"group_id": gid}).json()["count"]
    assert group["member_count"] == 5 == len(group["members"]) == in_group


def test_crossing_migrations_neither_deadlock_nor_lose_members(
    multi_worker_registry: RegistryProcess,
) -> None:
    # Prepare: 20 nodes in group A and 20 in group B, each group big enough for all
    url = multi_worker_registry.url
    with httpx.Client(base_url=url, timeout=30) as c:
        _, owner_a = register(c)
        _, owner_b = register(c)
        ga = create_group(c, owner_a, capacity=50)
        gb = create_group(c, owner_b, capacity=50)
        side_a = [register(c) for _ in range(20)]
        side_b = [register(c) for _ in range(20)]
        for _, h in side_a:
            assert c.post("/groups/join", headers=h, json={"group_id": ga}).status_code == 200
        for _, h in side_b:
            assert c.post("/groups/join", headers=h, json={"group_id": gb}).status_code == 200

    # Execute: everyone swaps sides at once
    headers = [h for _, h in side_a + side_b]
    bodies = [{"group_id": gb}] * 20 + [{"group_id": ga}] * 20
    codes = _race(url, headers, bodies)

    # Assert
    assert codes == [200] * 40
    with httpx.Client(base_url=url, timeout=30) as c:
        a = c.get(f"/groups/{ga}").json()
        b = c.get(f"/groups/{gb}").json()
    assert a["member_count"] == b["member_count"] == 21
    assert {m["id"] for m in a["members"]} >= {n for n, _ in side_b}


def test_a_burst_of_moves_is_recorded_move_by_move(
    multi_worker_registry: RegistryProcess,
) -> None:
    # Prepare: 12 nodes in group A; each will ask to move to B and to C at the same time,
    # so one batch may hold the same node twice
    url = multi_worker_registry.url
    with httpx.Client(base_url=url, timeout=30) as c:
        _, owner = register(c)
        ga, gb, gc = (create_group(c, owner, capacity=50, join=False) for _ in range(3))
        movers = [register(c) for _ in range(12)]
        for _, h in movers:
            assert c.post("/groups/join", headers=h, json={"group_id": ga}).status_code == 200

    # Execute
    headers = [h for _, h in movers for _ in range(2)]
    bodies = [{"group_id": gb}, {"group_id": gc}] * len(movers)
    codes = _race(url, headers, bodies)

    # Assert: every move succeeded, and each node's events chain from group to group
    # (each `migrated` names the group it left) and end where the registry has it
    assert codes == [200] * len(headers)
    with httpx.Client(base_url=url, timeout=30) as c:
        for node_id, _ in movers:
            events = c.get("/events", params={"node_id": node_id, "limit": 100}).json()["data"]
            moves = [e for e in events if e["type"] in ("joined", "migrated")]
            assert [e["type"] for e in moves] == ["joined", "migrated", "migrated"]
            for before, after in itertools.pairwise(moves):
                assert after["data"]["from_group"] == before["group_id"]
            assert {moves[1]["group_id"], moves[2]["group_id"]} == {gb, gc}
            assert c.get(f"/nodes/{node_id}").json()["group_id"] == moves[-1]["group_id"]
        sizes = [c.get(f"/groups/{g}").json()["member_count"] for g in (ga, gb, gc)]
    assert sizes[0] == 0 and sum(sizes) == len(movers)

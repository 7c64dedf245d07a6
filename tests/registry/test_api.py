"""The registry API over real HTTP, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.registry.helpers import create_group, mlp_snapshot, register, unique
from tests.support.registry_proc import RegistryProcess


@pytest.fixture
def client(registry: RegistryProcess) -> httpx.Client:
    with httpx.Client(base_url=registry.url, timeout=10) as c:
        yield c


def test_group_performance_is_example_weighted_over_current_members(client: httpx.Client) -> None:
    # Prepare: three members report different accuracies on different amounts of data
    a, ha = register(client)
    b, hb = register(client)
    c, hc = register(client)
    gid = create_group(client, ha)
    for h in (hb, hc):
        assert client.post("/groups/join", headers=h, json={"group_id": gid}).status_code == 200

    # Execute
    for h, value, n in ((ha, 0.9, 100), (hb, 0.6, 50), (hc, 0.3, 50)):
        r = client.put(
            f"/groups/{gid}/performance",
            headers=h,
            json={"value": value, "round": 1, "num_examples": n},
        )
        assert r.status_code == 200, r.text
    full = client.get(f"/groups/{gid}").json()
    client.post("/groups/leave", headers=hc)
    after_leave = client.get(f"/groups/{gid}").json()

    # Assert: (0.9*100 + 0.6*50 + 0.3*50) / 200, then without the leaver
    assert full["accuracy"] == pytest.approx(0.675)
    assert full["member_count"] == 3
    assert {m["id"] for m in full["members"]} == {a, b, c}
    assert after_leave["accuracy"] == pytest.approx((0.9 * 100 + 0.6 * 50) / 150)
    assert after_leave["member_count"] == 2


def test_later_report_replaces_a_members_earlier_one_but_late_old_round_does_not(
    client: httpx.Client,
) -> None:
    _, h = register(client)
    gid = create_group(client, h)
    put = lambda v, rnd: client.put(  # noqa: E731
        f"/groups/{gid}/performance", headers=h, json={"value": v, "round": rnd}
    )
    put(0.5, 1)
    put(0.7, 2)
    put(0.1, 1)  # a retry of an older round arrives late
    group = client.get(f"/groups/{gid}").json()
    assert group["accuracy"] == pytest.approx(0.7)
    assert group["round"] == 2
    history = client.get(f"/groups/{gid}/performance").json()
    assert [r["value"] for r in history["data"]] == [0.5, 0.7, 0.1]


def test_join_moves_node_between_groups_and_records_a_migration(client: httpx.Client) -> None:
    node, h = register(client)
    _, h2 = register(client)
    g1 = create_group(client, h)
    g2 = create_group(client, h2)

    r = client.post("/groups/join", headers=h, json={"group_id": g2})

    assert r.status_code == 200
    assert r.json() == {"node_id": node, "group_id": g2, "previous_group_id": g1, "migrated": True}
    assert client.get(f"/groups/{g1}").json()["member_count"] == 0
    assert client.get(f"/groups/{g2}").json()["member_count"] == 2
    assert client.get(f"/nodes/{node}").json()["group_id"] == g2
    events = client.get("/events", params={"node_id": node}).json()["data"]
    assert [e["type"] for e in events][-1] == "migrated"
    assert events[-1]["data"]["from_group"] == g1 and events[-1]["group_id"] == g2


def test_full_group_refuses_with_reason(client: httpx.Client) -> None:
    _, h = register(client)
    gid = create_group(client, h, capacity=2)
    _, h2 = register(client)
    assert client.post("/groups/join", headers=h2, json={"group_id": gid}).status_code == 200
    _, h3 = register(client)

    r = client.post("/groups/join", headers=h3, json={"group_id": gid})

    assert r.status_code == 409
    assert "full" in r.json()["detail"] and "2/2" in r.json()["detail"]


def test_domains_keep_groups_apart(client: httpx.Client) -> None:
    _, hd = register(client, domain="digits")
    _, hf = register(client, domain="fashion")
    gid = create_group(client, hd, domain="digits")

    join = client.post("/groups/join", headers=hf, json={"group_id": gid})
    wrong_create = client.post(
        "/groups", headers=hf, json={"name": unique("g"), "domain": "digits"}
    )
    listed = client.get("/groups", params={"domain": "fashion"}).json()

    assert join.status_code == 403 and "domain" in join.json()["detail"]
    assert wrong_create.status_code == 403
    assert all(g["domain"] == "fashion" for g in listed["data"])
    assert gid not in [g["id"] for g in listed["data"]]


def test_group_names_are_unique_among_live_groups(client: httpx.Client) -> None:
    _, h = register(client)
    name = unique("g")
    create_group(client, h, name=name, join=False)
    r = client.post("/groups", headers=h, json={"name": name, "domain": "digits"})
    assert r.status_code == 409 and name in r.json()["detail"]


def test_listing_is_paginated_with_total_count(client: httpx.Client) -> None:
    _, h = register(client)
    ids = [create_group(client, h, join=False) for _ in range(5)]
    first = client.get("/groups", params={"limit": 2}).json()
    rest = client.get("/groups", params={"offset": 2, "limit": 100}).json()
    assert first["count"] == rest["count"] >= 5
    assert len(first["data"]) == 2
    seen = [g["id"] for g in first["data"] + rest["data"]]
    assert len(seen) == len(set(seen)) and set(ids) <= set(seen)


def test_model_snapshot_roundtrip_and_round_rules(client: httpx.Client) -> None:
    _, h = register(client)
    gid = create_group(client, h)
    blob = mlp_snapshot(0.5)

    up = client.put(f"/groups/{gid}/model", params={"round": 3}, headers=h, content=blob)
    again = client.put(f"/groups/{gid}/model", params={"round": 3}, headers=h, content=blob)
    other = client.put(
        f"/groups/{gid}/model", params={"round": 3}, headers=h, content=mlp_snapshot(0.1)
    )
    stale = client.put(
        f"/groups/{gid}/model", params={"round": 2}, headers=h, content=mlp_snapshot(0.2)
    )
    down = client.get(f"/groups/{gid}/model")

    assert up.status_code == 200 and up.json()["size"] == len(blob)
    assert again.status_code == 200 and again.json()["sha256"] == up.json()["sha256"]
    assert other.status_code == 409 and stale.status_code == 409
    assert down.content == blob
    assert down.headers["x-model-round"] == "3"
    assert down.headers["x-model-sha256"] == up.json()["sha256"]
    assert client.get(f"/groups/{gid}").json()["model_round"] == 3


def test_model_download_of_group_without_model_is_404(client: httpx.Client) -> None:
    _, h = register(client)
    gid = create_group(client, h)
    r = client.get(f"/groups/{gid}/model")
    assert r.status_code == 404 and "no model" in r.json()["detail"]


def test_event_stream_delivers_an_event_posted_after_connecting(
    registry: RegistryProcess, client: httpx.Client
) -> None:
    # Prepare: a client connected to the stream, positioned after every existing event
    last = client.get("/events", params={"limit": 1000}).json()["last_id"]
    received: list[dict[str, object]] = []
    connected = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=registry.url, timeout=15) as c,
            c.stream("GET", "/events/stream", params={"after_id": last}) as resp,
        ):
            connected.set()
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    received.append(json.loads(line[5:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert connected.wait(10)

    # Execute
    node, _ = register(client)
    t.join(10)

    # Assert
    assert received and received[0]["type"] == "registered" and received[0]["node_id"] == node


def test_health_answers_head_as_load_balancers_check_it(client: httpx.Client) -> None:
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    assert client.get("/healthz").json()["status"] == "ok"

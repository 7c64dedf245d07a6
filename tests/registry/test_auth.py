"""Every state change needs the acting node's token; nobody acts for another node."""

from __future__ import annotations

import httpx
import pytest

from tests.registry.helpers import create_group, register, unique
from tests.support.registry_proc import RegistryProcess


@pytest.fixture
def client(sqlite_registry: RegistryProcess) -> httpx.Client:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        yield c


def test_state_changes_without_a_token_are_401(client: httpx.Client) -> None:
    node, h = register(client)
    gid = create_group(client, h)
    calls = [
        ("POST", "/groups", {"name": unique("g"), "domain": "digits"}),
        ("POST", "/groups/join", {"group_id": gid}),
        ("POST", "/groups/leave", None),
        ("PUT", f"/groups/{gid}/performance", {"value": 1.0, "round": 1}),
        ("POST", f"/nodes/{node}/heartbeat", None),
    ]
    for method, path, body in calls:
        r = client.request(method, path, json=body)
        assert r.status_code == 401, (path, r.text)
        forged = client.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert forged.status_code == 401, (path, forged.text)
    bad = client.request(
        "POST",
        "/groups/join",
        json={"group_id": gid},
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert bad.status_code == 401 and bad.json()["detail"] == "invalid token"
    up = client.put(f"/groups/{gid}/model", params={"round": 1}, content=b"x")
    assert up.status_code == 401


def test_a_node_cannot_act_for_another(client: httpx.Client) -> None:
    victim, hv = register(client)
    attacker, ha = register(client)

    hb = client.post(f"/nodes/{victim}/heartbeat", headers=ha)
    join = client.post("/groups/join", headers=ha, json={"group_id": 1, "node_id": victim})
    hijack = client.post(
        "/nodes/register",
        headers=ha,
        json={"node_id": victim, "address": "10.0.0.66:1", "domain": "digits"},
    )
    anonymous = client.post(
        "/nodes/register", json={"node_id": victim, "address": "10.0.0.66:1", "domain": "digits"}
    )

    assert hb.status_code == 403
    assert join.status_code == 403
    assert hijack.status_code == 403
    assert anonymous.status_code == 401
    assert client.get(f"/nodes/{victim}").json()["address"] != "10.0.0.66:1"


def test_only_members_report_or_upload(client: httpx.Client) -> None:
    _, h_member = register(client)
    _, h_outsider = register(client)
    gid = create_group(client, h_member)

    report = client.put(
        f"/groups/{gid}/performance", headers=h_outsider, json={"value": 0.0, "round": 9}
    )
    upload = client.put(
        f"/groups/{gid}/model", params={"round": 9}, headers=h_outsider, content=b"poison"
    )

    assert report.status_code == 403 and "members" in report.json()["detail"]
    assert upload.status_code == 403
    assert client.get(f"/groups/{gid}").json()["round"] == 0
    assert client.get(f"/groups/{gid}/model").status_code == 404


def test_owner_can_update_its_registration_with_its_token(client: httpx.Client) -> None:
    node, h = register(client)
    r = client.post(
        "/nodes/register",
        headers=h,
        json={"node_id": node, "address": "127.0.0.1:9999", "domain": "digits"},
    )
    assert r.status_code == 200 and r.json()["token"] is None and r.json()["created"] is False
    assert client.get(f"/nodes/{node}").json()["address"] == "127.0.0.1:9999"

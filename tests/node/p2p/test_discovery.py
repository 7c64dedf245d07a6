"""Discovery by domain against a real registry process over HTTP."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from node.learning.models import build_model
from node.p2p.auth import auth_from_config
from node.p2p.config import P2PSection
from node.p2p.discovery import gossip_group_for
from node.p2p.gossip import GossipNode, TrainingConfig
from node.registry_client import RegistryClient
from tests.support.registry_proc import RegistryProcess


def _client(reg: RegistryProcess, node_id: str, domain: str) -> RegistryClient:
    client = RegistryClient(reg.url)
    client.register(node_id, "127.0.0.1:1", domain)
    return client


def test_the_first_node_creates_the_gossip_group_and_the_second_joins_it(
    sqlite_registry: RegistryProcess,
) -> None:
    a = _client(sqlite_registry, "disc-a1", "disc-a")
    b = _client(sqlite_registry, "disc-a2", "disc-a")

    first = gossip_group_for(a, "disc-a")
    second = gossip_group_for(b, "disc-a")

    group = a.get_group(first)
    assert second == first
    assert group.mode == "gossip" and group.name == "gossip-disc-a-1"
    assert sorted(m.id for m in group.members) == ["disc-a1", "disc-a2"]


def test_a_rounds_group_of_the_domain_is_not_mistaken_for_a_gossip_group(
    sqlite_registry: RegistryProcess,
) -> None:
    owner = _client(sqlite_registry, "disc-b0", "disc-b")
    flower = owner.create_group("disc-b-flower", "disc-b", max_capacity=10, join=False)
    node = _client(sqlite_registry, "disc-b1", "disc-b")

    found = gossip_group_for(node, "disc-b")

    assert found != flower.id
    assert node.get_group(found).mode == "gossip"
    assert node.get_group(flower.id).member_count == 0


def test_a_full_gossip_group_leads_to_a_new_one(sqlite_registry: RegistryProcess) -> None:
    clients = [_client(sqlite_registry, f"disc-c{i}", "disc-c") for i in range(3)]

    ids = [gossip_group_for(c, "disc-c", max_capacity=2) for c in clients]

    assert ids[0] == ids[1] != ids[2]
    groups = {g.id: g for g in clients[0].list_groups(domain="disc-c")}
    assert (groups[ids[0]].member_count, groups[ids[2]].member_count) == (2, 1)
    assert groups[ids[2]].name == "gossip-disc-c-2"


def test_nodes_discovering_at_once_end_in_one_group(sqlite_registry: RegistryProcess) -> None:
    clients = [_client(sqlite_registry, f"disc-d{i}", "disc-d") for i in range(6)]
    start = threading.Barrier(len(clients))
    found: list[int] = []

    def discover(client: RegistryClient) -> None:
        start.wait(timeout=30)
        found.append(gossip_group_for(client, "disc-d"))

    threads = [threading.Thread(target=discover, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    gossip_groups = [g for g in clients[0].list_groups(domain="disc-d") if g.mode == "gossip"]
    assert len(found) == 6 and len(set(found)) == 1
    assert [g.member_count for g in gossip_groups] == [6]


def test_a_bad_capacity_is_refused_before_asking_the_registry(
    sqlite_registry: RegistryProcess,
) -> None:
    client = _client(sqlite_registry, "disc-e1", "disc-e")

    with pytest.raises(ValueError, match=r"capacity must be 1\.\.10000"):
        gossip_group_for(client, "disc-e", max_capacity=0)

    assert client.list_groups(domain="disc-e") == []


def test_gossip_nodes_with_only_a_domain_find_each_other(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    def member(i: int) -> GossipNode:
        client = RegistryClient(sqlite_registry.url)
        return GossipNode(
            f"disc-f{i}",
            "digits",
            build_model("digits", 0),
            0,
            TrainingConfig(),
            auth=auth_from_config(P2PSection(data_dir=tmp_path / f"f{i}"), registry=client),
            registry=client,
        )

    async def scenario() -> tuple[list[int | None], list[str]]:
        nodes = [member(i) for i in range(2)]
        for node in nodes:
            await node.start()
        groups, second_view = [n.group_id for n in nodes], [d.node_id for d in nodes[1].view]
        for node in nodes:
            await node.stop()
        return groups, second_view

    groups, second_view = asyncio.run(scenario())

    assert groups[0] is not None and groups == [groups[0], groups[0]]
    assert second_view == ["disc-f0"]  # bootstrapped from the discovered group's roster


def test_a_group_mode_other_than_rounds_or_gossip_is_a_422_naming_the_field(
    sqlite_registry: RegistryProcess,
) -> None:
    client = _client(sqlite_registry, "disc-g1", "disc-g")
    body = {"name": "disc-g-odd", "domain": "disc-g", "mode": "flood"}

    auth = {"Authorization": f"Bearer {client.token}"}
    r = httpx.post(f"{sqlite_registry.url}/groups", json=body, headers=auth, timeout=10)

    assert r.status_code == 422
    assert "mode" in r.text
    assert client.list_groups(domain="disc-g") == []

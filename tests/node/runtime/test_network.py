"""End to end over real HTTP: nodes on clustered digits group by hidden cluster and gain."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from node.learning.data import load_digits
from node.learning.partition import partition
from node.runtime.network import InProcessNetwork, NetworkConfig, local_only_accuracy
from tests.support.registry_proc import RegistryProcess
from tests.support.stranger import Stranger

ROUNDS = 20


@pytest.mark.parametrize("mode", ["rotation", "label_permutation"])
def test_nodes_group_by_hidden_cluster_and_beat_local_training(tmp_path: Path, mode: str) -> None:
    # Prepare: 8 nodes, 2 hidden clusters, a real registry process
    data = partition(load_digits(), 8, "clustered", seed=0, clusters=2, cluster_mode=mode)
    cfg = NetworkConfig(seed=0)
    with RegistryProcess(tmp_path / "r") as reg:
        net = InProcessNetwork(reg.url, data, cfg)
        net.start()

        # Execute
        for _ in range(ROUNDS):
            net.run_round()
        test_acc = net.test_accuracy()
        ari = net.adjusted_rand_index()
        with httpx.Client(base_url=reg.url) as c:
            registry_groups = {
                g["id"]: {m["id"] for m in c.get(f"/groups/{g['id']}").json()["members"]}
                for g in c.get("/groups").json()["data"]
            }
        net.shutdown()
    local = local_only_accuracy(data, cfg, ROUNDS)

    # Assert: groups are exactly the hidden clusters, as the registry records them
    by_cluster: dict[int, set[str]] = {}
    for agent in net.agents:
        by_cluster.setdefault(agent.cluster or 0, set()).add(agent.node_id)
    assert sorted(map(sorted, (m for m in registry_groups.values() if m))) == sorted(
        map(sorted, by_cluster.values())
    )
    assert ari == 1.0
    # ...and learning together beats learning alone, on average and for the worst node
    assert np.mean(list(test_acc.values())) > np.mean(list(local.values())) + 0.02
    assert min(test_acc.values()) >= min(local.values())


def test_registry_restart_during_a_run_loses_no_node(tmp_path: Path) -> None:
    # Prepare: a network that has formed its groups
    data = partition(load_digits(), 6, "clustered", seed=1, clusters=2)
    reg = RegistryProcess(tmp_path / "r").start()
    net = InProcessNetwork(reg.url, data, NetworkConfig(seed=1))
    net.start()
    for _ in range(4):
        net.run_round()
    groups_before = {a.node_id: a.group_id for a in net.agents}
    with httpx.Client(base_url=reg.url) as c:
        rounds_before = {
            g["id"]: g["round"] for g in c.get("/groups").json()["data"] if g["member_count"]
        }

    # Execute: the registry goes away for a while, mid-run, then comes back
    reg.stop()
    second = RegistryProcess(tmp_path / "r", port=reg.port)
    restarted = threading.Event()

    def come_back() -> None:
        time.sleep(2.0)
        second.start()
        restarted.set()

    threading.Thread(target=come_back, daemon=True).start()
    try:
        net.run_round()  # runs while the registry is down: nodes keep training locally
        assert restarted.wait(30)
        for _ in range(4):
            net.run_round()

        # Assert: every node is still known, active, and in the group it had
        with httpx.Client(base_url=reg.url) as c:
            nodes = {n["id"]: n for n in c.get("/nodes").json()["data"]}
            groups = {g["id"]: g for g in c.get("/groups").json()["data"]}
        net.shutdown()
    finally:
        second.stop()
    assert set(nodes) == {a.node_id for a in net.agents}
    assert all(n["status"] == "active" for n in nodes.values())
    assert {nid: n["group_id"] for nid, n in nodes.items()} == groups_before
    for gid, before in rounds_before.items():
        assert groups[gid]["round"] > before  # learning went on from where it was


def test_a_harmful_candidate_snapshot_is_skipped_and_the_network_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the best-looking group in the domain holds a model whose loss overflows
    data = partition(load_digits(), 4, "clustered", seed=2, clusters=2)
    with RegistryProcess(tmp_path / "r") as reg, Stranger(reg.url) as stranger:
        net = InProcessNetwork(reg.url, data, NetworkConfig(seed=2))
        net.start()

        # Execute: placement and two re-evaluations score the bad snapshot
        with caplog.at_level(logging.WARNING, logger="node.runtime.agent"):
            stats = [net.run_round() for _ in range(4)]
        placed = {a.node_id: a.group_id for a in net.agents}
        net.shutdown()

    # Assert: every node scored and skipped it, none joined it, and the groups trained
    skipped = [r for r in caplog.records if f"snapshot of group {stranger.group_id}" in r.message]
    assert {r.message.split(":")[0] for r in skipped} == {a.node_id for a in net.agents}
    assert all(stranger.group_id not in s.groups for s in stats)
    assert all(gid is not None and gid != stranger.group_id for gid in placed.values())
    assert stats[-1].mean_accuracy > stats[0].mean_accuracy


def test_a_poisoner_is_quarantined_and_the_honest_members_recover(tmp_path: Path) -> None:
    # Prepare: IID nodes form FedAvg groups; then one member (not a host) starts sending its
    # update reversed and scaled x10 (Fang et al. 2020), while answering evaluations honestly
    data = partition(load_digits(), 6, "iid", seed=3)
    with RegistryProcess(tmp_path / "r") as reg:
        # Without meta-federation: its Sattler split may move the attacker (whose update
        # opposes the others') out of the group before the registry quarantines it there.
        net = InProcessNetwork(
            reg.url, data, NetworkConfig(seed=3, max_capacity=6, meta_federation=False)
        )
        net.start()
        net.run_round()
        rosters = net.history[-1].groups
        gid, roster = max(rosters.items(), key=lambda item: len(item[1]))
        assert len(roster) >= 3, rosters  # a host, an attacker and an honest member at least
        attacker_id = roster[-1]
        honest = [a for a in net.agents if a.node_id != attacker_id]
        net.set_attack(attacker_id, "sign_flip")

        # Execute: rounds until the registry quarantines the attacker (at most 6), then 6 more
        with httpx.Client(base_url=reg.url) as c:

            def events(kind: str) -> list[dict[str, object]]:
                page = c.get("/events", params={"type": kind, "limit": 1000}).json()
                return list(page["data"])

            for _ in range(6):
                net.run_round()
                if events("member_quarantined"):
                    break
            for _ in range(6):
                stats = net.run_round()
            flagged = {e["node_id"] for e in events("member_flagged")}
            held = [(e["node_id"], e["group_id"]) for e in events("member_quarantined")]
        net.shutdown()

    # Assert: the attacker was flagged and (alone) quarantined within 6 rounds, it is in no
    # group, and every honest node has finite weights and learns digits again
    assert attacker_id in flagged
    assert held == [(attacker_id, gid)]
    assert all(attacker_id not in members for members in stats.groups.values())
    for agent in honest:
        assert all(np.isfinite(w).all() for w in agent.learner.get_weights())
        assert agent.learner.evaluate("test").accuracy > 0.8, agent.node_id

"""The reward ledger: paid once per node and round, by the group's host, summed to balances."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from node.learning.data import Dataset, load_digits
from node.learning.partition import NodeData, partition
from node.runtime.network import InProcessNetwork, NetworkConfig
from tests.registry.helpers import create_group, register
from tests.support.registry_proc import RegistryProcess

SCALE = 100.0  # the registry's default reward_scale


def _group_of(
    c: httpx.Client, size: int, round_: int = 1
) -> tuple[int, list[str], list[dict[str, str]]]:
    """``size`` registered nodes in one group (the first created it) that has reached
    `round_`."""
    nodes = [register(c) for _ in range(size)]
    gid = create_group(c, nodes[0][1])
    for _, h in nodes[1:]:
        assert c.post("/groups/join", headers=h, json={"group_id": gid}).status_code == 200
    r = c.put(
        f"/groups/{gid}/performance", headers=nodes[0][1], json={"value": 0.5, "round": round_}
    )
    assert r.status_code == 200, r.text
    return gid, [n for n, _ in nodes], [h for _, h in nodes]


def _group_of_three(
    c: httpx.Client, round_: int = 1
) -> tuple[int, list[str], list[dict[str, str]]]:
    """Three registered nodes in one group that has reached `round_`."""
    return _group_of(c, 3, round_)


def _evidence(
    c: httpx.Client,
    gid: int,
    round_: int,
    ids: list[str],
    hs: list[dict[str, str]],
    values: list[float],
    improvement: float = 1.0,
) -> None:
    """Every member reports losses by which each node's leave-one-out value to the others
    is ``values[i]`` and the round lowered the loss by ``improvement``."""
    for me, h in zip(ids, hs, strict=True):
        losses = {"new": 1.0, "start": 1.0 + improvement}
        losses |= {f"without:{n}": 1.0 + v for n, v in zip(ids, values, strict=True) if n != me}
        r = c.put(
            f"/groups/{gid}/rounds/{round_}/evaluations",
            headers=h,
            json={"num_examples": 50, "losses": losses},
        )
        assert r.status_code == 201, r.text


def _contributions(ids: list[str], values: list[float]) -> dict[str, object]:
    return {
        "contributions": [
            {"node_id": n, "contribution": v} for n, v in zip(ids, values, strict=True)
        ]
    }


def test_a_round_is_paid_once_and_a_retry_returns_the_same_entries(
    registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=registry.url, timeout=10) as c:
        # Prepare
        gid, ids, hs = _group_of_three(c)
        _evidence(c, gid, 1, ids, hs, [0.05, 0.02, -0.3])
        body = _contributions(ids, [0.05, 0.02, -0.3])
        path = f"/groups/{gid}/rounds/1/contributions"

        # Execute: the host reports, then retries twice
        first = c.post(path, headers=hs[0], json=body)
        retries = [c.post(path, headers=hs[0], json=body) for _ in range(2)]
        ledger = c.get("/ledger", params={"group_id": gid}).json()
        balances = {n: c.get(f"/nodes/{n}/balance").json() for n in ids}

    # Assert: 201 then 200 with the very same entries; amounts scale positive contributions,
    # and the member whose update made the model worse for the others is flagged
    assert first.status_code == 201, first.text
    assert [r.status_code for r in retries] == [200, 200]
    assert all(r.json()["entries"] == first.json()["entries"] for r in retries)
    assert ledger["count"] == 3
    by_node = {e["node_id"]: e for e in first.json()["entries"]}
    assert by_node[ids[0]]["amount"] == pytest.approx(0.05 * SCALE)
    assert by_node[ids[1]]["amount"] == pytest.approx(0.02 * SCALE)
    assert by_node[ids[2]]["amount"] == 0.0 and by_node[ids[2]]["reason"] == "flagged_harmful"
    assert balances[ids[0]]["balance"] == pytest.approx(5.0)
    assert balances[ids[2]] | {"last_entry_at": None} == {
        "node_id": ids[2],
        "balance": 0.0,
        "entries": 1,
        "last_entry_at": None,
    }
    assert ledger["total_amount"] == pytest.approx(7.0)


def test_only_a_member_may_pay_and_only_members_of_reached_rounds(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: a group at round 2, and an outsider
        gid, ids, hs = _group_of_three(c, round_=2)
        outsider, ho = register(c)
        path = f"/groups/{gid}/rounds/2/contributions"
        ok = _contributions(ids, [0.1, 0.1, 0.1])

        # Execute
        no_token = c.post(path, json=ok)
        not_member = c.post(path, headers=ho, json=ok)
        stranger_paid = c.post(
            path, headers=hs[0], json=_contributions([*ids, outsider], [0.1] * 4)
        )
        future = c.post(f"/groups/{gid}/rounds/3/contributions", headers=hs[0], json=ok)
        twice = c.post(path, headers=hs[0], json=_contributions([ids[0], ids[0]], [0.1, 0.2]))
        nan = c.post(
            path,
            headers={**hs[0], "content-type": "application/json"},
            content=b'{"contributions": [{"node_id": "%s", "contribution": NaN}]}'
            % ids[0].encode(),
        )
        no_group = c.post("/groups/999999/rounds/1/contributions", headers=hs[0], json=ok)
        ledger = c.get("/ledger", params={"group_id": gid}).json()

    # Assert: every refusal, and nothing written
    assert no_token.status_code == 401
    assert not_member.status_code == 403
    assert stranger_paid.status_code == 422 and outsider in stranger_paid.json()["detail"]
    assert future.status_code == 409
    assert twice.status_code == 422
    assert nan.status_code == 422
    assert no_group.status_code == 404
    assert ledger["count"] == 0


def test_when_the_group_has_a_host_only_the_host_may_pay(sqlite_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        gid, ids, hs = _group_of_three(c)
        claim = c.post(f"/groups/{gid}/host", headers=hs[1], json={"address": "127.0.0.1:9"})
        assert claim.status_code == 200 and claim.json()["claimed"]
        path = f"/groups/{gid}/rounds/1/contributions"
        by_other = c.post(path, headers=hs[0], json=_contributions(ids, [0.1] * 3))
        by_host = c.post(path, headers=hs[1], json=_contributions(ids, [0.1] * 3))
    assert by_other.status_code == 403 and ids[1] in by_other.json()["detail"]
    assert by_host.status_code == 201


def test_balances_equal_the_sum_of_entries_after_a_restart(
    tmp_path: Path, database_url: str | None
) -> None:
    # Prepare: three rounds paid
    reg = RegistryProcess(tmp_path / "r", database_url=database_url).start()
    try:
        with httpx.Client(base_url=reg.url, timeout=10) as c:
            gid, ids, hs = _group_of_three(c, round_=3)
            rng = np.random.default_rng(0)
            for rnd in (1, 2, 3):
                values = rng.normal(0.02, 0.03, 3).tolist()
                _evidence(c, gid, rnd, ids, hs, values)
                body = _contributions(ids, values)
                r = c.post(f"/groups/{gid}/rounds/{rnd}/contributions", headers=hs[0], json=body)
                assert r.status_code == 201
            before = {n: c.get(f"/nodes/{n}/balance").json()["balance"] for n in ids}
    finally:
        reg.stop()

    # Execute: restart on the same database, retry a round, read everything back
    reg2 = RegistryProcess(tmp_path / "r", database_url=database_url, port=reg.port).start()
    try:
        with httpx.Client(base_url=reg2.url, timeout=10) as c:
            retry = c.post(
                f"/groups/{gid}/rounds/2/contributions",
                headers=hs[0],
                json=_contributions(ids, [9.0, 9.0, 9.0]),
            )
            entries = c.get("/ledger", params={"group_id": gid, "limit": 1000}).json()["data"]
            after = {n: c.get(f"/nodes/{n}/balance").json()["balance"] for n in ids}
            listed = {b["node_id"]: b["balance"] for b in c.get("/ledger/balances").json()["data"]}
    finally:
        reg2.stop()

    # Assert
    assert retry.status_code == 200 and not retry.json()["created"]
    assert len(entries) == 9
    sums = {n: sum(e["amount"] for e in entries if e["node_id"] == n) for n in ids}
    for n in ids:
        assert after[n] == pytest.approx(sums[n]) == pytest.approx(before[n])
        assert listed[n] == pytest.approx(sums[n])


def test_the_incentive_projects_ledger_paths_answer_as_aliases(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        gid, ids, hs = _group_of_three(c, round_=1)
        _evidence(c, gid, 1, ids, hs, [0.02, 0.03, 0.01])
        paid = c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=hs[0],
            json=_contributions(ids, [0.02, 0.03, 0.01]),
        )
        query = {"group_id": gid}
        pairs = [
            (c.get("/ledger", params=query), c.get("/api/incentives/ledger", params=query)),
            (c.get("/ledger/balances"), c.get("/api/incentives/ledger/balances")),
        ]
        bad = c.get("/api/incentives/ledger", params={"group_id": "x"})
        schema_paths = c.get("/openapi.json").json()["paths"]

    assert paid.status_code == 201
    for canonical, alias in pairs:
        assert alias.status_code == 200
        assert alias.json() == canonical.json()
    assert len(pairs[0][1].json()["data"]) == 3
    assert bad.status_code == 422
    assert not [p for p in schema_paths if p.startswith("/api/incentives")]


def test_a_reward_reaches_a_connected_event_stream(sqlite_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: a client on the stream of reward events
        gid, ids, hs = _group_of_three(c)
        last = c.get("/events", params={"limit": 1000, "type": "reward"}).json()["last_id"]
        received: list[dict[str, object]] = []
        connected = threading.Event()

        def listen() -> None:
            with (
                httpx.Client(base_url=sqlite_registry.url, timeout=15) as sc,
                sc.stream(
                    "GET", "/events/stream", params={"after_id": last, "type": "reward"}
                ) as resp,
            ):
                connected.set()
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        received.append(json.loads(line[5:]))
                        if len(received) == 3:
                            return

        t = threading.Thread(target=listen, daemon=True)
        t.start()
        assert connected.wait(10)

        # Execute
        _evidence(c, gid, 1, ids, hs, [0.01, 0.02, 0.03])
        c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=hs[0],
            json=_contributions(ids, [0.01, 0.02, 0.03]),
        )
        t.join(10)

    # Assert: one reward event per entry, with its amount
    assert sorted(e["node_id"] for e in received) == sorted(ids)
    amounts = {e["node_id"]: e["data"]["amount"] for e in received}
    assert amounts[ids[2]] == pytest.approx(3.0)
    assert all(e["type"] == "reward" and e["group_id"] == gid for e in received)


def _poisoned(nd: NodeData, seed: int = 11) -> NodeData:
    rng = np.random.default_rng(seed)

    def scramble(d: Dataset) -> Dataset:
        return dataclasses.replace(d, y=rng.integers(0, d.num_classes, len(d.y)).astype(np.int64))

    return dataclasses.replace(
        nd, train=scramble(nd.train), val=scramble(nd.val), test=scramble(nd.test)
    )


def test_a_member_with_poisoned_labels_earns_less_than_honest_members(tmp_path: Path) -> None:
    # Prepare: four nodes in one group over real HTTP; node 3's labels are random
    data = partition(load_digits(), 4, "iid", seed=5)
    data[3] = _poisoned(data[3])
    cfg = NetworkConfig(seed=5, local_epochs=1, warmup_epochs=1, evaluate_every_rounds=10_000)
    with RegistryProcess(tmp_path / "r") as reg:
        net = InProcessNetwork(reg.url, data, cfg, node_prefix="poison")
        net.start()
        host = net.agents[0]
        gid = host.client.create_group("poison-test", "digits", max_capacity=5).id
        host.group_id = gid
        for agent in net.agents[1:]:
            agent.client.join(gid)
            agent.group_id = gid

        # Execute
        for _ in range(4):
            net.run_round()
        with httpx.Client(base_url=reg.url, timeout=10) as c:
            balances = {a.node_id: c.get(f"/nodes/{a.node_id}/balance").json() for a in net.agents}
        net.shutdown()

    # Assert: every member was paid for every round; the poisoned one earned least
    assert all(b["entries"] == 4 for b in balances.values())
    honest = [balances[a.node_id]["balance"] for a in net.agents[:3]]
    poisoned = balances[net.agents[3].node_id]["balance"]
    assert poisoned < min(honest), balances
    assert min(honest) > 0


def test_the_ledger_credits_no_more_than_the_members_own_evidence(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: the members' reports say each helped the others by 0.01
        gid, ids, hs = _group_of_three(c)
        _evidence(c, gid, 1, ids, hs, [0.01, 0.01, 0.01])

        # Execute: the host claims 9.0 for itself
        paid = c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=hs[0],
            json=_contributions(ids, [9.0, 0.01, 0.01]),
        )

    # Assert: credited the members' figure, the claim kept on record
    assert paid.status_code == 201, paid.text
    host = next(e for e in paid.json()["entries"] if e["node_id"] == ids[0])
    assert host["contribution"] == pytest.approx(0.01) and host["claimed"] == 9.0
    assert host["amount"] == pytest.approx(0.01 * SCALE)


def test_a_round_nobody_reported_pays_nothing(sqlite_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        gid, ids, hs = _group_of_three(c)
        paid = c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=hs[0],
            json=_contributions(ids, [0.2, 0.2, 0.2]),
        )
    assert paid.status_code == 201
    assert [e["amount"] for e in paid.json()["entries"]] == [0.0, 0.0, 0.0]


def test_a_round_pays_no_more_than_the_improvement_its_members_reported(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: each member worth 0.05 to the others, but the round only gained 0.03
        gid, ids, hs = _group_of_three(c)
        _evidence(c, gid, 1, ids, hs, [0.05, 0.05, 0.05], improvement=0.03)

        # Execute
        paid = c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=hs[0],
            json=_contributions(ids, [0.05, 0.05, 0.05]),
        )

    # Assert: the round's 3.0 tokens (scale x 0.03), shared in proportion
    amounts = [e["amount"] for e in paid.json()["entries"]]
    assert sum(amounts) == pytest.approx(0.03 * SCALE)
    assert amounts == pytest.approx([1.0, 1.0, 1.0])


def test_a_harmful_member_is_flagged_by_an_event(sqlite_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        gid, ids, hs = _group_of_three(c)
        _evidence(c, gid, 1, ids, hs, [0.02, 0.02, -0.5])
        c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=hs[0],
            json=_contributions(ids, [0.02, 0.02, -0.5]),
        )
        flags = c.get("/events", params={"type": "member_flagged", "limit": 1000}).json()
    flagged = [e for e in flags["data"] if e["group_id"] == gid]
    assert [(e["node_id"], e["data"]["round"]) for e in flagged] == [(ids[2], 1)]


def _flag_round(
    c: httpx.Client, gid: int, round_: int, ids: list[str], hs: list[dict[str, str]]
) -> httpx.Response:
    """A round in which the members' reports show the third member harming the others."""
    r = c.put(f"/groups/{gid}/performance", headers=hs[0], json={"value": 0.5, "round": round_})
    assert r.status_code == 200, r.text
    _evidence(c, gid, round_, ids, hs, [0.02, 0.02, -0.5])
    return c.post(
        f"/groups/{gid}/rounds/{round_}/contributions",
        headers=hs[0],
        json=_contributions(ids, [0.02, 0.02, -0.5]),
    )


def test_a_member_flagged_two_rounds_in_a_row_is_quarantined(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: one flagged round leaves the member in its group
        gid, ids, hs = _group_of_three(c)
        assert _flag_round(c, gid, 1, ids, hs).status_code == 201
        after_one = c.get(f"/nodes/{ids[2]}").json()["group_id"]

        # Execute: a second flagged round in a row
        assert _flag_round(c, gid, 2, ids, hs).status_code == 201
        after_two = c.get(f"/nodes/{ids[2]}").json()
        members = sorted(m["id"] for m in c.get(f"/groups/{gid}").json()["members"])
        held = c.get("/events", params={"type": "member_quarantined", "node_id": ids[2]}).json()
        rejoin = c.post("/groups/join", headers=hs[2], json={"group_id": gid})
        create = c.post(
            "/groups",
            headers=hs[2],
            json={"name": f"fresh-{ids[2]}", "domain": "digits", "join": True},
        )
        names = [g["name"] for g in c.get("/groups").json()["data"]]
        honest_join = c.post("/groups/join", headers=hs[1], json={"group_id": gid})
        # ...and a later round paid without a flag does not lift it
        c.put(f"/groups/{gid}/performance", headers=hs[0], json={"value": 0.5, "round": 3})
        paid = c.post(
            f"/groups/{gid}/rounds/3/contributions",
            headers=hs[0],
            json={"contributions": [{"node_id": ids[2], "contribution": 0.0}]},
        )
        still = c.post("/groups/join", headers=hs[2], json={"group_id": gid})

    # Assert: out of the group, recorded, and refused by name until the quarantine ends;
    # the honest members keep their group and their freedom
    assert after_one == gid
    assert after_two["group_id"] is None
    assert members == sorted(ids[:2])
    assert [(e["node_id"], e["group_id"], e["data"]["flags"]) for e in held["data"]] == [
        (ids[2], gid, 2)
    ]
    for refused in (rejoin, create):
        assert refused.status_code == 403, refused.text
        assert f"node '{ids[2]}' is quarantined until" in refused.json()["detail"]
    assert f"fresh-{ids[2]}" not in names
    assert honest_join.status_code == 200
    assert paid.status_code == 201 and paid.json()["entries"][0]["reason"] == "no_improvement"
    assert still.status_code == 403, still.text


def test_a_flag_between_good_rounds_is_no_quarantine(sqlite_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        gid, ids, hs = _group_of_three(c)
        assert _flag_round(c, gid, 1, ids, hs).status_code == 201
        c.put(f"/groups/{gid}/performance", headers=hs[0], json={"value": 0.5, "round": 2})
        _evidence(c, gid, 2, ids, hs, [0.02, 0.02, 0.02])
        c.post(
            f"/groups/{gid}/rounds/2/contributions",
            headers=hs[0],
            json=_contributions(ids, [0.02, 0.02, 0.02]),
        )
        assert _flag_round(c, gid, 3, ids, hs).status_code == 201
        node = c.get(f"/nodes/{ids[2]}").json()
    assert node["group_id"] == gid


def test_evaluations_come_from_members_once_and_well_formed(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare
        gid, ids, hs = _group_of_three(c)
        outsider, ho = register(c)
        path = f"/groups/{gid}/rounds/1/evaluations"
        report = {"num_examples": 40, "losses": {"new": 0.5, "start": 0.9}}

        # Execute
        first = c.put(path, headers=hs[0], json=report)
        again = c.put(path, headers=hs[0], json=report)
        changed = c.put(path, headers=hs[0], json={**report, "losses": {"new": 0.1}})
        stranger = c.put(path, headers=ho, json=report)
        bad_label = c.put(path, headers=hs[1], json={**report, "losses": {"mine": 0.1}})
        negative = c.put(path, headers=hs[1], json={**report, "losses": {"new": -1.0}})
        listed = c.get(path).json()

    # Assert
    assert (first.status_code, again.status_code, changed.status_code) == (201, 200, 409)
    assert stranger.status_code == 403
    assert bad_label.status_code == 422 and negative.status_code == 422
    assert listed["count"] == 1 and listed["data"][0]["losses"] == {"new": 0.5, "start": 0.9}


def test_an_evaluation_with_its_accuracy_is_also_the_members_performance_report_once(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: a group of three at round 1
        gid, ids, hs = _group_of_three(c)
        path = f"/groups/{gid}/rounds/2/evaluations"
        report = {"num_examples": 40, "losses": {"new": 0.5, "start": 0.9}, "accuracy": 0.75}

        # Execute: one member reports round 2 with its accuracy, then repeats the request
        first = c.put(path, headers=hs[1], json=report)
        again = c.put(path, headers=hs[1], json=report)
        out_of_range = c.put(path, headers=hs[2], json={**report, "accuracy": 1.5})
        history = c.get(f"/groups/{gid}/performance").json()

    # Assert: stored as both, the repeat added no second performance report
    assert (first.status_code, again.status_code) == (201, 200)
    assert out_of_range.status_code == 422 and "accuracy" in out_of_range.text
    mine = [r for r in history["data"] if r["node_id"] == ids[1]]
    assert [(r["round"], r["value"], r["num_examples"]) for r in mine] == [(2, 0.75, 40)]


def test_a_colluder_claiming_huge_examples_and_gains_cannot_mint_tokens(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: a group of four; two honest members say everyone was worth 0.01 and
        # the round gained 0.05; the colluder claims 2^31-1 examples, a gain of 1e6 and
        # that the host is worth 1e6 to it
        gid, ids, hs = _group_of(c, 4)
        a, ha = ids[0], hs[0]
        for me, h in zip(ids[:3], hs[:3], strict=True):
            losses = {"new": 1.0, "start": 1.05} | {f"without:{n}": 1.01 for n in ids if n != me}
            c.put(
                f"/groups/{gid}/rounds/1/evaluations",
                headers=h,
                json={"num_examples": 50, "losses": losses},
            ).raise_for_status()
        lie = {"new": 0.0, "start": 1e6, f"without:{a}": 1e6, "all": 0.0}
        lie |= {f"without:{n}": 0.0 for n in ids[1:3]}
        c.put(
            f"/groups/{gid}/rounds/1/evaluations",
            headers=hs[3],
            json={"num_examples": 2**31 - 1, "losses": lie},
        ).raise_for_status()

        # Execute: the host pays itself 1e6
        paid = c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=ha,
            json=_contributions(ids, [1e6, 0.01, 0.01, 0.01]),
        )

    # Assert: the round pays at most the median member's gain (0.05 x 100 tokens)
    assert paid.status_code == 201, paid.text
    assert sum(e["amount"] for e in paid.json()["entries"]) <= 0.05 * SCALE + 1e-6


def test_a_flag_takes_back_what_the_member_earned_just_before(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: a round in which the third member looked useful, then one it is caught in
        gid, ids, hs = _group_of_three(c)
        _evidence(c, gid, 1, ids, hs, [0.02, 0.02, 0.04])
        first = c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=hs[0],
            json=_contributions(ids, [0.02, 0.02, 0.04]),
        )
        earned = next(e["amount"] for e in first.json()["entries"] if e["node_id"] == ids[2])

        # Execute
        caught = _flag_round(c, gid, 2, ids, hs)
        balance = c.get(f"/nodes/{ids[2]}/balance").json()

    # Assert: the flagged entry gives round 1's pay back, and the balance is 0
    assert earned > 0
    entry = next(e for e in caught.json()["entries"] if e["node_id"] == ids[2])
    assert entry["reason"] == "flagged_harmful"
    assert entry["amount"] == pytest.approx(-earned)
    assert balance["balance"] == pytest.approx(0.0)


def test_one_lying_member_cannot_get_an_honest_one_flagged(
    sqlite_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: in a group of three, the host alone reports that member b harms it;
        # member d reports b as helpful, for two rounds
        gid, ids, hs = _group_of_three(c)
        a, b, d = ids
        for round_ in (1, 2):
            c.put(f"/groups/{gid}/performance", headers=hs[0], json={"value": 0.5, "round": round_})
            reports = {
                a: {f"without:{b}": 0.5, f"without:{d}": 1.01},
                b: {f"without:{a}": 1.01, f"without:{d}": 1.01},
                d: {f"without:{a}": 1.01, f"without:{b}": 1.02},
            }
            for me, h in zip(ids, hs, strict=True):
                losses = {"new": 1.0, "start": 1.05} | reports[me]
                c.put(
                    f"/groups/{gid}/rounds/{round_}/evaluations",
                    headers=h,
                    json={"num_examples": 50, "losses": losses},
                ).raise_for_status()
            paid = c.post(
                f"/groups/{gid}/rounds/{round_}/contributions",
                headers=hs[0],
                json=_contributions(ids, [0.01, -0.5, 0.01]),
            )
            assert paid.status_code == 201, paid.text
        node_b = c.get(f"/nodes/{b}").json()

    # Assert: b is neither flagged nor quarantined (its one witness out of two lied)
    entries = [e for e in paid.json()["entries"] if e["node_id"] == b]
    assert entries[0]["reason"] != "flagged_harmful"
    assert node_b["group_id"] == gid


def test_half_the_members_cannot_raise_the_rounds_cap(sqlite_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        # Prepare: a group of four; two report a gain of 1e6, two a gain of 0.05
        gid, ids, hs = _group_of(c, 4)
        ha = hs[0]
        for i, (me, h) in enumerate(zip(ids, hs, strict=True)):
            gain = 1e6 if i < 2 else 0.05
            losses = {"new": 0.0, "start": gain} | {f"without:{n}": 1.0 for n in ids if n != me}
            c.put(
                f"/groups/{gid}/rounds/1/evaluations",
                headers=h,
                json={"num_examples": 50, "losses": losses},
            ).raise_for_status()

        # Execute
        paid = c.post(
            f"/groups/{gid}/rounds/1/contributions",
            headers=ha,
            json=_contributions(ids, [1e6, 1e6, 1.0, 1.0]),
        )

    # Assert: the honest half's gain bounds the round
    assert paid.status_code == 201, paid.text
    assert sum(e["amount"] for e in paid.json()["entries"]) <= 0.05 * SCALE + 1e-6

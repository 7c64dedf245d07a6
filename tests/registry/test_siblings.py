"""Sibling links, merges and splits over real HTTP against a real registry process."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.registry.helpers import create_group, register, unique
from tests.support.registry_proc import RegistryProcess


@pytest.fixture
def client(sqlite_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sqlite_registry.url, timeout=30) as c:
        yield c


def _sib(group_id: int, fit: float = 0.8, **over: Any) -> dict[str, Any]:
    return {"group_id": group_id, "fit": fit, "own_fit": 0.7, "loss": 0.4, "examples": 30, **over}


def _group_with(
    client: httpx.Client, n: int, *, domain: str = "digits", capacity: int = 5, **body: Any
) -> tuple[int, list[tuple[str, dict[str, str]]]]:
    """A group with `n` members (the first created it); its id and (node id, headers)."""
    members = [register(client, domain=domain) for _ in range(n)]
    r = client.post(
        "/groups",
        headers=members[0][1],
        json={
            "name": unique("g"),
            "domain": domain,
            "max_capacity": capacity,
            "join": True,
            **body,
        },
    )
    assert r.status_code == 201, r.text
    gid = int(r.json()["id"])
    for _, h in members[1:]:
        assert client.post("/groups/join", headers=h, json={"group_id": gid}).status_code == 200
    return gid, members


def _events(client: httpx.Client, type_: str, group_id: int) -> list[dict[str, Any]]:
    r = client.get("/events", params={"type": type_, "group_id": group_id})
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def _link_pairs(links: list[dict[str, Any]]) -> set[tuple[int, int]]:
    return {(link["group_id"], link["sibling_id"]) for link in links}


def _link(client: httpx.Client, gid: int, headers: dict[str, str], *siblings: int) -> None:
    body = {"round": 0, "siblings": [_sib(s) for s in siblings]}
    r = client.put(f"/groups/{gid}/siblings", headers=headers, json=body)
    assert r.status_code == 200, r.text


# --- reporting and reading links ---------------------------------------------------------


def test_a_reported_link_reads_from_both_ends_and_is_announced(client: httpx.Client) -> None:
    # Prepare
    ga, [(_, ha)] = _group_with(client, 1)
    gb, _ = _group_with(client, 1)

    # Execute
    put = client.put(
        f"/groups/{ga}/siblings",
        headers=ha,
        json={"round": 3, "siblings": [_sib(gb, 0.83, own_fit=0.8, loss=0.5, examples=40)]},
    )
    from_a = client.get(f"/groups/{ga}/siblings")
    from_b = client.get(f"/groups/{gb}/siblings")

    # Assert
    assert put.status_code == 200, put.text
    [link] = put.json()["links"]
    assert {k: link[k] for k in ("group_id", "sibling_id", "fit", "own_fit", "loss")} == {
        "group_id": ga,
        "sibling_id": gb,
        "fit": 0.83,
        "own_fit": 0.8,
        "loss": 0.5,
    }
    assert (link["examples"], link["round"]) == (40, 3)
    assert from_a.json()["links"] == from_b.json()["links"] == [link]
    [event] = _events(client, "siblings_updated", ga)
    assert event["data"]["siblings"] == [{"group_id": gb, "fit": 0.83}]


def test_a_report_replaces_the_groups_whole_outgoing_set(client: httpx.Client) -> None:
    # Prepare: A links to B and C; C links to A
    ga, [(_, ha)] = _group_with(client, 1)
    gb, _ = _group_with(client, 1)
    gc, [(_, hc)] = _group_with(client, 1)
    first = {"round": 1, "siblings": [_sib(gb), _sib(gc)]}
    assert client.put(f"/groups/{ga}/siblings", headers=ha, json=first).status_code == 200
    back = {"round": 1, "siblings": [_sib(ga)]}
    assert client.put(f"/groups/{gc}/siblings", headers=hc, json=back).status_code == 200

    # Execute: A's next report names only C, with a new fit; then none at all
    second = {"round": 2, "siblings": [_sib(gc, 0.9)]}
    replaced = client.put(f"/groups/{ga}/siblings", headers=ha, json=second)
    after = client.get(f"/groups/{ga}/siblings").json()["links"]
    emptied = client.put(f"/groups/{ga}/siblings", headers=ha, json={"round": 3, "siblings": []})
    last = client.get(f"/groups/{ga}/siblings").json()["links"]

    # Assert: B is gone, C updated, C's own link to A untouched by A's reports
    assert replaced.status_code == 200, replaced.text
    assert _link_pairs(replaced.json()["links"]) == {(ga, gc)}
    assert _link_pairs(after) == {(ga, gc), (gc, ga)}
    assert next(x for x in after if x["group_id"] == ga)["fit"] == 0.9
    assert emptied.json()["links"] == []
    assert _link_pairs(last) == {(gc, ga)}
    assert client.get(f"/groups/{gb}/siblings").json()["links"] == []


@pytest.mark.parametrize(
    ("siblings", "reason"),
    [
        ("self", "own sibling"),
        ("twice", "more than once"),
        ([_sib(999_999, 1.5)], "less than or equal to 1"),
        ([_sib(999_999, -0.1)], "greater than or equal to 0"),
        ([_sib(999_999, own_fit=2)], "less than or equal to 1"),
        ([_sib(999_999, loss=-1)], "greater than or equal to 0"),
        ([_sib(999_999, examples=0)], "greater than or equal to 1"),
        ([_sib(i) for i in range(1, 66)], "at most 64"),
        ([_sib(999_999, True)], "valid number"),
        ([_sib(999_999, "0.5")], "valid number"),
        ("missing", "Field required"),
    ],
    ids=[
        "itself",
        "duplicate",
        "fit>1",
        "fit<0",
        "own_fit>1",
        "negative-loss",
        "no-examples",
        "65-entries",
        "fit-true",
        "fit-text",
        "no-siblings-key",
    ],
)
def test_bad_sibling_reports_are_422_with_a_reason(
    client: httpx.Client, siblings: Any, reason: str
) -> None:
    # Prepare
    ga, [(_, ha)] = _group_with(client, 1)
    gb, _ = _group_with(client, 1)
    if siblings == "self":
        siblings = [_sib(ga)]
    elif siblings == "twice":
        siblings = [_sib(gb), _sib(gb, 0.5)]
    body = {"round": 0} if siblings == "missing" else {"round": 0, "siblings": siblings}

    # Execute
    r = client.put(f"/groups/{ga}/siblings", headers=ha, json=body)

    # Assert: refused, said why, nothing stored
    assert r.status_code == 422, r.text
    assert reason in r.text
    assert client.get(f"/groups/{ga}/siblings").json()["links"] == []


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_fits_and_losses_are_422(client: httpx.Client, token: str) -> None:
    ga, [(_, ha)] = _group_with(client, 1)
    gb, _ = _group_with(client, 1)
    for field in ("fit", "own_fit", "loss"):
        entry = {"group_id": gb, "fit": "0.5", "own_fit": "0.5", "loss": "0.1", "examples": 3}
        parts = [f'"{k}": {token if k == field else v}' for k, v in entry.items()]
        raw = '{"round": 0, "siblings": [{' + ", ".join(parts) + "}]}"
        r = client.put(
            f"/groups/{ga}/siblings",
            headers={**ha, "content-type": "application/json"},
            content=raw,
        )
        assert r.status_code == 422, (field, r.text)
        assert field in r.text
    assert client.get(f"/groups/{ga}/siblings").json()["links"] == []


def test_sibling_reports_refuse_strangers_unknown_groups_and_other_domains(
    client: httpx.Client,
) -> None:
    # Prepare: A (digits) with a member, B (digits), X (another domain), and an outsider
    ga, [(_, ha)] = _group_with(client, 1)
    gb, _ = _group_with(client, 1)
    gx, _ = _group_with(client, 1, domain="letters")
    _, outsider = register(client)
    put = lambda h, sibs: client.put(  # noqa: E731
        f"/groups/{ga}/siblings", headers=h, json={"round": 0, "siblings": sibs}
    )

    # Execute
    no_token = put({}, [_sib(gb)])
    stranger = put(outsider, [_sib(gb)])
    unknown = put(ha, [_sib(gb), _sib(2**31 - 2)])
    other_domain = put(ha, [_sib(gx)])
    no_group = client.put(
        "/groups/2147483600/siblings", headers=ha, json={"round": 0, "siblings": []}
    )
    no_group_read = client.get("/groups/2147483600/siblings")

    # Assert
    assert no_token.status_code == 401
    assert stranger.status_code == 403 and "only members" in stranger.text
    assert unknown.status_code == 404 and str(2**31 - 2) in unknown.text
    assert other_domain.status_code == 409 and "letters" in other_domain.text
    assert no_group.status_code == 404
    assert no_group_read.status_code == 404
    assert client.get(f"/groups/{ga}/siblings").json()["links"] == []


def test_links_list_every_live_link_and_filters_by_domain(client: httpx.Client) -> None:
    # Prepare: a linked pair in each of two fresh domains
    d1, d2 = unique("d").lower(), unique("d").lower()
    g1, [(_, h1)] = _group_with(client, 1, domain=d1)
    g2, _ = _group_with(client, 1, domain=d1)
    g3, [(_, h3)] = _group_with(client, 1, domain=d2)
    g4, _ = _group_with(client, 1, domain=d2)
    for gid, h, sib in ((g1, h1, g2), (g3, h3, g4)):
        body = {"round": 0, "siblings": [_sib(sib)]}
        assert client.put(f"/groups/{gid}/siblings", headers=h, json=body).status_code == 200

    # Execute
    every = client.get("/links").json()["links"]
    only_d1 = client.get("/links", params={"domain": d1}).json()["links"]
    none = client.get("/links", params={"domain": unique("d").lower()}).json()["links"]
    bad = client.get("/links", params={"domain": "Not A Domain!"})

    # Assert
    assert {(g1, g2), (g3, g4)} <= _link_pairs(every)
    assert _link_pairs(only_d1) == {(g1, g2)}
    assert none == []
    assert bad.status_code == 422


def test_a_link_to_a_group_archived_for_emptiness_disappears_from_reads(
    tmp_path: Path,
) -> None:
    # Prepare: a registry archiving empty groups after 0.5 s; A links to B and B to A
    extra = ["--sweep-interval", "0.1", "--archive-grace", "0.5"]
    with (
        RegistryProcess(tmp_path / "reg", extra=extra) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        ga, [(_, ha)] = _group_with(c, 1)
        gb, [(_, hb)] = _group_with(c, 1)
        _link(c, ga, ha, gb)
        _link(c, gb, hb, ga)
        before = c.get(f"/groups/{ga}/siblings").json()["links"]

        # Execute: B's only member leaves; the sweeper archives B
        assert c.post("/groups/leave", headers=hb).status_code == 200
        for _ in range(200):
            if c.get(f"/groups/{gb}").json()["archived"]:
                break
            time.sleep(0.05)
        from_a = c.get(f"/groups/{ga}/siblings").json()["links"]
        every = c.get("/links").json()["links"]
        again = c.put(
            f"/groups/{ga}/siblings", headers=ha, json={"round": 1, "siblings": [_sib(gb)]}
        )

    # Assert: both directions were there, neither is now, and B cannot be named again
    assert _link_pairs(before) == {(ga, gb), (gb, ga)}
    assert from_a == [] and every == []
    assert again.status_code == 404


# --- merge ---------------------------------------------------------------------------------


def test_merge_moves_every_member_and_dissolves_the_source(client: httpx.Client) -> None:
    # Prepare: A (2 members) and B (2 members), linked by B only; A also links to C
    ga, members_a = _group_with(client, 2)
    gb, [(_, hb), _] = _group_with(client, 2)
    gc, _ = _group_with(client, 1)
    _link(client, gb, hb, ga)
    _link(client, ga, members_a[0][1], gc)

    # Execute: A's second member merges A into B
    r = client.post(f"/groups/{ga}/merge", headers=members_a[1][1], json={"into": gb})

    # Assert: B has all four, A is archived and gone from the list, its links with it
    assert r.status_code == 200, r.text
    assert r.json()["group"]["id"] == gb
    assert r.json()["group"]["member_count"] == 4
    assert sorted(r.json()["moved"]) == sorted(n for n, _ in members_a)
    b = client.get(f"/groups/{gb}").json()
    assert {m["id"] for m in b["members"]} >= {n for n, _ in members_a}
    assert len(b["members"]) == 4
    a = client.get(f"/groups/{ga}").json()
    assert a["archived"] is True and a["members"] == []
    assert ga not in {g["id"] for g in client.get("/groups").json()["data"]}
    assert client.get(f"/groups/{gb}/siblings").json()["links"] == []
    assert client.get(f"/groups/{gc}/siblings").json()["links"] == []
    [event] = _events(client, "groups_merged", gb)
    assert event["data"]["from"] == ga
    assert sorted(event["data"]["moved"]) == sorted(n for n, _ in members_a)
    assert client.get(f"/nodes/{members_a[0][0]}").json()["group_id"] == gb


def test_merge_refuses_with_reasons(client: httpx.Client) -> None:
    # Prepare: A (3 members), B (capacity 4, 2 members) linked from A; C not linked;
    # M (fedmedian) linked from A; an outsider
    ga, members_a = _group_with(client, 3)
    ha = members_a[0][1]
    gb, _ = _group_with(client, 2, capacity=4)
    gc, _ = _group_with(client, 1)
    gm, _ = _group_with(client, 1, aggregation="fedmedian")
    _link(client, ga, ha, gb, gm)
    _, outsider = register(client)
    merge = lambda h, into, gid=ga: client.post(  # noqa: E731
        f"/groups/{gid}/merge", headers=h, json={"into": into}
    )

    # Execute
    full = merge(ha, gb)
    not_sibling = merge(ha, gc)
    other_aggregation = merge(ha, gm)
    itself = merge(ha, ga)
    unknown = merge(ha, 2**31 - 2)
    stranger = merge(outsider, gb)
    no_token = merge({}, gb)

    # Assert: each refusal says why, and nobody moved
    assert full.status_code == 409 and "do not fit" in full.text
    assert not_sibling.status_code == 409 and "not a sibling" in not_sibling.text
    assert other_aggregation.status_code == 409 and "fedmedian" in other_aggregation.text
    assert itself.status_code == 409 and "itself" in itself.text
    assert unknown.status_code == 404
    assert stranger.status_code == 403
    assert no_token.status_code == 401
    assert client.get(f"/groups/{ga}").json()["member_count"] == 3
    assert client.get(f"/groups/{gb}").json()["member_count"] == 2


def test_merge_refuses_a_group_of_another_domain(client: httpx.Client) -> None:
    # Links across domains are refused, so no link exists: the domain is what is named
    ga, [(_, ha)] = _group_with(client, 1)
    gx, _ = _group_with(client, 1, domain="letters")
    r = client.post(f"/groups/{ga}/merge", headers=ha, json={"into": gx})
    assert r.status_code == 409, r.text
    assert "domain" in r.text and "letters" in r.text


@pytest.fixture
def multi_worker_registry(tmp_path: Path, database_url: str | None) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "reg", database_url=database_url, workers=4) as proc:
        yield proc


def test_concurrent_merges_into_one_group_never_exceed_its_capacity(
    multi_worker_registry: RegistryProcess,
) -> None:
    # Prepare: T (capacity 5, 1 member) and four groups of 2, each linked to T: only two fit
    url = multi_worker_registry.url
    with httpx.Client(base_url=url, timeout=30) as c:
        target, _ = _group_with(c, 1)
        sources = [_group_with(c, 2) for _ in range(4)]
        for gid, members in sources:
            _link(c, gid, members[0][1], target)
    barrier = threading.Barrier(len(sources))
    codes = [0] * len(sources)

    def merge(i: int) -> None:
        gid, members = sources[i]
        with httpx.Client(base_url=url, timeout=60) as c:
            barrier.wait()
            codes[i] = c.post(
                f"/groups/{gid}/merge", headers=members[1][1], json={"into": target}
            ).status_code

    # Execute
    threads = [threading.Thread(target=merge, args=(i,)) for i in range(len(sources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Assert: two merged, two heard "full", and T holds exactly five
    assert Counter(codes) == {200: 2, 409: 2}
    with httpx.Client(base_url=url, timeout=30) as c:
        group = c.get(f"/groups/{target}").json()
        in_group = c.get("/nodes", params={"group_id": target}).json()["count"]
        archived = [c.get(f"/groups/{gid}").json()["archived"] for gid, _ in sources]
    assert group["member_count"] == 5 == len(group["members"]) == in_group
    assert Counter(archived) == {True: 2, False: 2}


# --- split ---------------------------------------------------------------------------------


def test_split_creates_a_like_group_with_the_listed_members(client: httpx.Client) -> None:
    # Prepare: a gossip group of four with capacity 6
    gid, members = _group_with(client, 4, capacity=6, mode="gossip")
    leaving = sorted([members[2][0], members[3][0]])
    name = unique("split")

    # Execute: its first member splits the last two off
    r = client.post(
        f"/groups/{gid}/split", headers=members[0][1], json={"members": leaving, "name": name}
    )

    # Assert: a new group like the old one holds the two; the old keeps the rest
    assert r.status_code == 201, r.text
    new = r.json()["group"]
    assert r.json()["moved"] == leaving
    assert (new["name"], new["domain"], new["max_capacity"], new["mode"]) == (
        name,
        "digits",
        6,
        "gossip",
    )
    assert new["member_count"] == 2
    got = client.get(f"/groups/{new['id']}").json()
    assert sorted(m["id"] for m in got["members"]) == leaving
    old = client.get(f"/groups/{gid}").json()
    assert sorted(m["id"] for m in old["members"]) == sorted([members[0][0], members[1][0]])
    [event] = _events(client, "group_split", new["id"])
    assert (event["data"]["from"], event["data"]["to"]) == (gid, new["id"])
    assert event["data"]["moved"] == leaving


def test_split_refuses_with_reasons(client: httpx.Client) -> None:
    # Prepare: a group of three, a stranger in another group, a name already taken
    gid, members = _group_with(client, 3)
    ids = [n for n, _ in members]
    h = members[0][1]
    _, [(stranger_id, stranger)] = _group_with(client, 1)
    taken = unique("taken")
    create_group(client, register(client)[1], name=taken)
    split = lambda hd, body: client.post(f"/groups/{gid}/split", headers=hd, json=body)  # noqa: E731

    # Execute
    everyone = split(h, {"members": ids, "name": unique("s")})
    not_member = split(h, {"members": [stranger_id], "name": unique("s")})
    name_taken = split(h, {"members": [ids[2]], "name": taken})
    twice = split(h, {"members": [ids[2], ids[2]], "name": unique("s")})
    empty = split(h, {"members": [], "name": unique("s")})
    outsider = split(stranger, {"members": [ids[2]], "name": unique("s")})
    no_token = split({}, {"members": [ids[2]], "name": unique("s")})
    unknown = client.post(
        "/groups/2147483600/split", headers=h, json={"members": [ids[2]], "name": unique("s")}
    )

    # Assert: each says why, and the group is whole
    assert everyone.status_code == 409 and "at least one" in everyone.text
    assert not_member.status_code == 409 and stranger_id in not_member.text
    assert name_taken.status_code == 409 and "already exists" in name_taken.text
    assert twice.status_code == 422 and "more than once" in twice.text
    assert empty.status_code == 422
    assert outsider.status_code == 403
    assert no_token.status_code == 401
    assert unknown.status_code == 404
    assert client.get(f"/groups/{gid}").json()["member_count"] == 3


def test_split_frees_the_hosting_and_the_figures_of_the_members_who_leave(
    client: httpx.Client,
) -> None:
    # Prepare: three members report accuracy; the third hosts the group
    gid, members = _group_with(client, 3)
    for (_, h), value in zip(members, (0.9, 0.8, 0.2), strict=True):
        body = {"value": value, "round": 1, "num_examples": 10}
        assert client.put(f"/groups/{gid}/performance", headers=h, json=body).status_code == 200
    host_id, host_headers = members[2]
    claim = client.post(f"/groups/{gid}/host", headers=host_headers, json={"address": "h:1"})
    assert claim.json()["claimed"] is True

    # Execute: the host is split off
    r = client.post(
        f"/groups/{gid}/split",
        headers=members[0][1],
        json={"members": [host_id], "name": unique("s")},
    )

    # Assert: the old group has no host and scores only who stayed; the new starts unscored
    assert r.status_code == 201, r.text
    old = client.get(f"/groups/{gid}").json()
    assert old["host_node_id"] is None
    assert old["accuracy"] == pytest.approx(0.85)
    assert r.json()["group"]["accuracy"] is None
    [released] = _events(client, "host_released", gid)
    assert released["node_id"] == host_id and released["data"]["reason"] == "split"

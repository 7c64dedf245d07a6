"""Cached reads: ETag/304 on GET /groups, /groups/{id} and /nodes, the answers follow every
write (in one worker and across workers), and a node's token lists its own domain."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from registry.schemas import GroupDetail, GroupsPublic, NodesPublic
from tests.registry.helpers import create_group, mlp_signature, mlp_snapshot, register, unique
from tests.support.registry_proc import RegistryProcess

READS = ("/groups", "/nodes")


@pytest.fixture
def client(registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, timeout=10) as c:
        yield c


def _tagged(client: httpx.Client, path: str, **kwargs: object) -> httpx.Response:
    r = client.get(path, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    assert r.headers["etag"].startswith('"') and r.headers["cache-control"] == "no-cache"
    return r


def test_etag_stable_and_304_on_if_none_match(client: httpx.Client) -> None:
    # Prepare
    _, h = register(client)
    gid = create_group(client, h)
    paths = [*READS, f"/groups/{gid}"]

    for path in paths:
        # Execute
        first, again = _tagged(client, path), _tagged(client, path)
        etag = first.headers["etag"]
        same = client.get(path, headers={"If-None-Match": etag})
        listed = client.get(path, headers={"If-None-Match": f'"nope", W/{etag}'})
        star = client.get(path, headers={"If-None-Match": "*"})
        other = client.get(path, headers={"If-None-Match": '"nope"'})

        # Assert: one tag while nothing changes; 304 with no body whenever it matches
        assert again.headers["etag"] == etag and again.content == first.content, path
        for r in (same, listed, star):
            assert r.status_code == 304, (path, r.status_code)
            assert r.content == b"" and r.headers["etag"] == etag
        assert other.status_code == 200 and other.content == first.content


def _answers(client: httpx.Client, gid: int) -> dict[str, tuple[str, bytes]]:
    out = {}
    for path in [*READS, f"/groups/{gid}"]:
        r = _tagged(client, path)
        out[path] = (r.headers["etag"], r.content)
    return out


def test_each_write_changes_the_answers_it_shows_in(client: httpx.Client) -> None:
    # Prepare: two nodes of one domain, one group with a declared model
    domain = unique("d")
    _, h = register(client, domain=domain)
    other, h2 = register(client, domain=domain)
    gid = create_group(client, h, domain=domain, signature=mlp_signature())
    group_path = f"/groups/{gid}"
    writes: list[tuple[str, Callable[[], httpx.Response], set[str]]] = [
        ("join", lambda: client.post("/groups/join", headers=h2, json={"group_id": gid}), set()),
        (
            "performance",
            lambda: client.put(
                f"{group_path}/performance", headers=h, json={"value": 0.3, "round": 1}
            ),
            {"/nodes"},
        ),
        (
            "model upload",
            lambda: client.put(
                f"{group_path}/model", params={"round": 1}, headers=h, content=mlp_snapshot()
            ),
            {"/nodes"},
        ),
        (
            "heartbeat",
            lambda: client.post(f"/nodes/{other}/heartbeat", headers=h2, json={"metrics": {}}),
            {"/groups"},
        ),
        ("leave", lambda: client.post("/groups/leave", headers=h2), set()),
    ]
    for name, write, unchanged in writes:
        before = _answers(client, gid)

        # Execute
        r = write()

        # Assert: every answer that shows the write changed, tag and body; the rest kept both
        assert r.status_code == 200, (name, r.text)
        after = _answers(client, gid)
        for path, (etag, body) in after.items():
            if path in unchanged:
                assert (etag, body) == before[path], (name, path)
            else:
                assert etag != before[path][0] and body != before[path][1], (name, path)
                stale = client.get(path, headers={"If-None-Match": before[path][0]})
                assert stale.status_code == 200 and stale.content == body, (name, path)


def test_a_nodes_token_lists_its_own_domain(
    client: httpx.Client, registry: RegistryProcess
) -> None:
    # Prepare: a group in each of two domains
    mine, theirs = unique("d"), unique("d")
    node, h = register(client, domain=mine)
    _, h_other = register(client, domain=theirs)
    own = create_group(client, h, domain=mine)
    foreign = create_group(client, h_other, domain=theirs)
    admin = {"Authorization": f"Bearer {(registry.data_dir / 'admin_token').read_text().strip()}"}

    # Execute
    as_node = _tagged(client, "/groups", headers=h).json()
    explicit = client.get("/groups", params={"domain": mine}, headers=h)
    refused = client.get("/groups", params={"domain": theirs}, headers=h)
    anonymous = _tagged(client, "/groups").json()
    as_admin = _tagged(client, "/groups", headers=admin).json()
    bad = client.get("/groups", headers={"Authorization": "Bearer " + "x" * 43})

    # Assert
    assert [g["id"] for g in as_node["data"]] == [own] and as_node["count"] == 1
    assert explicit.status_code == 200 and explicit.json() == as_node
    assert refused.status_code == 403
    assert node in refused.json()["detail"]
    assert mine in refused.json()["detail"] and theirs in refused.json()["detail"]
    for everyone in (anonymous, as_admin):
        assert {own, foreign} <= {g["id"] for g in everyone["data"]}
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"


def test_a_rotated_token_stops_listing_at_once(
    client: httpx.Client, registry: RegistryProcess
) -> None:
    # Prepare: the node's token has listed groups (so its lookup is cached)
    node, h = register(client, domain=unique("d"))
    assert client.get("/groups", headers=h).status_code == 200
    admin = {"Authorization": f"Bearer {(registry.data_dir / 'admin_token').read_text().strip()}"}

    # Execute
    rotated = client.post(f"/nodes/{node}/token", headers=admin)
    old = client.get("/groups", headers=h)
    new = client.get("/groups", headers={"Authorization": f"Bearer {rotated.json()['token']}"})

    # Assert
    assert rotated.status_code == 200, rotated.text
    assert old.status_code == 401
    assert new.status_code == 200


def test_pagination_and_filters_are_cached_per_query(client: httpx.Client) -> None:
    # Prepare: three groups of one domain
    domain = unique("d")
    _, h = register(client, domain=domain)
    gids = [create_group(client, h, domain=domain, join=False) for _ in range(3)]

    # Execute
    pages = [
        _tagged(client, "/groups", params={"domain": domain, "offset": i, "limit": 1}).json()
        for i in range(3)
    ]
    bad = client.get("/groups", params={"limit": 0})

    # Assert: each page its own answer; the count is the total; bad input is FastAPI's 422
    assert [p["data"][0]["id"] for p in pages] == gids
    assert {p["count"] for p in pages} == {3}
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "limit"]


def test_answers_are_the_bytes_fastapi_gives(client: httpx.Client) -> None:
    # Prepare: floats and datetimes, whose JSON forms differ between serialisers
    domain = unique("d")
    _, h = register(client, domain=domain)
    gid = create_group(client, h, domain=domain)
    client.put(f"/groups/{gid}/performance", headers=h, json={"value": 1 / 3, "round": 1})
    cached = {
        "/groups": (GroupsPublic, _tagged(client, "/groups", params={"domain": domain}).content),
        "/group": (GroupDetail, _tagged(client, f"/groups/{gid}").content),
        "/nodes": (NodesPublic, _tagged(client, "/nodes", params={"domain": domain}).content),
    }
    app = FastAPI()
    for path, (model, body) in cached.items():
        app.add_api_route(
            path, lambda m=model, b=body: m.model_validate_json(b), response_model=model
        )

    async def plain_answers() -> dict[str, bytes]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://plain") as plain:
            return {path: (await plain.get(path)).content for path in cached}

    # Execute
    plain = asyncio.run(plain_answers())

    # Assert: FastAPI's own route, given the same data, answers the same bytes
    for path, (_, body) in cached.items():
        assert plain[path] == body, path


def _worker_of(client: httpx.Client, url: str, port: int) -> int | None:
    """The pid of the registry worker serving `client`'s kept-alive connection (via ss)."""
    r = client.get(url)
    local = r.extensions["network_stream"].get_extra_info("client_addr")[1]
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} and dport = :{local} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"pid=(\d+)", out)
    return int(found.group(1)) if found else None


def test_a_write_through_one_worker_reaches_the_others(
    tmp_path: Path, database_url: str | None
) -> None:
    # No sweeps during the test: their writes would refresh each worker on their own.
    quiet = ["--sweep-interval", "3600"]
    with (
        RegistryProcess(tmp_path / "r", database_url=database_url, workers=2, extra=quiet) as reg,
        ExitStack() as stack,
    ):
        with httpx.Client(base_url=reg.url, timeout=10) as c:
            _, h = register(c)
            gid = create_group(c, h)
        path = f"/groups/{gid}"
        # Prepare: a kept-alive connection to each worker, each has answered the group
        pinned: dict[int, httpx.Client] = {}
        for _ in range(50):  # connections land on either worker; a bound on tries
            client = stack.enter_context(httpx.Client(base_url=reg.url, timeout=10))
            pid = _worker_of(client, path, reg.port)
            if pid is not None:
                pinned.setdefault(pid, client)
            if len(pinned) == 2:
                break
        assert len(pinned) == 2, "no connection reached the second worker"
        for client in pinned.values():
            assert client.get(path).json()["member_count"] == 1

        # Execute: a write through one worker
        writer, reader = pinned.values()
        assert writer.post("/groups/leave", headers=h).status_code == 200

        # Assert: the other worker answers the new state soon (within ~0.4 s by design)
        deadline = time.monotonic() + 30  # a safety net, not the bound
        while reader.get(path).json()["member_count"] != 0:
            assert time.monotonic() < deadline, "the other worker kept the old answer"
        assert writer.get(path).json()["member_count"] == 0

"""Snapshot downloads are conditional, over real HTTP: the ETag is the snapshot's SHA-256,
and a download that names it gets 304 and no body until a new snapshot is stored."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from tests.registry.helpers import create_group, mlp_signature, mlp_snapshot, register, unique
from tests.support.registry_proc import RegistryProcess


@pytest.fixture
def client(sqlite_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sqlite_registry.url, timeout=30) as c:
        yield c


def _group_with_snapshot(client: httpx.Client, data: bytes) -> tuple[int, dict[str, str], str]:
    """A group, of a domain of its own, whose round-0 snapshot is ``data``; with its
    creator's auth headers and the domain."""
    domain = unique("etag")
    _, headers = register(client, domain=domain)
    gid = create_group(client, headers, domain=domain, signature=mlp_signature())
    r = client.put(f"/groups/{gid}/model", params={"round": 0}, headers=headers, content=data)
    assert r.status_code == 200, r.text
    return gid, headers, domain


def _tag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def test_download_carries_a_strong_etag_of_the_snapshot_hash(client: httpx.Client) -> None:
    # Prepare
    data = mlp_snapshot(0.1)
    gid, _, _ = _group_with_snapshot(client, data)

    # Execute
    r = client.get(f"/groups/{gid}/model")

    # Assert: quoted, not weak, the hash of the bytes
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["etag"] == _tag(data)
    assert r.headers["x-model-sha256"] == hashlib.sha256(data).hexdigest()


def test_naming_the_etag_gets_304_without_a_body(client: httpx.Client) -> None:
    # Prepare
    data = mlp_snapshot(0.2)
    gid, _, _ = _group_with_snapshot(client, data)

    # Execute: the latest, a given round, and a list with a weak form of the tag
    latest = client.get(f"/groups/{gid}/model", headers={"If-None-Match": _tag(data)})
    by_round = client.get(
        f"/groups/{gid}/model", params={"round": 0}, headers={"If-None-Match": _tag(data)}
    )
    listed = client.get(
        f"/groups/{gid}/model", headers={"If-None-Match": f'"other", W/{_tag(data)}'}
    )
    other = client.get(f"/groups/{gid}/model", headers={"If-None-Match": '"0123"'})

    # Assert
    for r in (latest, by_round, listed):
        assert r.status_code == 304
        assert r.content == b""
        assert r.headers["etag"] == _tag(data)
        assert r.headers["x-model-round"] == "0"
    assert other.status_code == 200 and other.content == data


def test_a_new_upload_answers_200_with_its_own_etag(client: httpx.Client) -> None:
    # Prepare: round 0 known to the caller, then round 1 stored
    old, new = mlp_snapshot(0.3), mlp_snapshot(0.4)
    gid, headers, _ = _group_with_snapshot(client, old)
    r = client.put(f"/groups/{gid}/model", params={"round": 1}, headers=headers, content=new)
    assert r.status_code == 200, r.text

    # Execute
    latest = client.get(f"/groups/{gid}/model", headers={"If-None-Match": _tag(old)})
    round_0 = client.get(
        f"/groups/{gid}/model", params={"round": 0}, headers={"If-None-Match": _tag(old)}
    )

    # Assert: the new bytes for the latest; round 0 is still the one the caller has
    assert latest.status_code == 200
    assert latest.content == new
    assert latest.headers["etag"] == _tag(new)
    assert latest.headers["x-model-round"] == "1"
    assert round_0.status_code == 304


def test_star_matches_any_snapshot_but_not_a_missing_one(client: httpx.Client) -> None:
    # Prepare: one group with a snapshot, one without
    data = mlp_snapshot(0.5)
    gid, headers, domain = _group_with_snapshot(client, data)
    empty = create_group(client, headers, domain=domain, join=False)

    # Execute
    stored = client.get(f"/groups/{gid}/model", headers={"If-None-Match": "*"})
    missing = client.get(f"/groups/{empty}/model", headers={"If-None-Match": "*"})

    # Assert
    assert stored.status_code == 304 and stored.headers["etag"] == _tag(data)
    assert missing.status_code == 404


def test_the_openapi_document_describes_the_304(client: httpx.Client) -> None:
    # Execute
    route = client.get("/openapi.json").json()["paths"]["/groups/{group_id}/model"]["get"]

    # Assert: the header a caller sends and the answer it gets
    assert "If-None-Match" in {p["name"].title() for p in route["parameters"]}
    assert "304" in route["responses"]
    assert "ETag" in route["responses"]["200"]["headers"]

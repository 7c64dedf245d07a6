"""Bad input gets a 4xx with a reason, never a 500, and never corrupts later reads."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from registry.wire import weights_to_bytes
from tests.registry.helpers import create_group, register
from tests.support.registry_proc import RegistryProcess


@pytest.fixture
def client(sqlite_registry: RegistryProcess) -> httpx.Client:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        yield c


def test_malformed_reports_are_refused_and_listings_keep_working(client: httpx.Client) -> None:
    node, h = register(client)
    gid = create_group(client, h)
    bad_bodies: list[object] = [
        {},
        {"value": "high", "round": 1},
        {"value": 0.5, "round": -1},
        {"value": 0.5, "round": 1, "num_examples": 0},
        {"value": 0.5, "round": 1, "metric": "Bad Metric!"},
        {"value": 1e300, "round": 1},
        {"value": 0.5, "round": 2**40},
        {"value": 5.0, "round": 1},
        {"value": -3.0, "round": 1, "metric": "accuracy"},
        [1, 2, 3],
    ]
    for body in bad_bodies:
        r = client.put(f"/groups/{gid}/performance", headers=h, json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert r.json()["detail"]
    for raw in (b'{"value": NaN, "round": 1}', b'{"value": Infinity, "round": 1}', b"{not json"):
        r = client.put(
            f"/groups/{gid}/performance",
            headers={**h, "Content-Type": "application/json"},
            content=raw,
        )
        assert r.status_code == 422, (raw, r.text)
    hb = client.post(
        f"/nodes/{node}/heartbeat",
        headers={**h, "Content-Type": "application/json"},
        content=b'{"metrics": {"accuracy": NaN}}',
    )
    assert hb.status_code == 422
    assert client.get("/groups").status_code == 200
    assert client.get(f"/groups/{gid}").json()["performance"] == {}
    assert client.get("/nodes").status_code == 200


def test_bad_ids_and_params_are_4xx(client: httpx.Client) -> None:
    assert client.get(f"/groups/{2**70}").status_code == 422
    assert client.get("/groups/0").status_code == 422
    assert client.get("/groups/abc").status_code == 422
    assert client.get("/groups/999999").status_code == 404
    assert client.get("/nodes/bad id with spaces").status_code in (404, 422)
    assert client.get("/groups", params={"limit": 0}).status_code == 422
    assert client.get("/events", params={"after_id": -1}).status_code == 422
    r = client.post(
        "/nodes/register", json={"node_id": "x", "address": "a", "domain": "Digits Upper"}
    )
    assert r.status_code == 422
    r = client.post("/nodes/register", json={"node_id": "x", "address": "a", "domain": "d", "k": 1})
    assert r.status_code == 422 and "k" in r.text


def test_oversized_bodies_are_413(client: httpx.Client) -> None:
    _, h = register(client)
    gid = create_group(client, h)
    big = {"node_id": "big", "address": "x" * (2 * 1024 * 1024), "domain": "digits"}
    assert client.post("/nodes/register", json=big).status_code == 413

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b" " * 65536

    chunked = client.post(
        "/nodes/register", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    empty = client.put(f"/groups/{gid}/model", params={"round": 1}, headers=h, content=b"")
    assert empty.status_code == 422


def test_model_over_the_size_limit_is_413_and_not_stored(tmp_path: Path) -> None:
    with (
        RegistryProcess(tmp_path / "r", extra=["--max-model-bytes", "1000"]) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        _, h = register(c)
        gid = create_group(c, h)
        declared = c.put(
            f"/groups/{gid}/model", params={"round": 1}, headers=h, content=b"x" * 1001
        )

        def stream():  # type: ignore[no-untyped-def]
            for _ in range(5):
                yield b"y" * 400

        chunked = c.put(f"/groups/{gid}/model", params={"round": 1}, headers=h, content=stream())
        small = weights_to_bytes([np.zeros(150, dtype=np.float32)])  # 600 bytes of data
        fits = c.put(f"/groups/{gid}/model", params={"round": 1}, headers=h, content=small)
        assert declared.status_code == 413 and "1000 bytes" in declared.json()["detail"]
        assert chunked.status_code == 413
        assert len(small) <= 1000 and fits.status_code == 200
        assert c.get(f"/groups/{gid}/model").content == small
    leftovers = list((tmp_path / "r" / "models" / "incoming").iterdir())
    assert leftovers == []


def test_a_public_key_must_be_32_bytes_and_is_published_as_base64(client: httpx.Client) -> None:
    body = {"node_id": "keyed-node", "address": "127.0.0.1:7001", "domain": "digits"}
    for bad in ["", "not base64!", "AAAA", "00" * 31, "A" * 100, 42]:
        r = client.post("/nodes/register", json={**body, "public_key": bad})
        assert r.status_code == 422, (bad, r.text)
        assert "public_key" in r.text
    raw = bytes(range(32))

    r = client.post("/nodes/register", json={**body, "public_key": raw.hex()})
    again = client.post(
        "/nodes/register",
        headers={"Authorization": f"Bearer {r.json()['token']}"},
        json={**body, "public_key": base64.urlsafe_b64encode(raw[::-1]).decode().rstrip("=")},
    )

    assert r.status_code == 201, r.text
    assert again.status_code == 200, again.text  # a re-registration may rotate the key
    published = client.get("/nodes/keyed-node").json()["public_key"]
    assert base64.b64decode(published) == raw[::-1]

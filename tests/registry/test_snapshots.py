"""Checked snapshot uploads and a model signature per domain, over real HTTP, on SQLite and
on PostgreSQL: bad bytes are refused with a reason and stored nowhere, and a node with
another model is refused at the door."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from registry.wire import weights_to_bytes
from tests.registry.helpers import (
    MLP_NAMES,
    MLP_SHAPES,
    create_group,
    mlp_signature,
    mlp_snapshot,
    mlp_weights,
    register,
    unique,
)
from tests.support.postgres import FreshDatabase
from tests.support.registry_proc import RegistryProcess


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    """One registry per backend for the module (each test works in a domain of its own)."""
    database = None
    if request.param == "postgres":
        database = FreshDatabase(request.getfixturevalue("postgres_admin_url"))
    try:
        with RegistryProcess(
            tmp_path_factory.mktemp("registry"), database_url=database.url if database else None
        ) as proc:
            yield proc
    finally:
        if database is not None:
            database.drop()


@pytest.fixture
def client(shared_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_registry.url, timeout=30) as c:
        yield c


# --- bad bytes, made as a stranger would ----------------------------------------------


def _npz(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _huge_header() -> bytes:
    """An archive whose one member's header declares a 4 GB float32 array, then 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)}
    )
    return _npz({"w0.npy": header.getvalue() + bytes(16)})


def _compressed() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{f"w{i}": w for i, w in enumerate(mlp_weights())})
    return buffer.getvalue()


def _pickled() -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|O", "fortran_order": False, "shape": (1,)}
    )
    return _npz({"w0.npy": header.getvalue() + pickle.dumps([{"evil": 1}])})


def _big_endian() -> bytes:
    """The domain's model, right shapes and values, stored as big-endian float32."""
    members = {}
    for i, w in enumerate(mlp_weights()):
        data = io.BytesIO()
        np.lib.format.write_array(data, w.astype(">f4"))
        members[f"w{i}.npy"] = data.getvalue()
    return _npz(members)


BAD_UPLOADS: dict[str, tuple[Callable[[], bytes], str]] = {
    "big_endian": (_big_endian, "is big-endian"),
    "garbage": (lambda: b"not a model" * 10, "Not a weights blob"),
    "nan": (lambda: weights_to_bytes(mlp_weights(float("nan"))), "NaN or infinite"),
    "infinity": (lambda: weights_to_bytes(mlp_weights(float("inf"))), "NaN or infinite"),
    "another_architecture": (
        lambda: weights_to_bytes(mlp_weights(shapes=((8, 64), (8,), (10, 8), (10,)))),
        "its tensor 0 is net.1.weight [16, 64] float32, yours is w0 [8, 64] float32",
    ),
    "another_dtype": (
        lambda: weights_to_bytes([w.astype(np.float16) for w in mlp_weights()]),
        "yours is w0 [16, 64] float16",
    ),
    "compressed": (_compressed, "compressed"),
    "huge_header": (_huge_header, "yours has 1: (w0 [1000000000] float32)"),
    "pickled_object_array": (_pickled, "Python objects (pickle)"),
}


def _events(client: httpx.Client, type_: str, group_id: int) -> list[dict[str, Any]]:
    page = client.get("/events", params={"type": type_, "group_id": group_id, "limit": 1000})
    data: list[dict[str, Any]] = page.json()["data"]
    return data


def _stored_files(registry: RegistryProcess, group_id: int) -> list[Path]:
    models = registry.data_dir / "models"
    return [*models.joinpath(str(group_id)).glob("*"), *models.joinpath("incoming").glob("*")]


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_a_bad_snapshot_is_422_with_its_reason_stored_nowhere_and_recorded(
    shared_registry: RegistryProcess, client: httpx.Client, kind: str
) -> None:
    # Prepare: a group of a domain whose model is the small MLP
    make, reason = BAD_UPLOADS[kind]
    domain = unique("d")
    node, h = register(client, domain=domain)
    gid = create_group(client, h, domain=domain, signature=mlp_signature())

    # Execute
    r = client.put(f"/groups/{gid}/model", params={"round": 7}, headers=h, content=make())

    # Assert: the uploader reads why; nobody can download it; the refusal is on record
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"]
    assert client.get(f"/groups/{gid}/model").status_code == 404
    assert client.get(f"/groups/{gid}").json()["model_round"] is None
    assert _stored_files(shared_registry, gid) == []
    [event] = _events(client, "snapshot_rejected", gid)
    assert event["node_id"] == node
    assert event["data"]["round"] == 7
    assert event["data"]["reason"] == r.json()["detail"]


def test_a_good_snapshot_of_the_domains_model_is_stored_as_before(client: httpx.Client) -> None:
    # Prepare
    domain = unique("d")
    node, h = register(client, domain=domain)
    gid = create_group(client, h, domain=domain, signature=mlp_signature())
    blob = mlp_snapshot(0.25)

    # Execute
    up = client.put(f"/groups/{gid}/model", params={"round": 1}, headers=h, content=blob)
    down = client.get(f"/groups/{gid}/model")

    # Assert
    assert up.status_code == 200, up.text
    assert up.json()["uploaded_by"] == node and up.json()["size"] == len(blob)
    assert down.content == blob
    assert [e["data"]["round"] for e in _events(client, "model_uploaded", gid)] == [1]
    assert _events(client, "snapshot_rejected", gid) == []


def test_a_bigger_model_than_the_domains_is_413_naming_the_domains_model(
    client: httpx.Client,
) -> None:
    # Prepare: the domain's model is the small MLP; a wider one is twice its size
    domain = unique("d")
    _, h = register(client, domain=domain)
    gid = create_group(client, h, domain=domain, signature=mlp_signature())
    bound = client.get(f"/domains/{domain}/model-signature").json()["max_bytes"]
    wider = weights_to_bytes(mlp_weights(shapes=((32, 64), (32,), (10, 32), (10,))))

    # Execute
    r = client.put(f"/groups/{gid}/model", params={"round": 1}, headers=h, content=wider)

    # Assert
    assert len(wider) > bound
    assert r.status_code == 413
    assert r.json()["detail"] == (
        f"model exceeds the limit of {bound} bytes: domain '{domain}' uses a model of 4 "
        "tensors (net.1.weight [16, 64] float32, net.1.bias [16] float32, "
        "net.3.weight [10, 16] float32, ...)"
    )
    assert client.get(f"/groups/{gid}/model").status_code == 404
    [event] = _events(client, "snapshot_rejected", gid)
    assert event["data"]["reason"] == r.json()["detail"]


def test_the_first_good_snapshot_sets_an_undeclared_domains_model(client: httpx.Client) -> None:
    # Prepare: a domain nobody declared a model for, two groups in it
    domain = unique("d")
    a, ha = register(client, domain=domain)
    _, hb = register(client, domain=domain)
    ga = create_group(client, ha, domain=domain)
    gb = create_group(client, hb, domain=domain)
    before = client.get(f"/domains/{domain}/model-signature")

    # Execute: bad first uploads teach nothing; the first good one sets the model
    nan = client.put(
        f"/groups/{ga}/model",
        params={"round": 1},
        headers=ha,
        content=weights_to_bytes(mlp_weights(float("nan"))),
    )
    huge = client.put(
        f"/groups/{ga}/model", params={"round": 1}, headers=ha, content=_huge_header()
    )
    empty = client.put(
        f"/groups/{ga}/model",
        params={"round": 1},
        headers=ha,
        content=weights_to_bytes([np.zeros((0,), np.float32)]),
    )
    after_bad = client.get(f"/domains/{domain}/model-signature")
    good = client.put(
        f"/groups/{ga}/model", params={"round": 1}, headers=ha, content=mlp_snapshot()
    )
    learned = client.get(f"/domains/{domain}/model-signature")
    other = client.put(
        f"/groups/{gb}/model",
        params={"round": 1},
        headers=hb,
        content=weights_to_bytes(mlp_weights(shapes=((8, 64), (8,)))),
    )

    # Assert
    assert before.status_code == 404 and "no model signature" in before.json()["detail"]
    assert nan.status_code == 422 and huge.status_code == 422
    assert "too large" in huge.json()["detail"]
    assert empty.status_code == 422 and "no values" in empty.json()["detail"]
    assert after_bad.status_code == 404
    assert good.status_code == 200, good.text
    body = learned.json()
    assert learned.status_code == 200
    assert body["source"] == "first_upload" and body["declared_by"] == a
    assert body["signature"]["tensors"] == [
        {"name": f"w{i}", "shape": list(shape), "dtype": "float32"}
        for i, shape in enumerate(MLP_SHAPES)
    ]
    assert other.status_code == 422
    assert other.json()["detail"].startswith(
        f"domain '{domain}' uses a model of 4 tensors (w0 [16, 64] float32, w1 [16] float32, "
        "w2 [10, 16] float32, ...); yours has 2: (w0 [8, 64] float32, w1 [8] float32)"
    )


def test_a_declaration_of_another_model_is_refused_at_the_door(client: httpx.Client) -> None:
    # Prepare: the domain's first group declares the small MLP
    domain = unique("d")
    first, h = register(client, domain=domain)
    gid = create_group(client, h, domain=domain, signature=mlp_signature())
    bigger = mlp_signature()
    bigger["tensors"] = [{**t, "name": f"layer.{i}"} for i, t in enumerate(bigger["tensors"] * 2)]
    wider = mlp_signature()
    wider["tensors"][2]["shape"] = [10, 32]
    newcomer = unique()

    # Execute
    register_bigger = client.post(
        "/nodes/register",
        json={"node_id": newcomer, "address": "x:1", "domain": domain, "model_signature": bigger},
    )
    create_wider = client.post(
        "/groups",
        headers=h,
        json={"name": unique("g"), "domain": domain, "model_signature": wider},
    )
    register_same = client.post(
        "/nodes/register",
        json={
            "node_id": newcomer,
            "address": "x:1",
            "domain": domain,
            "model_signature": mlp_signature(),
        },
    )
    known = client.get(f"/domains/{domain}/model-signature")

    # Assert: each refusal names the first difference; nothing refused was created
    assert register_bigger.status_code == 409
    assert register_bigger.json()["detail"] == (
        f"domain '{domain}' uses a model of 4 tensors (net.1.weight [16, 64] float32, "
        "net.1.bias [16] float32, net.3.weight [10, 16] float32, ...); yours has 8: "
        "(layer.0 [16, 64] float32, layer.1 [16] float32, layer.2 [10, 16] float32, ...)"
    )
    assert create_wider.status_code == 409
    assert create_wider.json()["detail"].endswith(
        "its tensor 2 is net.3.weight [10, 16] float32, yours is net.3.weight [10, 32] float32"
    )
    assert [g["id"] for g in client.get("/groups", params={"domain": domain}).json()["data"]] == [
        gid
    ]
    assert register_same.status_code == 201
    assert known.status_code == 200
    body = known.json()
    assert body["domain"] == domain and body["source"] == "declared"
    assert body["declared_by"] == first
    assert [t["name"] for t in body["signature"]["tensors"]] == list(MLP_NAMES)
    assert body["max_bytes"] >= len(mlp_snapshot())


def test_a_declaration_that_is_no_model_is_422(client: httpx.Client) -> None:
    # Prepare
    domain = unique("d")
    _, h = register(client, domain=domain)
    odd_dtype = mlp_signature()
    odd_dtype["tensors"][0]["dtype"] = "float128"
    too_big = {"tensors": [{"name": "w0", "shape": [2**31 - 1, 2**31 - 1], "dtype": "float32"}]}

    # Execute
    answers = [
        client.post(
            "/groups", headers=h, json={"name": unique("g"), "domain": domain, "model_signature": s}
        )
        for s in (odd_dtype, too_big)
    ]

    # Assert
    assert [a.status_code for a in answers] == [422, 422]
    assert "float128" in answers[0].json()["detail"]
    assert "does not fit this registry's limit" in answers[1].json()["detail"]
    assert client.get(f"/domains/{domain}/model-signature").status_code == 404


def test_only_the_live_host_stores_a_hosted_groups_snapshots(client: httpx.Client) -> None:
    # Prepare: a group of two whose first member claimed the hosting
    domain = unique("d")
    _, host = register(client, domain=domain)
    _, member = register(client, domain=domain)
    gid = create_group(client, host, domain=domain, signature=mlp_signature())
    assert client.post("/groups/join", headers=member, json={"group_id": gid}).status_code == 200
    claim = client.post(f"/groups/{gid}/host", headers=host, json={"address": "127.0.0.1:9"})
    assert claim.status_code == 200, claim.text

    # Execute: the member tries to replace the host's model with its own
    by_member = client.put(
        f"/groups/{gid}/model", params={"round": 1}, headers=member, content=mlp_snapshot(9.0)
    )
    by_host = client.put(
        f"/groups/{gid}/model", params={"round": 1}, headers=host, content=mlp_snapshot()
    )

    # Assert
    assert by_member.status_code == 403
    assert "only the host of group" in by_member.json()["detail"]
    assert by_host.status_code == 200


def test_a_round_far_past_the_groups_is_refused_everywhere(client: httpx.Client) -> None:
    # Prepare: a group at round 1 (the registry allows 100 rounds ahead by default)
    domain = unique("d")
    _, h = register(client, domain=domain)
    gid = create_group(client, h, domain=domain, signature=mlp_signature())
    first = client.put(
        f"/groups/{gid}/model", params={"round": 1}, headers=h, content=mlp_snapshot()
    )
    assert first.status_code == 200

    # Execute: a snapshot, a performance report and an evaluation at the end of the range
    end = 2**31 - 1
    snapshot = client.put(
        f"/groups/{gid}/model", params={"round": end}, headers=h, content=mlp_snapshot(0.3)
    )
    performance = client.put(
        f"/groups/{gid}/performance", headers=h, json={"value": 0.5, "round": end}
    )
    evaluation = client.put(
        f"/groups/{gid}/rounds/{end}/evaluations",
        headers=h,
        json={"num_examples": 10, "losses": {"new": 1.0}},
    )
    near = client.put(
        f"/groups/{gid}/model", params={"round": 101}, headers=h, content=mlp_snapshot(0.3)
    )

    # Assert: each refused with the reason; the group is still at round 1 and goes on
    for refused in (snapshot, performance, evaluation):
        assert refused.status_code == 409, refused.text
        assert "rounds ahead" in refused.json()["detail"]
    assert near.status_code == 200
    assert client.get(f"/groups/{gid}").json()["model_round"] == 101

"""The API's description at /openapi.json (what /docs and generated clients read)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.registry.helpers import register
from tests.support.registry_proc import RegistryProcess

HEARTBEAT = "/nodes/{node_id}/heartbeat"


@pytest.fixture
def client(sqlite_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as c:
        yield c


def _refs(node: Any) -> Iterator[str]:
    """Every `$ref` anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    """The object a local `#/…` reference points to."""
    target: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    assert isinstance(target, dict), ref
    return target


def test_the_heartbeat_is_documented_with_its_body_token_and_answers(
    client: httpx.Client,
) -> None:
    # Execute
    doc = client.get("/openapi.json").json()

    # Assert: a POST under "nodes", after register, as /docs lists it
    nodes_paths = [p for p in doc["paths"] if p.startswith("/nodes")]
    assert nodes_paths[:2] == ["/nodes/register", HEARTBEAT]
    assert list(doc["paths"][HEARTBEAT]) == ["post"]
    op = doc["paths"][HEARTBEAT]["post"]
    assert op["tags"] == ["nodes"]
    assert op["description"]
    assert [(p["name"], p["in"], p["required"]) for p in op["parameters"]] == [
        ("node_id", "path", True)
    ]
    # the body is an optional Heartbeat carrying the metrics
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["anyOf"] == [{"$ref": "#/components/schemas/Heartbeat"}, {"type": "null"}]
    assert "metrics" in _resolve(doc, "#/components/schemas/Heartbeat")["properties"]
    # the node's bearer token, under a scheme that exists
    [requirement] = op["security"]
    [scheme] = requirement
    assert doc["components"]["securitySchemes"][scheme]["scheme"] == "bearer"
    # the answers: the node, or 401 / 403 / 422 with the validation-error shape, or 429
    responses = op["responses"]
    assert set(responses) == {"200", "401", "403", "422", "429"}
    assert "Retry-After" in responses["429"]["headers"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NodePublic"
    }
    assert responses["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HTTPValidationError"
    }
    # and every reference in the whole document resolves (else /docs shows errors)
    for ref in set(_refs(doc)):
        _resolve(doc, ref)


def test_the_heartbeat_answers_as_documented(client: httpx.Client) -> None:
    # Prepare
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    node, headers = register(client)
    url = HEARTBEAT.format(node_id=node)

    # Execute
    ok = client.post(url, headers=headers, json={"metrics": {"accuracy": 0.5}})
    empty = client.post(url, headers=headers)
    no_token = client.post(url, json={"metrics": {}})
    invalid = client.post(url, headers=headers, json={"metrics": {"Bad Name": 1.0}})

    # Assert: each status is a documented one, with the documented body
    documented = doc["paths"][HEARTBEAT]["post"]["responses"]
    assert [r.status_code for r in (ok, empty, no_token, invalid)] == [200, 200, 401, 422]
    assert {str(r.status_code) for r in (ok, empty, no_token, invalid)} <= set(documented)
    assert set(schemas["NodePublic"]["required"]) <= set(ok.json())
    detail = invalid.json()["detail"]
    assert detail
    for item in detail:
        assert set(schemas["ValidationError"]["required"]) <= set(item)

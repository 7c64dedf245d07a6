"""Small HTTP helpers for registry tests (raw httpx, to see real status codes)."""

from __future__ import annotations

import uuid

import httpx


def unique(prefix: str = "n") -> str:
    """A node id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(
    client: httpx.Client, node_id: str | None = None, domain: str = "digits"
) -> tuple[str, dict[str, str]]:
    """Register a node; returns (node_id, auth headers)."""
    node_id = node_id or unique()
    r = client.post(
        "/nodes/register",
        json={"node_id": node_id, "address": f"127.0.0.1:{len(node_id)}", "domain": domain},
    )
    assert r.status_code == 201, r.text
    return node_id, {"Authorization": f"Bearer {r.json()['token']}"}


def create_group(
    client: httpx.Client,
    headers: dict[str, str],
    *,
    name: str | None = None,
    domain: str = "digits",
    capacity: int = 5,
    join: bool = True,
) -> int:
    """Create a group (joining it by default); returns its id."""
    r = client.post(
        "/groups",
        headers=headers,
        json={
            "name": name or unique("g"),
            "domain": domain,
            "max_capacity": capacity,
            "join": join,
        },
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])

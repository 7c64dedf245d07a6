"""Small HTTP helpers for registry tests (raw httpx, to see real status codes)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import numpy as np

from registry.wire import ModelSignature, weights_to_bytes


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
    signature: dict[str, Any] | None = None,
) -> int:
    """Create a group (joining it by default, declaring `signature` if given); its id."""
    body: dict[str, Any] = {
        "name": name or unique("g"),
        "domain": domain,
        "max_capacity": capacity,
        "join": join,
    }
    if signature is not None:
        body["model_signature"] = signature
    r = client.post("/groups", headers=headers, json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


# --- model snapshots -------------------------------------------------------------------

# A small digits MLP, by state_dict key: what a node declares and uploads.
MLP_NAMES = ("net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias")
MLP_SHAPES = ((16, 64), (16,), (10, 16), (10,))


def mlp_weights(
    fill: float = 0.5, shapes: tuple[tuple[int, ...], ...] = MLP_SHAPES
) -> list[np.ndarray]:
    """float32 arrays of `shapes` (the small MLP's by default), every value `fill`."""
    return [np.full(shape, fill, dtype=np.float32) for shape in shapes]


def mlp_snapshot(fill: float = 0.5) -> bytes:
    """A valid snapshot of the small MLP."""
    return weights_to_bytes(mlp_weights(fill))


def mlp_signature() -> dict[str, Any]:
    """The small MLP's signature in its JSON form, with its state_dict keys."""
    return ModelSignature.of(mlp_weights(), MLP_NAMES).to_json()

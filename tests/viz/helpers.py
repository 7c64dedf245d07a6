"""Drives a real registry over HTTP like a small network would: nodes, groups, rounds."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

SMALL = (480, 270)  # frame size for tests: legible enough, fast to draw


@dataclass
class Network:
    """A handful of simulated nodes talking to one registry."""

    client: httpx.Client
    prefix: str
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    def register(self, name: str) -> str:
        """Register node `prefix-name`; returns its id."""
        node_id = f"{self.prefix}-{name}"
        r = self.client.post(
            "/nodes/register",
            json={"node_id": node_id, "address": "127.0.0.1:1", "domain": "digits"},
        )
        assert r.status_code == 201, r.text
        self.tokens[node_id] = {"Authorization": f"Bearer {r.json()['token']}"}
        return node_id

    def create_group(self, node_id: str, name: str, capacity: int = 5) -> int:
        """`node_id` creates a group and joins it; returns the group id."""
        r = self.client.post(
            "/groups",
            headers=self.tokens[node_id],
            json={"name": name, "domain": "digits", "max_capacity": capacity, "join": True},
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def join(self, node_id: str, group_id: int) -> dict[str, object]:
        """Join (or migrate to) a group."""
        r = self.client.post(
            "/groups/join", headers=self.tokens[node_id], json={"group_id": group_id}
        )
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    def report(self, node_id: str, group_id: int, round_: int, accuracy: float) -> None:
        """A member reports the group's accuracy for a round, and beats with its own."""
        r = self.client.put(
            f"/groups/{group_id}/performance",
            headers=self.tokens[node_id],
            json={"value": accuracy, "round": round_, "num_examples": 10},
        )
        assert r.status_code == 200, r.text
        self.heartbeat(node_id, accuracy)

    def heartbeat(self, node_id: str, accuracy: float) -> None:
        """A heartbeat carrying the node's own accuracy."""
        r = self.client.post(
            f"/nodes/{node_id}/heartbeat",
            headers=self.tokens[node_id],
            json={"metrics": {"accuracy": accuracy}},
        )
        assert r.status_code == 200, r.text

    def report_siblings(
        self, node_id: str, group_id: int, round_: int, siblings: dict[int, float]
    ) -> None:
        """A member of `group_id` records its sibling groups: {sibling id: fit}."""
        r = self.client.put(
            f"/groups/{group_id}/siblings",
            headers=self.tokens[node_id],
            json={
                "round": round_,
                "siblings": [
                    {"group_id": s, "fit": fit, "own_fit": 0.8, "examples": 20}
                    for s, fit in siblings.items()
                ],
            },
        )
        assert r.status_code == 200, r.text

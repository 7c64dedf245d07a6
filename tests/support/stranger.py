"""A stranger in the network: a node that publishes a harmful snapshot as the best group."""

from __future__ import annotations

import threading

import httpx
import numpy as np

from node.learning.models import build_model
from node.learning.weights import weights_to_bytes

__all__ = ["Stranger"]


def harmful_snapshot(dataset: str = "digits") -> bytes:
    """A snapshot the registry must accept (the domain's shapes and dtypes, every value
    finite) whose loss on anyone's data overflows: 1e30 in every weight."""
    model = build_model(dataset, seed=0)
    return weights_to_bytes(
        [np.full(tuple(t.shape), 1e30, dtype=np.float32) for t in model.state_dict().values()]
    )


class Stranger:
    """A node that creates a group, uploads a harmful snapshot (``harmful_snapshot``: the
    registry cannot tell it from a model, nodes must) and reports it as the best group of
    its domain, so every newcomer scores that snapshot first. While in its ``with`` block
    it heartbeats (in a thread), so the registry keeps its group alive.
    """

    def __init__(self, url: str, domain: str = "digits", node_id: str = "stranger") -> None:
        self.url, self.domain, self.node_id = url, domain, node_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        with httpx.Client(base_url=url, timeout=10) as c:
            reg = c.post(
                "/nodes/register",
                json={"node_id": node_id, "address": "10.0.0.9:1", "domain": domain},
            )
            reg.raise_for_status()
            self._auth = {"Authorization": f"Bearer {reg.json()['token']}"}
            body = {"name": f"{node_id}-best", "domain": domain, "max_capacity": 5, "join": True}
            self.group_id = int(c.post("/groups", json=body, headers=self._auth).json()["id"])
            stored = c.put(
                f"/groups/{self.group_id}/model",
                params={"round": 1},
                content=harmful_snapshot(),
                headers=self._auth,
            )
            stored.raise_for_status()
            perf = {"metric": "accuracy", "value": 0.99, "round": 1, "num_examples": 100}
            c.put(
                f"/groups/{self.group_id}/performance", json=perf, headers=self._auth
            ).raise_for_status()

    def _beat(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self._stop.wait(0.5):
                c.post(f"/nodes/{self.node_id}/heartbeat", json={"metrics": {}}, headers=self._auth)

    def __enter__(self) -> Stranger:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

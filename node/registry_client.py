"""Typed HTTP client for the registry, with the node's token, timeouts and retries.

Its errors are the ``RegistryClientError`` branch of ``node.errors`` (re-exported here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from node.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RegistryClientError,
    RegistryRequestError,
    RegistryUnavailableError,
    UnauthorizedError,
)
from registry.schemas import (
    Balance,
    EventsPublic,
    GroupDetail,
    GroupHost,
    GroupPublic,
    GroupsPublic,
    MembershipPublic,
    ModelInfo,
    NodePublic,
    NodeRegistered,
    NodesPublic,
    RoundRewards,
)

__all__ = [
    "ConflictError",
    "ForbiddenError",
    "ModelBlob",
    "NotFoundError",
    "RegistryClient",
    "RegistryClientError",
    "RegistryRequestError",
    "RegistryUnavailableError",
    "UnauthorizedError",
]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})


_BY_STATUS: dict[int, type[RegistryRequestError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
}


@dataclass(frozen=True)
class ModelBlob:
    """A downloaded model snapshot."""

    data: bytes
    round: int
    sha256: str


class RegistryClient:
    """One node's view of the registry. Pass `client` to use your own httpx transport."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        node_id: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.node_id = node_id
        self.retries = retries
        self.backoff = backoff
        self._own_client = client is None
        self._http = client or httpx.Client(base_url=self.base_url, timeout=timeout)

    # --- plumbing ------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool (if this client created it)."""
        if self._own_client:
            self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                resp = self._http.request(
                    method,
                    path,
                    json=json,
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    content=content,
                    headers=self._headers(),
                )
            except httpx.TransportError as exc:
                failure: str = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code in ok:
                    return resp
                if resp.status_code not in RETRY_STATUSES:
                    try:
                        detail = resp.json().get("detail", resp.text)
                    except ValueError:
                        detail = resp.text
                    cls = _BY_STATUS.get(resp.status_code, RegistryRequestError)
                    raise cls(resp.status_code, detail, method, path)
                failure = f"HTTP {resp.status_code}"
            if attempt >= self.retries:
                raise RegistryUnavailableError(
                    f"{method} {self.base_url}{path} failed after {attempt + 1} tries: {failure}"
                )
            delay = self.backoff * (2**attempt)
            log.debug("%s %s: %s; retrying in %.2fs", method, path, failure, delay)
            time.sleep(delay)
            attempt += 1

    # --- nodes ---------------------------------------------------------------------

    def register(
        self,
        node_id: str,
        address: str,
        domain: str,
        capabilities: Mapping[str, Any] | None = None,
    ) -> NodeRegistered:
        """Register (keeps the returned token) or, with a token, update the registration."""
        body = {
            "node_id": node_id,
            "address": address,
            "domain": domain,
            "capabilities": dict(capabilities or {}),
        }
        out = NodeRegistered.model_validate(
            self._request("POST", "/nodes/register", json=body).json()
        )
        self.node_id = node_id
        if out.token:
            self.token = out.token
        return out

    def heartbeat(self, metrics: Mapping[str, float] | None = None) -> NodePublic:
        """Tell the registry this node is alive, with its latest metrics."""
        path = f"/nodes/{self._me()}/heartbeat"
        resp = self._request("POST", path, json={"metrics": dict(metrics or {})})
        return NodePublic.model_validate(resp.json())

    def get_node(self, node_id: str | None = None) -> NodePublic:
        """One node (default: this one)."""
        resp = self._request("GET", f"/nodes/{node_id or self._me()}")
        return NodePublic.model_validate(resp.json())

    def list_nodes(
        self, *, domain: str | None = None, group_id: int | None = None, limit: int = 1000
    ) -> NodesPublic:
        """Nodes, optionally of one domain or group."""
        params = {"domain": domain, "group_id": group_id, "limit": limit}
        return NodesPublic.model_validate(self._request("GET", "/nodes", params=params).json())

    # --- groups --------------------------------------------------------------------

    def list_groups(self, *, domain: str | None = None, limit: int = 1000) -> list[GroupPublic]:
        """Live groups (of one domain), every page."""
        out: list[GroupPublic] = []
        offset = 0
        while True:
            params = {"domain": domain, "offset": offset, "limit": limit}
            page = GroupsPublic.model_validate(
                self._request("GET", "/groups", params=params).json()
            )
            out.extend(page.data)
            offset += len(page.data)
            if not page.data or offset >= page.count:
                return out

    def get_group(self, group_id: int) -> GroupDetail:
        """One group with its members."""
        return GroupDetail.model_validate(self._request("GET", f"/groups/{group_id}").json())

    def create_group(
        self,
        name: str,
        domain: str,
        *,
        max_capacity: int = 5,
        description: str | None = None,
        join: bool = True,
    ) -> GroupPublic:
        """Create a group (joining it by default)."""
        body = {
            "name": name,
            "domain": domain,
            "max_capacity": max_capacity,
            "description": description,
            "join": join,
        }
        return GroupPublic.model_validate(self._request("POST", "/groups", json=body).json())

    def join(self, group_id: int) -> MembershipPublic:
        """Join (or migrate to) a group; ConflictError when it is full."""
        resp = self._request("POST", "/groups/join", json={"group_id": group_id})
        return MembershipPublic.model_validate(resp.json())

    def leave(self) -> int:
        """Leave the current group; returns its id."""
        return int(self._request("POST", "/groups/leave", json={}).json()["group_id"])

    def report_performance(
        self,
        group_id: int,
        *,
        value: float,
        round: int,
        num_examples: int = 1,
        metric: str = "accuracy",
    ) -> GroupPublic:
        """Report one figure for a round; returns the group with its recomputed performance."""
        body = {"metric": metric, "value": value, "round": round, "num_examples": num_examples}
        resp = self._request("PUT", f"/groups/{group_id}/performance", json=body)
        return GroupPublic.model_validate(resp.json())

    def claim_host(self, group_id: int, address: str) -> GroupHost:
        """Try to host the group's aggregation; `claimed` says whether it was granted."""
        resp = self._request("POST", f"/groups/{group_id}/host", json={"address": address})
        return GroupHost.model_validate(resp.json())

    # --- models --------------------------------------------------------------------

    def upload_model(self, group_id: int, round: int, data: bytes) -> ModelInfo:
        """Upload the group's model snapshot for a round (members only)."""
        resp = self._request(
            "PUT", f"/groups/{group_id}/model", params={"round": round}, content=data
        )
        return ModelInfo.model_validate(resp.json())

    def model_info(self, group_id: int) -> ModelInfo | None:
        """Round, hash and size of the group's latest snapshot, without its bytes."""
        try:
            resp = self._request("GET", f"/groups/{group_id}/model/info")
        except NotFoundError:
            return None
        return ModelInfo.model_validate(resp.json())

    def download_model(self, group_id: int, round: int | None = None) -> ModelBlob | None:
        """The group's latest snapshot (or a given round's); None when it has none."""
        try:
            resp = self._request("GET", f"/groups/{group_id}/model", params={"round": round})
        except NotFoundError:
            return None
        return ModelBlob(
            data=resp.content,
            round=int(resp.headers["x-model-round"]),
            sha256=resp.headers["x-model-sha256"],
        )

    # --- ledger --------------------------------------------------------------------

    def submit_contributions(
        self,
        group_id: int,
        round: int,
        contributions: Mapping[str, float],
        *,
        num_examples: Mapping[str, int] | None = None,
        method: str = "leave_one_out",
    ) -> RoundRewards:
        """Submit every member's contribution to a round (the group's host); the registry
        pays the rewards once per node and round, and a retry returns the same entries."""
        body = {
            "method": method,
            "contributions": [
                {
                    "node_id": node_id,
                    "contribution": value,
                    **({"num_examples": num_examples[node_id]} if num_examples else {}),
                }
                for node_id, value in contributions.items()
            ],
        }
        resp = self._request("POST", f"/groups/{group_id}/rounds/{round}/contributions", json=body)
        return RoundRewards.model_validate(resp.json())

    def balance(self, node_id: str | None = None) -> Balance:
        """A node's token balance (default: this node's)."""
        resp = self._request("GET", f"/nodes/{node_id or self._me()}/balance")
        return Balance.model_validate(resp.json())

    # --- events --------------------------------------------------------------------

    def events(self, *, after_id: int = 0, limit: int = 1000, **filters: Any) -> EventsPublic:
        """Events after an id, oldest first."""
        params = {"after_id": after_id, "limit": limit, **filters}
        return EventsPublic.model_validate(self._request("GET", "/events", params=params).json())

    def healthy(self) -> bool:
        """True when the registry answers /healthz with 200 (no retries)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def _me(self) -> str:
        if not self.node_id:
            raise RegistryClientError("this client has no node id: call register() first")
        return self.node_id

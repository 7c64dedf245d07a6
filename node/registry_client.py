"""Typed HTTP client for the registry, with the node's token, timeouts and retries.

Its errors are the ``RegistryClientError`` branch of ``node.errors`` (re-exported here).

Retry policy
------------
Every call states whether it is *idempotent* (``idempotent=`` of ``_request``): whether
sending it twice leaves the registry as sending it once would.

==========  =========================================  ================================
idempotent  calls                                      why
==========  =========================================  ================================
yes         every GET: get_node, list_nodes,           reads
            all_nodes, list_groups, get_group,
            model_info, download_model,
            domain_signature, balance, events,
            all_events
yes         PUT upload_model                           the same bytes are a no-op
yes         PUT report_performance                     reports are keyed by round
yes         PUT report_evaluation                      the same figures again return the stored ones
yes         POST heartbeat                             sets liveness and metrics
yes         POST claim_host (``/groups/{id}/host``)    the holder is granted it again
yes         POST round_ticket, round_key               each mints a credential, changes nothing
yes         POST submit_contributions                  ledger keyed on node, group, round
yes         PUT report_siblings                        replaces the group's whole link set
yes         GET siblings, links                        reads
yes         POST register with a token (stored or      the same node and secret again is
            client-chosen, see below)                  an update (200, created false)
no          POST register without a token,             a repeat is refused (401, 409) or
            create_group, join, leave,                 hides the move the first one made
            merge_group, split_group
==========  =========================================  ================================

What is retried, and by what:

- The connection could not be made (``ConnectError``, ``ConnectTimeout``): every call, since
  the request never reached the registry. httpx's transport does it
  (``httpx.HTTPTransport(retries=retries)``, waiting 0, 0.5, 1, 2 ... s) on the client this
  class builds; an ``httpx.Client`` passed in is used as given, with its own transport.
- 429 and 503: every call. This registry answers 429 when a write is over its token's or
  address's rate limit, and 503 only when its database was busy; in both cases nothing was
  applied, and it sets ``Retry-After``, which is honoured up to ``MAX_RETRY_AFTER_S``.
- 502, 504, a timeout or a connection lost after the request was sent: idempotent calls
  only, because the registry (or a proxy before it) may have applied a POST.
- ``follow_events`` (the live stream) is never retried here: its caller reconnects,
  resuming after the last event it got.
- Anything else (4xx, 500): never; it raises the ``RegistryRequestError`` of its status:
  ``ConflictError`` for 409 (e.g. a ``model_signature`` that is not the domain's), the base
  ``RegistryRequestError`` with ``status`` 422 for a refused snapshot (``detail`` says why).

Credentials
-----------
Given a ``CredentialStore`` (``credentials=``), ``register`` uses the node's stored token
for that registry URL and node id or, when there is none, generates a secret, stores it
(0600) and only then sends it as the bearer token of the first register. A node restarted
with the same data directory, or a register whose answer was lost, is recognised.

Revalidated reads
-----------------
``list_groups``, ``get_group``, ``list_nodes`` and ``all_nodes`` keep, per URL and query,
the last answer's ``ETag`` and the decoded answer, and send ``If-None-Match``; on ``304 Not
Modified`` they return the decoded answer they kept (the same object: treat it as
read-only) without reading or parsing a body. At most ``MAX_REVALIDATED`` URLs are kept.
``download_model(..., known=blob)`` does the same for a snapshot: the caller holds it, the
client sends its SHA-256 as the ``ETag`` and gets ``blob`` back while it is current.

tenacity drives the retries: up to ``retries`` more tries, waiting ``backoff * 2**n`` s
(n = 0, 1, ...; at most ``MAX_BACKOFF_S``, at least ``Retry-After``). When a call gives up it
raises ``RegistryUnavailableError`` naming the method, the URL, the tries and the last failure.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import ssl
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import httpx_sse
import pydantic
import tenacity
from pydantic import BaseModel

from node.addresses import check_url
from node.credentials import CredentialStore
from node.errors import (
    ConfigError,
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
    DomainSignaturePublic,
    EventPublic,
    EventsPublic,
    GroupDetail,
    GroupHost,
    GroupLinkPublic,
    GroupLinksPublic,
    GroupMoved,
    GroupPublic,
    GroupsPublic,
    MembershipPublic,
    ModelInfo,
    NodePublic,
    NodeRegistered,
    NodesPublic,
    RoundEvaluationPublic,
    RoundEvaluationsPublic,
    RoundKey,
    RoundRewards,
    RoundTicket,
)
from registry.wire import ModelSignature

__all__ = [
    "ConflictError",
    "EventPublic",
    "ForbiddenError",
    "GroupLink",
    "GroupMoved",
    "ModelBlob",
    "NotFoundError",
    "RegistryClient",
    "RegistryClientError",
    "RegistryRequestError",
    "RegistryUnavailableError",
    "SiblingFit",
    "UnauthorizedError",
    "tls_context",
]

log = logging.getLogger(__name__)

# Statuses that mean "the registry (or a proxy before it) could not serve this now".
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# The registry's "rate limited" and "database busy": nothing applied, safe to repeat for
# every call.
NOTHING_APPLIED = frozenset({429, 503})
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 10.0
MAX_REVALIDATED = 256  # URLs whose last answer and ETag a client keeps
_M = TypeVar("_M", bound=BaseModel)
PAGE = 1000  # the registry's largest page
# The registry pings a stream every 15 s: this long without a byte means the link is dead.
STREAM_READ_TIMEOUT_S = 45.0

_BY_STATUS: dict[int, type[RegistryRequestError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
}
_NOT_CONNECTED = (httpx.ConnectError, httpx.ConnectTimeout)


def tls_context(ca_cert: Path | str | None) -> ssl.SSLContext | bool:
    """What httpx should verify a registry's certificate with: the system's trust store
    (``True``) or, given ``ca_cert`` (a PEM file of CA certificates), that file only.

    Raises ``ConfigError`` naming the file when it cannot be read or holds no certificate.
    """
    if ca_cert is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ca-cert {ca_cert}: not a readable PEM certificate ({exc})") from exc


def _tls_failure(exc: httpx.RequestError) -> ssl.SSLError | None:
    """The TLS error behind a failed connection, if it was one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class ModelBlob:
    """A downloaded model snapshot."""

    data: bytes
    round: int
    sha256: str


# A directed sibling link as the registry stores it (``registry.schemas.GroupLinkPublic``).
GroupLink = GroupLinkPublic


@dataclass(frozen=True)
class SiblingFit:
    """How a group's members' validation data scored a sibling group's model.

    ``fit`` and ``own_fit`` are accuracies in [0, 1] (the sibling's model and the group's
    own, on the same examples), ``loss`` the sibling's model's mean loss there (>= 0, or
    None), ``examples`` how many validation examples the scores rest on (>= 1).
    """

    group_id: int
    fit: float
    own_fit: float
    loss: float | None
    examples: int


class _Failed(Exception):
    """One try that found the registry unavailable; `retry` says whether another may follow."""

    def __init__(
        self,
        failure: str,
        *,
        retry: bool,
        retry_after_s: float | None = None,
        connect: bool = False,
    ) -> None:
        super().__init__(failure)
        self.failure = failure
        self.retry = retry
        self.retry_after_s = retry_after_s
        self.connect = connect


def _may_retry_status(status: int, *, idempotent: bool) -> bool:
    """Whether a call that met `status` (one of RETRY_STATUSES) may be sent again."""
    return status in NOTHING_APPLIED or idempotent


def _may_retry_error(exc: httpx.RequestError, *, idempotent: bool) -> bool:
    """Whether a call that met `exc` may be sent again by tenacity.

    Connection failures are the transport's to retry (it already did); anything after the
    request may have left (a timeout, a dropped connection) only for idempotent calls.
    """
    if isinstance(exc, _NOT_CONNECTED):
        return False
    if isinstance(exc, httpx.PoolTimeout):  # never left this process
        return True
    return idempotent and isinstance(exc, httpx.TransportError)


def _request_error(resp: httpx.Response, method: str, path: str) -> RegistryRequestError:
    """The error of a refused call: its status's class, with the registry's detail."""
    try:
        detail = resp.json().get("detail", resp.text)
    except (ValueError, AttributeError):
        detail = resp.text
    cls = _BY_STATUS.get(resp.status_code, RegistryRequestError)
    return cls(resp.status_code, detail, method, path)


def _parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None if absent
    or unreadable, never negative."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


class RegistryClient:
    """One node's view of the registry. Pass `client` to use your own httpx transport.

    `retries` is how many more times a failed call may be tried (see the module's retry
    policy), `backoff` the first wait in seconds, `timeout` each request's limit in seconds.
    `credentials` keeps the node's token on disk across restarts (see the module docstring).
    """

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
        credentials: CredentialStore | None = None,
        ca_cert: Path | str | None = None,
    ) -> None:
        try:
            self.base_url = check_url(base_url)
        except ValueError as exc:
            raise ConfigError(f"registry URL: {exc}") from exc
        self.token = token
        self.node_id = node_id
        self.credentials = credentials
        self.retries = retries
        self.backoff = backoff
        self._own_client = client is None
        if client is None:
            verify = tls_context(ca_cert)
            transport = httpx.HTTPTransport(retries=retries, verify=verify)
            client = httpx.Client(
                base_url=self.base_url, timeout=timeout, transport=transport, verify=verify
            )
        self._http = client
        # (path, query) -> (ETag, decoded answer) of the revalidated reads.
        self._revalidated: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, Any]] = {}
        # Connection attempts per try: the transport's retries on our client, unknown (one
        # as far as this class can tell) on a client passed in.
        self._connects_per_try = retries + 1 if self._own_client else 1

    # --- plumbing ------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool (if this client created it)."""
        if self._own_client:
            self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _get_revalidated(
        self, path: str, model: type[_M], params: Mapping[str, Any] | None = None
    ) -> _M:
        """GET `path` as `model`, sending the ETag of the answer kept for this URL and
        query: on 304 that answer is returned as it was decoded (see the module docstring).
        Raises as `_request` does."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        key = (path, tuple(sorted((k, str(v)) for k, v in query.items())))
        kept = self._revalidated.get(key)
        resp = self._request(
            "GET",
            path,
            idempotent=True,
            params=query,
            headers={"If-None-Match": kept[0]} if kept else None,
            ok=(200, 304) if kept else (200,),
        )
        if resp.status_code == 304 and kept is not None:
            return cast(_M, kept[1])
        value = model.model_validate_json(resp.content)
        etag = resp.headers.get("etag")
        if etag:
            if len(self._revalidated) >= MAX_REVALIDATED:
                self._revalidated.clear()
            self._revalidated[key] = (etag, value)
        return value

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200, 201),
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one call under the module's retry policy; the response when its status is in
        `ok`. Raises RegistryRequestError (by status) or RegistryUnavailableError, and
        ConfigError when the registry's TLS certificate is not trusted."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        tries = 0

        def once() -> httpx.Response:
            nonlocal tries
            tries += 1
            return self._send_once(
                method,
                path,
                idempotent=idempotent,
                json=json,
                params=query,
                content=content,
                ok=ok,
                headers=headers,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, _Failed) and exc.retry),
            before_sleep=self._log_retry(method, path),
            reraise=True,
        )
        try:
            return retrying(once)
        except _Failed as failed:
            total = tries - 1 + (self._connects_per_try if failed.connect else 1)
            applied = not (idempotent or failed.retry or failed.connect)
            why = " (not retried: the registry may have applied it)" if applied else ""
            raise RegistryUnavailableError(
                f"{method} {self.base_url}{path} failed after {total} "
                f"{'try' if total == 1 else 'tries'}: {failed.failure}{why}"
            ) from failed.__cause__

    def _send_once(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: Any,
        params: Mapping[str, Any],
        content: bytes | None,
        ok: tuple[int, ...],
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            resp = self._http.request(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers={**self._headers(), **(headers or {})},
            )
        except httpx.RequestError as exc:
            self._raise_tls_failure(exc)
            raise _Failed(
                f"{type(exc).__name__}: {exc}",
                retry=_may_retry_error(exc, idempotent=idempotent),
                connect=isinstance(exc, _NOT_CONNECTED),
            ) from exc
        if resp.status_code in ok:
            return resp
        if resp.status_code in RETRY_STATUSES:
            raise _Failed(
                f"HTTP {resp.status_code}",
                retry=_may_retry_status(resp.status_code, idempotent=idempotent),
                retry_after_s=_parse_retry_after(resp.headers.get("retry-after")),
            )
        raise _request_error(resp, method, path)

    def _raise_tls_failure(self, exc: httpx.RequestError) -> None:
        """ConfigError when ``exc`` is a TLS failure: a certificate this client does not
        trust will not become trusted by retrying."""
        tls = _tls_failure(exc)
        if tls is not None:
            reason = getattr(tls, "verify_message", None) or tls.reason or str(tls)
            raise ConfigError(
                f"TLS with the registry at {self.base_url} failed ({reason}); "
                "give its CA certificate with --ca-cert"
            ) from exc

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff, stretched to the registry's Retry-After (bounded)."""
        delay = float(tenacity.wait_exponential(multiplier=self.backoff, max=MAX_BACKOFF_S)(state))
        failed = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failed, _Failed) and failed.retry_after_s is not None:
            delay = max(delay, min(failed.retry_after_s, MAX_RETRY_AFTER_S))
        return delay

    @staticmethod
    def _log_retry(method: str, path: str) -> Callable[[tenacity.RetryCallState], None]:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            failed = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.debug("%s %s: %s; retrying in %.2fs", method, path, failed, wait)

        return before_sleep

    # --- nodes ---------------------------------------------------------------------

    def register(
        self,
        node_id: str,
        address: str,
        domain: str,
        capabilities: Mapping[str, Any] | None = None,
        *,
        model_signature: ModelSignature | None = None,
        public_key: str | None = None,
    ) -> NodeRegistered:
        """Register (keeps the returned token) or, with a token, update the registration.

        With ``credentials`` and no token yet, the stored token for this registry and
        ``node_id`` is used, or a new secret is stored and sent (see the module docstring).
        A registry-generated token is kept (and stored). ForbiddenError when the registry
        knows the node by another token (lost credential file: an admin can set a new one).
        ConfigError when the credential file cannot be read or written.

        ``model_signature`` (``WeightsSignature.of(learner.get_weights(),
        learner.weight_names)``) is checked against the domain's: ConflictError naming the
        first difference when the domain trains another model. ``public_key``: the node's
        Ed25519 key for P2P frames (base64 or hex of 32 bytes), published to peers.
        """
        body: dict[str, Any] = {
            "node_id": node_id,
            "address": address,
            "domain": domain,
            "capabilities": dict(capabilities or {}),
        }
        if model_signature is not None:
            body["model_signature"] = model_signature.to_json()
        if public_key is not None:
            body["public_key"] = public_key
        if self.token is None and self.credentials is not None:
            self.token = self.credentials.load_or_create(self.base_url, node_id)
        # With a token a repeat is an update; without, it is refused (401): the token the
        # first try returned is lost.
        resp = self._request(
            "POST", "/nodes/register", idempotent=self.token is not None, json=body
        )
        out = NodeRegistered.model_validate(resp.json())
        self.node_id = node_id
        if out.token:
            self.token = out.token
            if self.credentials is not None:
                self.credentials.save(self.base_url, node_id, out.token)
        return out

    def heartbeat(self, metrics: Mapping[str, float] | None = None) -> NodePublic:
        """Tell the registry this node is alive, with its latest metrics."""
        path = f"/nodes/{self._me()}/heartbeat"
        resp = self._request("POST", path, idempotent=True, json={"metrics": dict(metrics or {})})
        return NodePublic.model_validate(resp.json())

    def get_node(self, node_id: str | None = None) -> NodePublic:
        """One node (default: this one)."""
        resp = self._request("GET", f"/nodes/{node_id or self._me()}", idempotent=True)
        return NodePublic.model_validate(resp.json())

    def list_nodes(
        self, *, domain: str | None = None, group_id: int | None = None, limit: int = 1000
    ) -> NodesPublic:
        """Nodes, optionally of one domain or group (the first `limit`; see all_nodes)."""
        params = {"domain": domain, "group_id": group_id, "limit": limit}
        return self._get_revalidated("/nodes", NodesPublic, params)

    def all_nodes(
        self,
        *,
        domain: str | None = None,
        status: str | None = None,
        group_id: int | None = None,
        page_size: int = PAGE,
    ) -> list[NodePublic]:
        """Every registered node (of one domain, status ``active``/``inactive`` or group),
        fetched page by page in the registry's order; one GET per `page_size` nodes."""
        out: list[NodePublic] = []
        while True:
            params = {
                "domain": domain,
                "status": status,
                "group_id": group_id,
                "offset": len(out),
                "limit": page_size,
            }
            page = self._get_revalidated("/nodes", NodesPublic, params)
            out.extend(page.data)
            if len(page.data) < page_size or len(out) >= page.count:
                return out

    # --- groups --------------------------------------------------------------------

    def list_groups(self, *, domain: str | None = None, limit: int = 1000) -> list[GroupPublic]:
        """Live groups (of one domain), every page."""
        out: list[GroupPublic] = []
        offset = 0
        while True:
            params = {"domain": domain, "offset": offset, "limit": limit}
            page = self._get_revalidated("/groups", GroupsPublic, params)
            out.extend(page.data)
            offset += len(page.data)
            if not page.data or offset >= page.count:
                return out

    def get_group(self, group_id: int) -> GroupDetail:
        """One group with its members."""
        return self._get_revalidated(f"/groups/{group_id}", GroupDetail)

    def create_group(
        self,
        name: str,
        domain: str,
        *,
        max_capacity: int = 5,
        description: str | None = None,
        join: bool = True,
        model_signature: ModelSignature | None = None,
        aggregation: str = "fedavg",
        mode: str = "rounds",
    ) -> GroupPublic:
        """Create a group (joining it by default), declaring the model it trains and the
        Flower strategy its hosts aggregate with (``aggregation``); ``mode`` is ``rounds``
        (Flower) or ``gossip``.

        The domain's first ``model_signature`` becomes the domain's; ConflictError naming
        the first difference when the domain trains another model.
        """
        body: dict[str, Any] = {
            "name": name,
            "domain": domain,
            "max_capacity": max_capacity,
            "description": description,
            "join": join,
            "aggregation": aggregation,
            "mode": mode,
        }
        if model_signature is not None:
            body["model_signature"] = model_signature.to_json()
        # A repeat after a lost answer is refused (409): its first try took the name.
        resp = self._request("POST", "/groups", idempotent=False, json=body)
        return GroupPublic.model_validate(resp.json())

    def join(self, group_id: int) -> MembershipPublic:
        """Join (or migrate to) a group; ConflictError when it is full."""
        # A repeat after a lost answer hides the move (previous group, migrated) it made.
        resp = self._request("POST", "/groups/join", idempotent=False, json={"group_id": group_id})
        return MembershipPublic.model_validate(resp.json())

    def leave(self) -> int:
        """Leave the current group; returns its id."""
        # A repeat after a lost answer is refused (409): the node is in no group any more.
        resp = self._request("POST", "/groups/leave", idempotent=False, json={})
        return int(resp.json()["group_id"])

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
        resp = self._request("PUT", f"/groups/{group_id}/performance", idempotent=True, json=body)
        return GroupPublic.model_validate(resp.json())

    def report_evaluation(
        self,
        group_id: int,
        round: int,
        losses: Mapping[str, float],
        *,
        num_examples: int,
        accuracy: float | None = None,
    ) -> RoundEvaluationPublic:
        """Report this member's losses, on its own validation data, on a round's models by
        label (``new``, ``start``, ``all``, ``without:<node>``); the ledger checks a host's
        contribution figures against them. ConflictError when other figures were stored.
        With ``accuracy`` (the new model's, a fraction), the same request is also this
        member's performance report for the round (``report_performance``)."""
        body: dict[str, Any] = {"num_examples": num_examples, "losses": dict(losses)}
        if accuracy is not None:
            body["accuracy"] = accuracy
        resp = self._request(
            "PUT", f"/groups/{group_id}/rounds/{round}/evaluations", idempotent=True, json=body
        )
        return RoundEvaluationPublic.model_validate(resp.json())

    def round_evaluations(self, group_id: int, round: int) -> RoundEvaluationsPublic:
        """Every member's evaluation of a round."""
        resp = self._request(
            "GET", f"/groups/{group_id}/rounds/{round}/evaluations", idempotent=True
        )
        return RoundEvaluationsPublic.model_validate(resp.json())

    def claim_host(self, group_id: int, address: str) -> GroupHost:
        """Try to host the group's aggregation; `claimed` says whether it was granted."""
        resp = self._request(
            "POST", f"/groups/{group_id}/host", idempotent=True, json={"address": address}
        )
        return GroupHost.model_validate(resp.json())

    def round_ticket(self, group_id: int) -> RoundTicket:
        """This member's ticket to its group's Flower rounds (shown to the host when
        connecting). ForbiddenError: not a current member; ConflictError: no host yet."""
        resp = self._request("POST", f"/groups/{group_id}/round-ticket", idempotent=True)
        return RoundTicket.model_validate(resp.json())

    def round_key(self, group_id: int) -> RoundKey:
        """The group's round key for its current host epoch (its host only: else
        ForbiddenError), which checks the members' round tickets."""
        resp = self._request("POST", f"/groups/{group_id}/round-key", idempotent=True)
        return RoundKey.model_validate(resp.json())

    # --- meta-federation: sibling links, merge, split --------------------------------

    def report_siblings(
        self, group_id: int, round: int, siblings: Sequence[SiblingFit]
    ) -> list[GroupLink]:
        """Replace the group's sibling links (this node must be a member) with ``siblings``
        measured at ``round``; returns the stored links by sibling id. The registry refuses
        (RegistryRequestError, status 422) the group itself, a sibling twice, more than 64
        or scores out of range; NotFoundError an unknown sibling; ConflictError one of
        another domain."""
        body = {
            "round": round,
            "siblings": [
                {
                    "group_id": s.group_id,
                    "fit": s.fit,
                    "own_fit": s.own_fit,
                    "loss": s.loss,
                    "examples": s.examples,
                }
                for s in siblings
            ],
        }
        resp = self._request("PUT", f"/groups/{group_id}/siblings", idempotent=True, json=body)
        return GroupLinksPublic.model_validate(resp.json()).links

    def siblings(self, group_id: int) -> list[GroupLink]:
        """The links group ``group_id`` measured and those pointing at it (live groups)."""
        resp = self._request("GET", f"/groups/{group_id}/siblings", idempotent=True)
        return GroupLinksPublic.model_validate(resp.json()).links

    def links(self, domain: str | None = None) -> list[GroupLink]:
        """Every link between live groups (of ``domain``, when given)."""
        params = {"domain": domain} if domain is not None else None
        resp = self._request("GET", "/links", idempotent=True, params=params)
        return GroupLinksPublic.model_validate(resp.json()).links

    def merge_group(self, group_id: int, into: int) -> GroupMoved:
        """Move every member of ``group_id`` (this node's group) into its sibling ``into``;
        ``group_id`` is archived. ConflictError when ``into`` is no sibling, has no room,
        or is of another domain, aggregation or mode."""
        # A repeat after a lost answer is refused (403): this node left ``group_id``.
        resp = self._request(
            "POST", f"/groups/{group_id}/merge", idempotent=False, json={"into": into}
        )
        return GroupMoved.model_validate(resp.json())

    def split_group(self, group_id: int, members: Sequence[str], name: str) -> GroupMoved:
        """Split ``members`` of ``group_id`` (this node's group) off into a new group named
        ``name``, like the old one; ConflictError when a node listed is not a member, when
        every member is listed, or when the name is taken."""
        # A repeat after a lost answer is refused (409): the name is taken.
        resp = self._request(
            "POST",
            f"/groups/{group_id}/split",
            idempotent=False,
            json={"members": list(members), "name": name},
        )
        return GroupMoved.model_validate(resp.json())

    # --- models --------------------------------------------------------------------

    def upload_model(self, group_id: int, round: int, data: bytes) -> ModelInfo:
        """Upload the group's model snapshot for a round (members only).

        Raises ``RegistryRequestError`` with ``status`` 422 when the registry refuses the
        bytes (not a snapshot, not the domain's model, NaN/inf; ``detail`` says which),
        ConflictError for a stale round.
        """
        resp = self._request(
            "PUT",
            f"/groups/{group_id}/model",
            idempotent=True,
            params={"round": round},
            content=data,
        )
        return ModelInfo.model_validate(resp.json())

    def model_info(self, group_id: int) -> ModelInfo | None:
        """Round, hash and size of the group's latest snapshot, without its bytes."""
        try:
            resp = self._request("GET", f"/groups/{group_id}/model/info", idempotent=True)
        except NotFoundError:
            return None
        return ModelInfo.model_validate(resp.json())

    def download_model(
        self, group_id: int, round: int | None = None, *, known: ModelBlob | None = None
    ) -> ModelBlob | None:
        """The group's latest snapshot (or a given round's); None when it has none.

        With ``known`` (a snapshot this node holds), only a changed snapshot's bytes are
        fetched: ``If-None-Match`` names ``known.sha256`` and, while the registry's
        snapshot is still that one (``304 Not Modified``), ``known`` itself is returned,
        unchanged (its ``data`` is not read, so a holder may keep it empty)."""
        try:
            resp = self._request(
                "GET",
                f"/groups/{group_id}/model",
                idempotent=True,
                params={"round": round},
                headers={"If-None-Match": f'"{known.sha256}"'} if known is not None else None,
                ok=(200, 304) if known is not None else (200,),
            )
        except NotFoundError:
            return None
        if resp.status_code == 304 and known is not None:
            return known
        return ModelBlob(
            data=resp.content,
            round=int(resp.headers["x-model-round"]),
            sha256=resp.headers["x-model-sha256"],
        )

    def domain_signature(self, domain: str) -> DomainSignaturePublic | None:
        """The model signature of ``domain`` (None while it has none); as a ``ModelSignature``:
        ``ModelSignature.from_json(result.signature.model_dump())``."""
        try:
            resp = self._request("GET", f"/domains/{domain}/model-signature", idempotent=True)
        except NotFoundError:
            return None
        return DomainSignaturePublic.model_validate(resp.json())

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
        resp = self._request(
            "POST", f"/groups/{group_id}/rounds/{round}/contributions", idempotent=True, json=body
        )
        return RoundRewards.model_validate(resp.json())

    def balance(self, node_id: str | None = None) -> Balance:
        """A node's token balance (default: this node's)."""
        resp = self._request("GET", f"/nodes/{node_id or self._me()}/balance", idempotent=True)
        return Balance.model_validate(resp.json())

    # --- events --------------------------------------------------------------------

    def events(self, *, after_id: int = 0, limit: int = 1000, **filters: Any) -> EventsPublic:
        """Events after an id, oldest first (one page of at most `limit`)."""
        params = {"after_id": after_id, "limit": limit, **filters}
        resp = self._request("GET", "/events", idempotent=True, params=params)
        return EventsPublic.model_validate(resp.json())

    def all_events(
        self, *, after_id: int = 0, page_size: int = PAGE, **filters: Any
    ) -> EventsPublic:
        """Every event after `after_id`, oldest first, fetched page by page; `last_id` is the
        cursor to pass next time (`after_id` when there were none). `filters` as for events:
        ``type``, ``node_id``, ``group_id``."""
        data = []
        last_id = after_id
        while True:
            page = self.events(after_id=last_id, limit=page_size, **filters)
            data.extend(page.data)
            last_id = page.last_id
            if len(page.data) < page_size:
                return EventsPublic(data=data, last_id=last_id)

    def follow_events(
        self,
        *,
        after_id: int = 0,
        types: Collection[str] | None = None,
        read_timeout_s: float = STREAM_READ_TIMEOUT_S,
        **filters: Any,
    ) -> Generator[EventPublic]:
        """Follow ``GET /events/stream``: the events after ``after_id`` (sent as
        Last-Event-ID), oldest first, then each as it commits, until the registry closes
        the stream (the generator returns). ``types`` any of these event types;
        ``filters`` as for ``events`` (``domain``, ``node_id``, ``group_id``). An event
        that does not parse is logged and skipped.

        Not retried: the caller resumes from the last id it got. Raises the
        ``RegistryRequestError`` of a refused call (422 when the registry knows no such
        filter or type: an older registry), ``RegistryUnavailableError`` when the stream
        cannot be opened or breaks (no byte for ``read_timeout_s`` seconds; the registry
        pings every 15 s), ConfigError when its TLS certificate is not trusted.
        """
        path = "/events/stream"
        params = {k: v for k, v in filters.items() if v is not None}
        if types is not None:
            params["types"] = ",".join(sorted(types))
        headers = {**self._headers(), "Last-Event-ID": str(after_id)}
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        try:
            with httpx_sse.connect_sse(
                self._http, "GET", path, params=params, headers=headers, timeout=timeout
            ) as source:
                if source.response.status_code != 200:
                    source.response.read()
                    raise _request_error(source.response, "GET", path)
                for sse in source.iter_sse():
                    try:
                        yield EventPublic.model_validate_json(sse.data)
                    except pydantic.ValidationError as exc:
                        log.warning("event %r from the registry skipped: %s", sse.id, exc)
        except (httpx.RequestError, httpx_sse.SSEError) as exc:
            if isinstance(exc, httpx.RequestError):
                self._raise_tls_failure(exc)
            raise RegistryUnavailableError(
                f"GET {self.base_url}{path}: {type(exc).__name__}: {exc}"
            ) from exc

    def healthy(self) -> bool:
        """True when the registry answers /healthz with 200 (no retries beyond the
        transport's connection attempts). ConfigError when its TLS certificate is not
        trusted (see ``tls_context``)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError as exc:
            self._raise_tls_failure(exc)
            return False

    def _me(self) -> str:
        if not self.node_id:
            raise RegistryClientError("this client has no node id: call register() first")
        return self.node_id

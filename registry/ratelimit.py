"""Rate limits on the registry's write calls: per bearer token and per client address.

A write (POST, PUT, PATCH, DELETE) counts against two budgets: its bearer token's (when it
sends one) and its client address's. Over either, the registry answers 429 with
``Retry-After`` (whole seconds until the window frees a slot) and does not run the call.
Reads (GET, HEAD) are never limited: nodes poll them, and they change nothing.

Both budgets are enforced together because a token is only checked later, in the database:
a stranger who invents a fresh token for every call escapes the per-token budget but not
the per-address one, while many honest nodes behind one address (the in-process demo, a
NAT) are each held to their own token's budget.

The counting is `limits` (the engine under slowapi and Flask-Limiter): fixed windows in
process memory (a hit costs ~5 µs here against ~16 µs for its moving window, which also
stores every hit; the price is that a burst straddling two windows may reach twice the
budget), so with ``--workers N`` each worker counts on its own and the effective
budget is up to N times the configured one. slowapi itself is not used: it limits per
route by decorator, or every route through one default, with no way to exempt reads; this
ASGI middleware is the few lines that choose what to count.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from registry.settings import OFF, parse_limits

__all__ = ["OFF", "RateLimitMiddleware", "document_rate_limits", "parse_limits"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


TOO_MANY = {
    "description": "Over the token's or the address's write budget; nothing was done. "
    "Retry after `Retry-After` seconds.",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
}


def document_rate_limits(schema: dict[str, Any]) -> None:
    """Add the 429 answer to every write operation of an OpenAPI document, in place."""
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            if method.upper() in WRITE_METHODS:
                operation.setdefault("responses", {}).setdefault("429", TOO_MANY)


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
    return None


class RateLimitMiddleware:
    """429 for a write over its token's or its address's budget (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, per_token: list[RateLimitItem], per_address: list[RateLimitItem]
    ) -> None:
        self.app = app
        self.per_token = per_token
        self.per_address = per_address
        self.limiter = FixedWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        budgets: list[tuple[list[RateLimitItem], str, str]] = []
        client = scope.get("client")
        if client:
            budgets.append((self.per_address, "address", client[0]))
        token = _bearer(scope)
        if token is not None:
            # Keyed by a digest: the limiter's memory never holds a usable token.
            budgets.append(
                (self.per_token, "token", hashlib.blake2b(token, digest_size=16).hexdigest())
            )
        for items, kind, key in budgets:
            for item in items:
                if not self.limiter.hit(item, kind, key):
                    reset_at = self.limiter.get_window_stats(item, kind, key).reset_time
                    await self._refuse(send, kind, item, reset_at - time.time())
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Send, kind: str, item: RateLimitItem, wait_s: float) -> None:
        retry_after = max(1, math.ceil(wait_s))
        body = json.dumps(
            {"detail": f"rate limit exceeded: {item} per {kind}; retry in {retry_after} s"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

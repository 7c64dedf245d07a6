"""What the /metrics middleware costs a request, measured in process with direct ASGI calls.

Usage: python bench/metrics_overhead.py [--requests 20000] [--repeats 5]

The middleware's recording alone (``record_only``), then four loops of ASGI calls (no
sockets, no HTTP parsing, so the middleware's share shows): a bare FastAPI ``GET /ping``
without and with `MetricsMiddleware`, and the registry's heartbeat (its fast route, one
node, SQLite in a temporary folder, one commit per beat) without and with it. Prints
microseconds per request (best of `--repeats`; the machine is shared, so differences of a
few µs between loops are noise; ``record_only`` is the steadiest figure). Set
``PROMETHEUS_MULTIPROC_DIR`` to an empty folder to measure the multi-worker mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message

from registry.main import create_app
from registry.metrics import MetricsMiddleware
from registry.settings import build_settings

Call = Callable[[], Awaitable[tuple[int, bytes]]]


def _caller(
    app: ASGIApp, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> Call:
    """A coroutine function making one ASGI request; returns (status, response body)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def call() -> tuple[int, bytes]:
        status, chunks = 0, []

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app(dict(scope), receive, send)
        return status, b"".join(chunks)

    return call


async def _pair(a: Call, b: Call, requests: int, repeats: int) -> tuple[float, float]:
    """Best microseconds per request of `a` and of `b`, timed in turns (so drift in the
    machine's load hits both alike)."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for k, call in enumerate((a, b)):
            started = time.perf_counter()
            for _ in range(requests):
                status, _ = await call()
            best[k] = min(best[k], (time.perf_counter() - started) / requests * 1e6)
            assert status == 200, status
    return best[0], best[1]


def _ping_app(metrics: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    if metrics:
        app.add_middleware(MetricsMiddleware)
    return app


@contextlib.asynccontextmanager
async def _heartbeat(metrics: bool, folder: Path) -> AsyncIterator[Call]:
    """A registry app (with or without the middleware) and a call of one node's beat."""
    app = create_app(build_settings(data_dir=folder, rate_limit_per_token="off"))
    if not metrics:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not MetricsMiddleware]
    async with app.router.lifespan_context(app):
        body = json.dumps({"node_id": "bench-node", "address": "127.0.0.1:1", "domain": "d"})
        json_type = {"content-type": "application/json"}
        status, answer = await _caller(app, "POST", "/nodes/register", json_type, body.encode())()
        assert status == 201, answer
        token = json.loads(answer)["token"]
        yield _caller(
            app, "POST", "/nodes/bench-node/heartbeat", {"authorization": f"Bearer {token}"}
        )


def _record_only(requests: int, repeats: int) -> float:
    """Best µs of `MetricsMiddleware._observe` alone (counter, histogram) for a heartbeat."""
    app = _ping_app(False)
    middleware = MetricsMiddleware(app)
    scope = {"method": "POST", "route": app.router.routes[-1], "app": app}
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(requests):
            middleware._observe(scope, 200, 0.001)
        best = min(best, (time.perf_counter() - started) / requests * 1e6)
    return best


async def main(requests: int, repeats: int) -> dict[str, float]:
    """The five figures, microseconds per request."""
    out = {"record_only": _record_only(requests, repeats)}
    bare = _caller(_ping_app(False), "GET", "/ping", {})
    measured = _caller(_ping_app(True), "GET", "/ping", {})
    out["ping"], out["ping_metrics"] = await _pair(bare, measured, requests, repeats)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        async with _heartbeat(False, Path(a)) as bare, _heartbeat(True, Path(b)) as measured:
            beats = max(1, requests // 10)  # each commits to SQLite: slower
            pair = await _pair(bare, measured, beats, repeats)
            out["heartbeat"], out["heartbeat_metrics"] = pair
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    ns = parser.parse_args()
    figures = asyncio.run(main(ns.requests, ns.repeats))
    for name, us in figures.items():
        print(f"{name:20s} {us:8.1f} µs/request")
    print(f"middleware on /ping:      +{figures['ping_metrics'] - figures['ping']:.1f} µs")
    print(
        f"middleware on heartbeat:  +{figures['heartbeat_metrics'] - figures['heartbeat']:.1f} µs"
    )

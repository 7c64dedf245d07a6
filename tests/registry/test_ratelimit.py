"""Write calls over a token's or an address's budget get 429 with Retry-After; reads never."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node.registry_client import RegistryClient
from tests.registry.helpers import register, unique
from tests.support.registry_proc import RegistryProcess


def _limited(tmp_path: Path, *, per_token: str, per_address: str) -> RegistryProcess:
    extra = ["--rate-limit-per-token", per_token, "--rate-limit-per-address", per_address]
    return RegistryProcess(tmp_path / "registry", extra=extra)


@pytest.fixture
def per_token_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    with _limited(tmp_path, per_token="4/minute", per_address="off") as reg:
        yield reg


def test_a_token_over_its_budget_gets_429_and_others_go_on(
    per_token_registry: RegistryProcess,
) -> None:
    with httpx.Client(base_url=per_token_registry.url, timeout=10) as client:
        node, headers = register(client)  # no token yet: counts for nobody's token
        beats = [client.post(f"/nodes/{node}/heartbeat", headers=headers) for _ in range(5)]

        assert [r.status_code for r in beats] == [200, 200, 200, 200, 429]
        refused = beats[-1]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "per token" in refused.json()["detail"]
        # Reads are never limited, and another node has its own budget.
        assert client.get(f"/nodes/{node}").status_code == 200
        other, other_headers = register(client)
        assert client.post(f"/nodes/{other}/heartbeat", headers=other_headers).status_code == 200


def test_fresh_tokens_do_not_escape_the_address_budget(tmp_path: Path) -> None:
    with (
        _limited(tmp_path, per_token="off", per_address="6/minute") as reg,
        httpx.Client(base_url=reg.url, timeout=10) as client,
    ):
        statuses = [
            client.post(
                "/groups",
                headers={"Authorization": f"Bearer {secrets.token_urlsafe(32)}"},
                json={"name": unique("g"), "domain": "digits"},
            ).status_code
            for _ in range(8)
        ]

        # Invented tokens are 401 until the address has spent its budget, then 429.
        assert statuses == [401] * 6 + [429] * 2
        assert client.get("/groups").status_code == 200


def test_the_node_client_waits_out_a_429_and_succeeds(tmp_path: Path) -> None:
    with _limited(tmp_path, per_token="1/second", per_address="off") as reg:
        with httpx.Client(base_url=reg.url, timeout=10) as raw:
            node, headers = register(raw)
        token = headers["Authorization"].removeprefix("Bearer ")
        with RegistryClient(reg.url, token=token, node_id=node, retries=3) as client:
            first = client.heartbeat({"accuracy": 0.5})
            second = client.heartbeat({"accuracy": 0.6})  # 429 first, then after Retry-After

        assert first.id == second.id == node
        assert second.metrics["accuracy"] == pytest.approx(0.6)


def test_a_malformed_limit_is_a_clear_cli_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "registry", "--data-dir", str(tmp_path),
         "--rate-limit-per-token", "lots"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 2
    shown = " ".join(done.stderr.replace("│", " ").split())  # as read, across wrapped lines
    assert "rate_limit_per_token: rate limit 'lots' is not like '20/second;600/minute'" in shown
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("proxy_headers", [False, True])
def test_forwarded_addresses_count_only_with_proxy_headers(
    tmp_path: Path, proxy_headers: bool
) -> None:
    # Prepare: 3 writes a minute per address; five callers behind one proxy (this host)
    extra = ["--rate-limit-per-token", "off", "--rate-limit-per-address", "3/minute"]
    extra += ["--proxy-headers"] if proxy_headers else []

    # Execute
    with (
        RegistryProcess(tmp_path / "registry", extra=extra) as reg,
        httpx.Client(base_url=reg.url, timeout=30) as c,
    ):
        codes = [
            c.post(
                "/nodes/register",
                json={"node_id": unique(), "address": "127.0.0.1:9", "domain": "digits"},
                headers={"X-Forwarded-For": f"10.0.0.{i}"},
            ).status_code
            for i in range(5)
        ]

    # Assert: trusted, each forwarded client has its own budget; by default the header is
    # a claim like any other and the socket's address is the one that counts
    assert codes == ([201] * 5 if proxy_headers else [201] * 3 + [429] * 2)


def test_forwarded_allow_ips_without_proxy_headers_is_a_clear_cli_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "registry", "--data-dir", str(tmp_path),
         "--forwarded-allow-ips", "10.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 2
    assert "--forwarded-allow-ips" in done.stderr and "--proxy-headers" in done.stderr
    assert "Traceback" not in done.stderr

"""Credentials that last: client-chosen secrets, idempotent registers, admin rotation,
and an admin token that lives in a 0600 file, never in the registry's output."""

from __future__ import annotations

import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.registry.helpers import register, unique
from tests.support.registry_proc import RegistryProcess

ADMIN = "admin-token-for-credential-tests"


@pytest.fixture(scope="module")
def admin_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """An SQLite registry with a known admin token."""
    with RegistryProcess(
        tmp_path_factory.mktemp("registry"), extra=["--admin-token", ADMIN]
    ) as proc:
        yield proc


@pytest.fixture
def client(admin_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=admin_registry.url, timeout=10) as c:
        yield c


def _body(node_id: str) -> dict[str, str]:
    return {"node_id": node_id, "address": "127.0.0.1:9", "domain": "digits"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_replayed_register_with_the_same_secret_is_200_not_401(client: httpx.Client) -> None:
    # Prepare: a node's own secret
    node_id, secret = unique(), secrets.token_urlsafe(32)

    # Execute: the first register's answer is lost; the node sends it again
    first = client.post("/nodes/register", headers=_bearer(secret), json=_body(node_id))
    replay = client.post("/nodes/register", headers=_bearer(secret), json=_body(node_id))
    beat = client.post(f"/nodes/{node_id}/heartbeat", headers=_bearer(secret))

    # Assert: created once, recognised after; the registry never echoes the secret
    assert first.status_code == 201 and first.json()["token"] is None
    assert replay.status_code == 200, replay.text
    assert replay.json()["created"] is False
    assert beat.status_code == 200


@pytest.mark.parametrize(
    "weak",
    ["short-secret", "x" * 31, "ab+/=" * 10, "has spaces in it but is long enough to pass"],
)
def test_a_weak_client_secret_is_422_and_registers_nothing(client: httpx.Client, weak: str) -> None:
    node_id = unique()

    r = client.post("/nodes/register", headers=_bearer(weak), json=_body(node_id))

    assert r.status_code == 422, r.text
    assert "32 to 512 URL-safe characters" in r.json()["detail"]
    assert client.get(f"/nodes/{node_id}").status_code == 404


def test_a_secret_another_node_holds_is_409(client: httpx.Client) -> None:
    secret = secrets.token_urlsafe(32)
    client.post("/nodes/register", headers=_bearer(secret), json=_body(unique()))

    r = client.post("/nodes/register", headers=_bearer(secret), json=_body(unique()))

    assert r.status_code == 409 and "another node" in r.json()["detail"]


def test_without_a_secret_the_registry_still_generates_one(client: httpx.Client) -> None:
    node_id, headers = register(client)  # the helper asserts 201 and a token

    assert client.post(f"/nodes/{node_id}/heartbeat", headers=headers).status_code == 200


def test_the_admin_rotates_a_lost_credential_and_only_the_admin_may(
    client: httpx.Client,
) -> None:
    # Prepare: a node, and another node whose token tries its luck
    node_id, old = register(client)
    _, other = register(client)
    chosen = secrets.token_urlsafe(32)
    admin = _bearer(ADMIN)

    # Execute
    anonymous = client.post(f"/nodes/{node_id}/token")
    as_node = client.post(f"/nodes/{node_id}/token", headers=other)
    as_itself = client.post(f"/nodes/{node_id}/token", headers=old)
    unknown = client.post(f"/nodes/{unique()}/token", headers=admin)
    weak = client.post(f"/nodes/{node_id}/token", headers=admin, json={"token": "short"})
    generated = client.post(f"/nodes/{node_id}/token", headers=admin)
    old_beat = client.post(f"/nodes/{node_id}/heartbeat", headers=old)
    new_beat = client.post(
        f"/nodes/{node_id}/heartbeat", headers=_bearer(generated.json()["token"])
    )
    set_secret = client.post(f"/nodes/{node_id}/token", headers=admin, json={"token": chosen})
    chosen_register = client.post("/nodes/register", headers=_bearer(chosen), json=_body(node_id))
    events = client.get("/events", params={"type": "token_rotated", "node_id": node_id}).json()

    # Assert
    assert anonymous.status_code == 401
    assert as_node.status_code == 403 and as_itself.status_code == 403
    assert unknown.status_code == 404
    assert weak.status_code == 422
    assert generated.status_code == 200 and len(generated.json()["token"]) >= 32
    assert old_beat.status_code == 401 and new_beat.status_code == 200
    assert set_secret.status_code == 200 and set_secret.json() == {
        "node_id": node_id,
        "token": None,
    }
    assert chosen_register.status_code == 200
    assert [e["data"]["chosen_by"] for e in events["data"]] == ["registry", "client"]


def test_a_generated_admin_token_is_in_a_0600_file_and_never_in_the_output(
    tmp_path: Path,
) -> None:
    # Prepare: two workers, no --admin-token
    data_dir = tmp_path / "registry"
    with RegistryProcess(data_dir, workers=2, extra=["--log-level", "debug"]) as proc:
        token = (data_dir / "admin_token").read_text().strip()
        with httpx.Client(base_url=proc.url, timeout=10) as c:
            node_id, _ = register(c)
            # Execute: admin calls, spread over both workers
            answers = [
                c.post(f"/nodes/{node_id}/token", headers=_bearer(token)).status_code
                for _ in range(8)
            ]
    output = proc.log()

    # Assert: every worker knows the file's token; the output names the file only
    assert answers == [200] * 8
    assert stat.S_IMODE((data_dir / "admin_token").stat().st_mode) == 0o600
    assert str((data_dir / "admin_token").resolve()) in output
    assert token not in output


def _start_registry(tmp_path: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "registry", "--data-dir", str(tmp_path / "r")]
    return subprocess.run(
        [*cmd, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://mycelium:Pa55-w0rd-SECRET@127.0.0.1:9/mycelium",  # no server
        "postgresql+psycopg://mycelium:Pa55-w0rd-SECRET@127.0.0.1:notaport/mycelium",
        "postgresql+nodriver://mycelium:Pa55-w0rd-SECRET@127.0.0.1/mycelium",
    ],
    ids=["unreachable", "bad-port", "unknown-driver"],
)
def test_the_database_password_is_never_printed(tmp_path: Path, url: str) -> None:
    result = _start_registry(tmp_path, url)

    assert result.returncode == 2
    assert "cannot prepare database" in result.stderr
    assert "Pa55-w0rd-SECRET" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_postgres_password_is_not_printed(tmp_path: Path, postgres_admin_url: str) -> None:
    # Prepare: the real server, the test role, a password that is not its own
    user_host = postgres_admin_url.split("://", 1)[1].split("@", 1)
    role = user_host[0].split(":", 1)[0]
    url = f"postgresql+psycopg://{role}:Wr0ng-SECRET-pw@{user_host[1]}"

    result = _start_registry(tmp_path, url)

    assert result.returncode == 2
    assert "password authentication failed" in result.stderr
    assert "Wr0ng-SECRET-pw" not in result.stdout + result.stderr

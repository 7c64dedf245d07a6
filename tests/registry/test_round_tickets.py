"""Round credentials: tickets for a group's current members, its round key for its host only."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import httpx
import pytest

from registry.schemas import open_round_ticket
from tests.registry.helpers import create_group, register
from tests.support.registry_proc import RegistryProcess


def _key(c: httpx.Client, gid: int, headers: dict[str, str]) -> bytes:
    r = c.post(f"/groups/{gid}/round-key", headers=headers)
    assert r.status_code == 200, r.text
    return base64.urlsafe_b64decode(r.json()["key"])


def test_members_get_tickets_that_the_hosts_key_opens(sqlite_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=sqlite_registry.url, timeout=20) as c:
        # Prepare: host and member of one group, a stranger outside it
        host, h_host = register(c)
        gid = create_group(c, h_host, capacity=3)
        member, h_member = register(c)
        assert c.post("/groups/join", headers=h_member, json={"group_id": gid}).status_code == 200
        _, h_stranger = register(c)
        assert c.post(f"/groups/{gid}/round-ticket", headers=h_member).status_code == 409  # no host
        claim = c.post(f"/groups/{gid}/host", headers=h_host, json={"address": "127.0.0.1:1"})
        epoch = claim.json()["host_epoch"]

        # Execute
        ticket = c.post(f"/groups/{gid}/round-ticket", headers=h_member)
        key = _key(c, gid, h_host)

        # Assert: the ticket names the member, the group and the epoch; the key opens it
        assert ticket.status_code == 200, ticket.text
        claims = open_round_ticket(ticket.json()["ticket"], key)
        assert (claims.node_id, claims.group_id, claims.host_epoch) == (member, gid, epoch)
        # Only members get tickets; only the host gets the key; no token, no credential
        assert c.post(f"/groups/{gid}/round-ticket", headers=h_stranger).status_code == 403
        assert c.post(f"/groups/{gid}/round-key", headers=h_member).status_code == 403
        assert c.post(f"/groups/{gid}/round-key", headers=h_stranger).status_code == 403
        assert c.post(f"/groups/{gid}/round-ticket").status_code == 401
        assert c.post("/groups/999999/round-ticket", headers=h_member).status_code == 404

        # A new host (new epoch) gets a new key: the old one opens none of its tickets
        c.post("/groups/leave", headers=h_host)
        c.post(f"/groups/{gid}/host", headers=h_member, json={"address": "127.0.0.1:2"})
        fresh = c.post(f"/groups/{gid}/round-ticket", headers=h_member).json()["ticket"]
        with pytest.raises(ValueError, match="MAC does not match"):
            open_round_ticket(fresh, key)
        assert open_round_ticket(fresh, _key(c, gid, h_member)).host_epoch == epoch + 1


def test_the_round_secret_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    # Prepare: a host's key before a restart
    data = tmp_path / "r"
    with RegistryProcess(data) as reg, httpx.Client(base_url=reg.url, timeout=20) as c:
        _, h = register(c)
        gid = create_group(c, h)
        c.post(f"/groups/{gid}/host", headers=h, json={"address": "127.0.0.1:1"})
        before = _key(c, gid, h)

    # Execute: the same data dir, a new process
    with RegistryProcess(data) as reg, httpx.Client(base_url=reg.url, timeout=20) as c:
        after = _key(c, gid, h)

    # Assert: tickets issued before the restart still open; the secret is owner-only
    assert after == before
    mode = stat.S_IMODE((data / "round-secret").stat().st_mode)
    assert mode == 0o600

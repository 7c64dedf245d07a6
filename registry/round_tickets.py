"""Round credentials: the keys and tickets that admit members, and only members, to a
group's Flower rounds.

The registry keeps one secret (``round-secret`` in its data dir, mode 0600, created once
by whichever worker comes first, so every worker and every restart agree). A group's
round key for host epoch ``e`` is ``HMAC-SHA256(secret, "mycelium round key v1|<group>|<e>")``:
only the group's current host is given it (``POST /groups/{id}/round-key``), and it is
worthless once the hosting changes. A current member asks for a ticket
(``POST /groups/{id}/round-ticket``): its node id, group, the group's host epoch and an
expiry, MACed with that key (format: ``registry.schemas.sign_round_ticket``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from sqlalchemy.orm import Session

from registry.errors import ConflictError, ForbiddenError, NotFoundError
from registry.models import Group, Node
from registry.schemas import RoundKey, RoundTicket, RoundTicketClaims, sign_round_ticket

__all__ = ["SECRET_FILE", "issue_round_key", "issue_round_ticket", "load_secret", "round_key"]

SECRET_FILE = "round-secret"
_SECRET_BYTES = 32


@functools.cache
def _load(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(_SECRET_BYTES))
        try:
            os.link(draft, path)  # atomic: the first worker's secret wins, whole
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    secret = bytes.fromhex(path.read_text().strip())
    if len(secret) < 16:
        raise ValueError(f"{path}: round secret shorter than 16 bytes")
    return secret


def load_secret(data_dir: Path) -> bytes:
    """The registry's round secret from ``data_dir/round-secret``, created (0600) if absent.

    Raises ``OSError`` when the file cannot be read or made, ``ValueError`` when it holds
    no hex secret of at least 16 bytes.
    """
    return _load((data_dir / SECRET_FILE).resolve())


def round_key(secret: bytes, group_id: int, host_epoch: int) -> bytes:
    """Group ``group_id``'s 32-byte round key for host epoch ``host_epoch``."""
    label = f"mycelium round key v1|{group_id}|{host_epoch}".encode()
    return hmac.new(secret, label, hashlib.sha256).digest()


def _group(session: Session, group_id: int) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise NotFoundError(f"no group {group_id}")
    return group


def _check_member(caller: Node, group_id: int) -> None:
    if caller.group_id != group_id or caller.status != "active":
        raise ForbiddenError(f"only current members of group {group_id} get its round credentials")


def issue_round_ticket(
    session: Session, *, caller: Node, group_id: int, secret: bytes, ttl_s: float
) -> RoundTicket:
    """A ticket for ``caller``'s part in the group's rounds under its current host, valid
    ``ttl_s`` seconds. NotFoundError: no such group; ForbiddenError: the caller is not an
    active member; ConflictError: the group has no host yet (claim it first)."""
    group = _group(session, group_id)
    _check_member(caller, group_id)
    epoch = group.host_epoch or 0
    if group.host_node_id is None or epoch < 1:
        raise ConflictError(f"group {group_id} has no host yet; claim the hosting first")
    claims = RoundTicketClaims(
        group_id=group_id, node_id=caller.id, host_epoch=epoch, expires_at=time.time() + ttl_s
    )
    ticket = sign_round_ticket(claims, round_key(secret, group_id, epoch))
    return RoundTicket(**claims.model_dump(), ticket=ticket)


def issue_round_key(session: Session, *, caller: Node, group_id: int, secret: bytes) -> RoundKey:
    """The group's round key for its current host epoch, for its current host only.
    NotFoundError: no such group; ForbiddenError: the caller is not its active host."""
    group = _group(session, group_id)
    _check_member(caller, group_id)
    epoch = group.host_epoch or 0
    if group.host_node_id != caller.id or epoch < 1:
        raise ForbiddenError(f"only the host of group {group_id} gets its round key")
    key = round_key(secret, group_id, epoch)
    return RoundKey(group_id=group_id, host_epoch=epoch, key=base64.urlsafe_b64encode(key).decode())

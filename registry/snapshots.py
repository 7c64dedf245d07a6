"""What a domain's snapshots must be: its model signature, and the checks every upload passes.

A domain's signature is set once. The first group created with a declared
``model_signature`` sets it; when none was ever declared, the domain's first snapshot that
decodes and holds only finite values sets it (trust on first use: until then, the first
uploader decides the domain's model). After that, a declaration that differs is refused
(409), and so is an upload that does not fit it (422), before its array data is read.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from sqlalchemy import CursorResult
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from registry import wire
from registry.errors import ConflictError, InvalidError
from registry.events import EventType, record_event
from registry.models import DomainSignature, utcnow
from registry.schemas import ModelSignatureJSON
from registry.wire import ModelSignature

__all__ = [
    "check_declaration",
    "check_upload",
    "declare_signature",
    "domain_signature",
    "learn_signature",
    "parse_declaration",
    "record_rejection",
]

Source = Literal["declared", "first_upload"]


NO_VALUES = "a model with no values cannot be a domain's model"


def parse_declaration(
    declared: ModelSignatureJSON | None, *, max_model_bytes: int
) -> ModelSignature | None:
    """A request's ``model_signature`` as a ``ModelSignature`` (None when not given).

    Raises ``InvalidError`` when it is not a signature (an unknown dtype, repeated names)
    or when one snapshot of that model could not fit in ``max_model_bytes``.
    """
    if declared is None:
        return None
    try:
        signature = ModelSignature.from_json(declared.model_dump())
    except wire.WireError as exc:
        raise InvalidError(f"model_signature: {exc}") from exc
    if signature.nbytes == 0:
        raise InvalidError(f"model_signature: {NO_VALUES}")
    if signature.max_blob_bytes > max_model_bytes:
        raise InvalidError(
            f"model_signature: a model of {signature.nbytes:,} bytes does not fit this "
            f"registry's limit of {max_model_bytes:,} bytes per snapshot"
        )
    return signature


def domain_signature(session: Session, *, domain: str) -> DomainSignature | None:
    """The domain's signature row, or None while it has none."""
    return session.get(DomainSignature, domain)


def _differs(row: DomainSignature, signature: ModelSignature) -> str | None:
    """None when ``signature`` fits the domain's, else the reason, naming the difference."""
    known = ModelSignature.from_json(row.signature)
    diff = known.difference(signature)
    return None if diff is None else f"domain '{row.domain}' uses a model of {diff}"


def learn_signature(
    session: Session,
    *,
    domain: str,
    signature: ModelSignature,
    source: Source,
    declared_by: str,
) -> str | None:
    """Make ``signature`` the domain's if it has none; None when it is (now) the domain's,
    else the reason it is not (the first difference).

    Safe against a concurrent first declaration: the insert does nothing when another
    transaction set the domain's signature first, and that one is compared instead.
    """
    values = {
        "domain": domain,
        "signature": signature.to_json(),
        "max_bytes": signature.max_blob_bytes,
        "source": source,
        "declared_by": declared_by,
        "declared_at": utcnow(),
    }
    # The registry runs on PostgreSQL or SQLite; both spell "insert unless it exists".
    dialect_insert = (
        postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    stmt = dialect_insert(DomainSignature).values(values).on_conflict_do_nothing()
    inserted = cast(CursorResult[Any], session.execute(stmt)).rowcount
    if inserted:
        record_event(
            session,
            EventType.SIGNATURE_LEARNED,
            node_id=declared_by,
            domain=domain,
            source=source,
            tensors=len(signature.tensors),
            max_bytes=signature.max_blob_bytes,
        )
    row = session.get(DomainSignature, domain, populate_existing=True)
    assert row is not None  # inserted, or inserted by another transaction
    return _differs(row, signature)


def declare_signature(
    session: Session, *, domain: str, signature: ModelSignature, declared_by: str
) -> None:
    """A group's declaration: sets the domain's signature when it has none; ConflictError
    naming the first difference when it has another."""
    reason = learn_signature(
        session, domain=domain, signature=signature, source="declared", declared_by=declared_by
    )
    if reason is not None:
        raise ConflictError(reason)


def check_declaration(session: Session, *, domain: str, signature: ModelSignature) -> None:
    """A node's declaration at registration: only checked, never stored; ConflictError
    naming the first difference when the domain has another signature."""
    row = domain_signature(session, domain=domain)
    reason = None if row is None else _differs(row, signature)
    if reason is not None:
        raise ConflictError(reason)


def check_upload(
    data: bytes, *, domain: str, known: ModelSignature | None, max_bytes: int
) -> ModelSignature:
    """The signature of an uploaded snapshot, once it decodes (bounded: ``known``'s shapes
    and exact dtypes when the domain has a signature, ``max_bytes`` always) and holds only
    finite values.

    Raises ``InvalidError`` with the reason: not a snapshot (compressed, pickle, torn),
    arrays over the cap, another model than the domain's, NaN or infinity.
    """
    try:
        weights = wire.bytes_to_weights(data, known, max_bytes=max_bytes)
        wire.check_finite(weights)
    except wire.SignatureMismatchError as exc:
        raise InvalidError(f"domain '{domain}' uses a model of {exc.difference}") from exc
    except wire.WireError as exc:
        raise InvalidError(str(exc)) from exc
    if known is not None:
        return known
    learned = ModelSignature.of(weights)
    if learned.nbytes == 0:
        raise InvalidError(f"Not a model: {NO_VALUES}")
    return learned


def record_rejection(
    session: Session,
    *,
    node_id: str,
    group_id: int,
    round_: int,
    reason: str,
    size: int,
    sha256: str | None,
) -> None:
    """Record a refused upload as a ``snapshot_rejected`` event (``size`` in bytes, at least
    what was received; ``sha256`` None when the body was refused before it was read)."""
    record_event(
        session,
        EventType.SNAPSHOT_REJECTED,
        node_id=node_id,
        group_id=group_id,
        round=round_,
        reason=reason,
        size=size,
        sha256=sha256,
    )

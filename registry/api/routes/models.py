"""Routes for group model snapshots: binary upload by members, download by anyone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from registry import crud, snapshots
from registry.api.deps import DatabaseDep, SettingsDep, StoreDep, TokenDep
from registry.api.reads import IfNoneMatchHeader
from registry.db import Database
from registry.errors import InvalidError
from registry.readcache import etag_matches
from registry.schemas import ModelInfo
from registry.settings import RegistrySettings
from registry.storage import TooLargeError
from registry.wire import ModelSignature

router = APIRouter(prefix="/groups", tags=["models"])

GroupIdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
RoundQuery = Annotated[int, Query(ge=0, le=2**31 - 1, description="Round of this snapshot.")]

_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@dataclass(frozen=True)
class _Upload:
    """One upload: who sends which round to which group, and what its domain expects."""

    db: Database
    group_id: int
    round: int
    node_id: str
    domain: str
    known: ModelSignature | None
    limit: int
    registry_limit: int

    @classmethod
    def authorize(
        cls,
        db: Database,
        settings: RegistrySettings,
        *,
        token: str | None,
        group_id: int,
        round_: int,
    ) -> _Upload:
        """The upload of a member of the group; AuthError, NotFoundError or ForbiddenError."""
        with db.read() as session:
            caller = crud.authenticate(session, token=token)
            group = crud.authorize_upload(
                session,
                caller=caller,
                group_id=group_id,
                round_=round_,
                max_round_jump=settings.max_round_jump,
            )
            row = snapshots.domain_signature(session, domain=group.domain)
        known = None if row is None else ModelSignature.from_json(row.signature)
        limit = (
            settings.max_model_bytes
            if row is None
            else min(settings.max_model_bytes, row.max_bytes)
        )
        return cls(
            db, group_id, round_, caller.id, group.domain, known, limit, settings.max_model_bytes
        )

    def too_large(self, size: int) -> HTTPException:
        """413 for a body of ``size`` bytes or more, recorded; names the domain's model when
        its size is the limit."""
        reason = f"model exceeds the limit of {self.limit} bytes"
        if self.known is not None and self.limit < self.registry_limit:
            reason += f": domain '{self.domain}' uses a model of {self.known.describe()}"
        self.record(reason, size=size, sha256=None)
        return HTTPException(413, reason)

    def refuse(self, tmp: FilePath, reason: str, *, size: int, sha256: str) -> InvalidError:
        """422 for received bytes, recorded; the bytes are removed."""
        tmp.unlink(missing_ok=True)
        self.record(reason, size=size, sha256=sha256)
        return InvalidError(reason)

    def record(self, reason: str, *, size: int, sha256: str | None) -> None:
        """A ``snapshot_rejected`` event, in a transaction of its own."""
        with self.db.write() as session:
            snapshots.record_rejection(
                session,
                node_id=self.node_id,
                group_id=self.group_id,
                round_=self.round,
                reason=reason,
                size=size,
                sha256=sha256,
            )

    def check(self, tmp: FilePath, *, size: int) -> ModelSignature:
        """The signature of the received bytes (``snapshots.check_upload``); InvalidError."""
        if size == 0:
            raise InvalidError("empty model body")
        return snapshots.check_upload(
            tmp.read_bytes(), domain=self.domain, known=self.known, max_bytes=self.limit
        )


@router.put(
    "/{group_id}/model",
    response_model=ModelInfo,
    openapi_extra=_BINARY_BODY,
    responses={401: {}, 403: {}, 404: {}, 409: {}, 411: {}, 413: {}, 422: {}},
)
async def upload_model(
    request: Request,
    db: DatabaseDep,
    store: StoreDep,
    settings: SettingsDep,
    token: TokenDep,
    group_id: GroupIdPath,
    round: RoundQuery,
) -> ModelInfo:
    """Upload the group's model snapshot for a round (members only; raw bytes body); 422 with
    the reason, recorded as a `snapshot_rejected` event, when it does not decode, is not the
    domain's model or holds NaN/inf. The domain's first good snapshot sets its model when
    no group declared one (trust on first use)."""
    # Refuse before reading a byte from a caller who may not upload.
    upload = await run_in_threadpool(
        _Upload.authorize, db, settings, token=token, group_id=group_id, round_=round
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > upload.limit:
        raise await run_in_threadpool(upload.too_large, int(declared))
    try:
        tmp, sha, size = await store.receive(request.stream(), upload.limit)
    except TooLargeError:
        raise await run_in_threadpool(upload.too_large, upload.limit + 1) from None

    def commit(signature: ModelSignature) -> tuple[ModelInfo, list[str]]:
        rel = store.place(tmp, group_id=group_id, round_=round, sha256=sha)
        try:
            with db.write() as session:
                caller = crud.authenticate(session, token=token)
                if upload.known is None:
                    reason = snapshots.learn_signature(
                        session,
                        domain=upload.domain,
                        signature=signature,
                        source="first_upload",
                        declared_by=caller.id,
                    )
                    if reason is not None:  # another model was set meanwhile
                        raise InvalidError(reason)
                snap, created, stale = crud.record_snapshot(
                    session,
                    caller=caller,
                    group_id=group_id,
                    round_=round,
                    sha256=sha,
                    size=size,
                    path=rel,
                    keep=settings.model_history,
                    max_round_jump=settings.max_round_jump,
                )
                info = ModelInfo.model_validate(snap)
        except BaseException:
            store.delete([rel])
            raise
        if not created and snap.path != rel:
            stale.append(rel)
        return info, stale

    try:
        signature = await run_in_threadpool(upload.check, tmp, size=size)
        info, stale = await run_in_threadpool(commit, signature)
    except InvalidError as exc:
        raise await run_in_threadpool(
            upload.refuse, tmp, exc.reason, size=size, sha256=sha
        ) from None
    store.delete(stale)
    return info


_MODEL_HEADERS = {
    "ETag": {
        "description": "The snapshot's SHA-256 in quotes: a strong entity tag (RFC 9110 8.8.3).",
        "schema": {"type": "string"},
    },
    "X-Model-Round": {"description": "The snapshot's round.", "schema": {"type": "integer"}},
    "X-Model-Sha256": {
        "description": "The snapshot's SHA-256 (hex).",
        "schema": {"type": "string"},
    },
}


@router.get(
    "/{group_id}/model",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The model bytes.",
            "headers": _MODEL_HEADERS,
        },
        304: {
            "description": "Not Modified: the snapshot is still the one `If-None-Match` names; "
            "no body.",
            "headers": _MODEL_HEADERS,
        },
        404: {},
    },
)
def download_model(
    db: DatabaseDep,
    store: StoreDep,
    group_id: GroupIdPath,
    round: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """Download the latest model snapshot (or a given round's); headers carry round and hash.

    The `ETag` is the snapshot's SHA-256 in quotes; a request whose `If-None-Match` names it
    (or is `*`) gets `304 Not Modified` with the same headers and no body, so a node that
    holds the snapshot fetches its bytes once per change."""
    with db.read() as session:
        snap = crud.latest_snapshot(session, group_id=group_id, round_=round)
    headers = {
        "X-Model-Round": str(snap.round),
        "X-Model-Sha256": snap.sha256,
        "ETag": f'"{snap.sha256}"',
    }
    if etag_matches(if_none_match, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    path = store.path(snap.path)
    if not path.exists():
        raise HTTPException(404, f"model file for group {group_id} round {snap.round} is missing")
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


@router.get("/{group_id}/model/info", response_model=ModelInfo, responses={404: {}})
def model_info(
    db: DatabaseDep,
    group_id: GroupIdPath,
    round: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> ModelInfo:
    """Metadata of the group's latest snapshot: round, sha256, size, uploader."""
    with db.read() as session:
        return ModelInfo.model_validate(
            crud.latest_snapshot(session, group_id=group_id, round_=round)
        )

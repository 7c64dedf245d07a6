"""Routes for group model snapshots: binary upload by members, download by anyone."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse

from registry import crud
from registry.api.deps import DatabaseDep, SettingsDep, StoreDep, TokenDep
from registry.schemas import ModelInfo
from registry.storage import TooLargeError

router = APIRouter(prefix="/groups", tags=["models"])

GroupIdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
RoundQuery = Annotated[int, Query(ge=0, le=2**31 - 1, description="Round of this snapshot.")]

_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.put(
    "/{group_id}/model",
    response_model=ModelInfo,
    openapi_extra=_BINARY_BODY,
    responses={401: {}, 403: {}, 404: {}, 409: {}, 411: {}, 413: {}},
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
    """Upload the group's model snapshot for a round (members only; raw bytes body)."""
    from starlette.concurrency import run_in_threadpool

    def authorize() -> None:
        with db.read() as session:
            caller = crud.authenticate(session, token=token)
            crud.check_member(session, caller=caller, group_id=group_id)

    # Refuse before reading a byte from a caller who may not upload.
    await run_in_threadpool(authorize)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_model_bytes:
        raise HTTPException(413, f"model exceeds the limit of {settings.max_model_bytes} bytes")
    try:
        tmp, sha, size = await store.receive(request.stream(), settings.max_model_bytes)
    except TooLargeError as exc:
        raise HTTPException(413, str(exc)) from exc
    if size == 0:
        tmp.unlink(missing_ok=True)
        raise HTTPException(422, "empty model body")

    def commit() -> tuple[ModelInfo, list[str]]:
        rel = store.place(tmp, group_id=group_id, round_=round, sha256=sha)
        try:
            with db.write() as session:
                caller = crud.authenticate(session, token=token)
                snap, created, stale = crud.record_snapshot(
                    session,
                    caller=caller,
                    group_id=group_id,
                    round_=round,
                    sha256=sha,
                    size=size,
                    path=rel,
                    keep=settings.model_history,
                )
                info = ModelInfo.model_validate(snap)
        except BaseException:
            store.delete([rel])
            raise
        if not created and snap.path != rel:
            stale.append(rel)
        return info, stale

    info, stale = await run_in_threadpool(commit)
    store.delete(stale)
    return info


@router.get(
    "/{group_id}/model",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The model bytes."},
        404: {},
    },
)
def download_model(
    db: DatabaseDep,
    store: StoreDep,
    group_id: GroupIdPath,
    round: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> FileResponse:
    """Download the latest model snapshot (or a given round's); headers carry round and hash."""
    with db.read() as session:
        snap = crud.latest_snapshot(session, group_id=group_id, round_=round)
    path = store.path(snap.path)
    if not path.exists():
        raise HTTPException(404, f"model file for group {group_id} round {snap.round} is missing")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={
            "X-Model-Round": str(snap.round),
            "X-Model-Sha256": snap.sha256,
            "ETag": f'"{snap.sha256}"',
        },
    )


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

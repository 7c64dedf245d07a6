"""Routes for sibling links between groups (meta-federation), for viz and the dashboard."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from registry import siblings
from registry.api.deps import DatabaseDep
from registry.schemas import DOMAIN_PATTERN, GroupLinkPublic, GroupLinksPublic

router = APIRouter(prefix="/links", tags=["groups"])


@router.get("", response_model=GroupLinksPublic)
def list_links(
    db: DatabaseDep,
    domain: Annotated[str | None, Query(pattern=DOMAIN_PATTERN, max_length=64)] = None,
) -> GroupLinksPublic:
    """Every sibling link between live groups, by measuring group then sibling; `domain`
    keeps that domain's."""
    with db.read() as session:
        rows = siblings.list_links(session, domain=domain)
        return GroupLinksPublic(links=[GroupLinkPublic.model_validate(r) for r in rows])

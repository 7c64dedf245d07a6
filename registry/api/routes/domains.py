"""Routes for domains: the model signature every group of a domain trains."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from registry import snapshots
from registry.api.deps import DatabaseDep
from registry.errors import NotFoundError
from registry.schemas import DOMAIN_PATTERN, DomainSignaturePublic

router = APIRouter(prefix="/domains", tags=["domains"])

DomainPath = Annotated[str, Path(pattern=DOMAIN_PATTERN, max_length=64)]


@router.get("/{domain}/model-signature", response_model=DomainSignaturePublic, responses={404: {}})
def get_model_signature(db: DatabaseDep, domain: DomainPath) -> DomainSignaturePublic:
    """The domain's model signature (tensors, size bound, who set it and how); 404 while none
    was declared or learned from a first good snapshot."""
    with db.read() as session:
        row = snapshots.domain_signature(session, domain=domain)
        if row is None:
            raise NotFoundError(
                f"domain '{domain}' has no model signature yet: none was declared and no "
                "snapshot was uploaded"
            )
        return DomainSignaturePublic.model_validate(row)

"""Routes for the reward ledger: a round's contributions in, entries and balances out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from registry import crud, ledger
from registry.api.deps import DatabaseDep, PageDep, SettingsDep, TokenDep
from registry.schemas import (
    Balance,
    BalancesPublic,
    ContributionsIn,
    EvaluationReportIn,
    LedgerEntryPublic,
    LedgerPublic,
    PerformanceReportIn,
    RoundEvaluationPublic,
    RoundEvaluationsPublic,
    RoundRewards,
)

router = APIRouter(tags=["ledger"])

GroupIdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
RoundPath = Annotated[int, Path(ge=0, le=2**31 - 1)]
NodeIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]


@router.post(
    "/groups/{group_id}/rounds/{round}/contributions",
    response_model=RoundRewards,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": RoundRewards}, 401: {}, 403: {}, 404: {}, 409: {}},
)
def submit_contributions(
    db: DatabaseDep,
    settings: SettingsDep,
    token: TokenDep,
    group_id: GroupIdPath,
    round: RoundPath,
    body: ContributionsIn,
    response: Response,
) -> RoundRewards:
    """The group's host reports every member's contribution to a round; the registry credits
    the smaller of it and what the members' own evaluations imply, pays once per node (201;
    a retry returns them, 200), and caps the round by its reported improvement."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        entries, created = ledger.pay_round(
            session,
            caller=caller,
            group_id=group_id,
            round_=round,
            body=body,
            scale=settings.reward_scale,
            flag_margin=settings.flag_margin,
        )
        out = RoundRewards(
            group_id=group_id,
            round=round,
            created=created,
            entries=[LedgerEntryPublic.model_validate(e) for e in entries],
        )
    for entry in out.entries:  # flagged round after round: out of the group, for a while
        if entry.reason == ledger.REASON_FLAGGED:
            with db.write() as session:
                ledger.quarantine_member(
                    session,
                    node_id=entry.node_id,
                    group_id=group_id,
                    flags=settings.quarantine_flags,
                    duration_s=settings.quarantine_s,
                )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return out


@router.put(
    "/groups/{group_id}/rounds/{round}/evaluations",
    response_model=RoundEvaluationPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": RoundEvaluationPublic}, 401: {}, 403: {}, 404: {}, 409: {}},
)
def report_evaluation(
    db: DatabaseDep,
    settings: SettingsDep,
    token: TokenDep,
    group_id: GroupIdPath,
    round: RoundPath,
    body: EvaluationReportIn,
    response: Response,
) -> RoundEvaluationPublic:
    """A member reports its losses, on its own validation data, on a round's models
    (201; the same report again, 200; different figures for the same round, 409). With
    `accuracy`, the new model's accuracy there is also stored as the member's performance
    report for the round, in the same transaction (as `PUT /groups/{id}/performance`
    would; not again when the report is a repeat)."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        stored, created = crud.report_evaluation(
            session,
            caller=caller,
            group_id=group_id,
            round_=round,
            body=body,
            max_round_jump=settings.max_round_jump,
        )
        if created and body.accuracy is not None:
            crud.report_performance(
                session,
                caller=caller,
                group_id=group_id,
                body=PerformanceReportIn(
                    value=body.accuracy, round=round, num_examples=body.num_examples
                ),
                max_round_jump=settings.max_round_jump,
            )
        out = RoundEvaluationPublic.model_validate(stored)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return out


@router.get("/groups/{group_id}/rounds/{round}/evaluations", response_model=RoundEvaluationsPublic)
def list_round_evaluations(
    db: DatabaseDep, group_id: GroupIdPath, round: RoundPath
) -> RoundEvaluationsPublic:
    """Every member's evaluation of a round: the evidence the ledger pays by."""
    with db.read() as session:
        rows = crud.round_evaluations(session, group_id=group_id, round_=round)
        data = [RoundEvaluationPublic.model_validate(r) for r in rows]
    return RoundEvaluationsPublic(data=data, count=len(data))


@router.get("/ledger", response_model=LedgerPublic)
# The incentive project's path for the same list: an alias, kept out of the schema.
@router.get("/api/incentives/ledger", response_model=LedgerPublic, include_in_schema=False)
def list_ledger(
    db: DatabaseDep,
    page: PageDep,
    node_id: Annotated[str | None, Query(max_length=128)] = None,
    group_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    round: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> LedgerPublic:
    """Ledger entries, newest first; filter by node, group or round."""
    with db.read() as session:
        rows, count, total = ledger.list_entries(
            session,
            node_id=node_id,
            group_id=group_id,
            round_=round,
            offset=page.offset,
            limit=page.limit,
        )
        return LedgerPublic(
            data=[LedgerEntryPublic.model_validate(e) for e in rows],
            count=count,
            total_amount=total,
        )


@router.get("/ledger/balances", response_model=BalancesPublic)
@router.get(
    "/api/incentives/ledger/balances", response_model=BalancesPublic, include_in_schema=False
)
def list_balances(db: DatabaseDep, page: PageDep) -> BalancesPublic:
    """Every node's balance (sum of its entries), highest first."""
    with db.read() as session:
        rows, count = ledger.list_balances(session, offset=page.offset, limit=page.limit)
        return BalancesPublic(data=rows, count=count)


@router.get("/nodes/{node_id}/balance", response_model=Balance, responses={404: {}})
def node_balance(db: DatabaseDep, node_id: NodeIdPath) -> Balance:
    """A node's token balance: the sum of its ledger entries."""
    with db.read() as session:
        return ledger.balance(session, node_id=node_id)

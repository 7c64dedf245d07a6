"""Request and response models of the registry API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

__all__ = [
    "DEFAULT_METRIC",
    "EventPublic",
    "EventsPublic",
    "GroupCreate",
    "GroupDetail",
    "GroupPublic",
    "GroupsPublic",
    "Heartbeat",
    "JoinRequest",
    "LeaveRequest",
    "LeaveResult",
    "MembershipPublic",
    "ModelInfo",
    "NodePublic",
    "NodeRegister",
    "NodeRegistered",
    "NodesPublic",
    "PerformanceReportIn",
    "PerformanceReportPublic",
    "PerformanceReportsPublic",
]

DEFAULT_METRIC = "accuracy"
MAX_ID = 2**31 - 1

NodeId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$", max_length=128)
]
Domain = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", max_length=64)]
GroupName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$", max_length=64)
]
MetricName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$", max_length=64)]
GroupId = Annotated[int, Field(ge=1, le=MAX_ID)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Scalar = (
    Annotated[str, StringConstraints(max_length=256)]
    | bool
    | Annotated[int, Field(ge=-(2**53), le=2**53)]
    | Finite
)


class _In(BaseModel):
    """Request bodies reject unknown fields so typos fail loudly."""

    model_config = ConfigDict(extra="forbid")


class GroupCreate(_In):
    """Create a learning group; `join` puts the creator in it at once."""

    name: GroupName
    domain: Domain
    max_capacity: int = Field(default=5, ge=1, le=10_000)
    description: str | None = Field(default=None, max_length=1000)
    join: bool = False


class NodeRegister(_In):
    """Register a node, or update a registered one (with its token)."""

    node_id: NodeId
    address: str = Field(min_length=1, max_length=256)
    domain: Domain
    capabilities: dict[Annotated[str, StringConstraints(max_length=64)], Scalar] = Field(
        default_factory=dict, max_length=32
    )


class JoinRequest(_In):
    """Join (or migrate to) a group; `node_id`, if given, must be the caller."""

    group_id: GroupId
    node_id: NodeId | None = None


class LeaveRequest(_In):
    """Leave the current group."""

    node_id: NodeId | None = None


class PerformanceReportIn(_In):
    """One performance figure of a member for a round."""

    metric: MetricName = DEFAULT_METRIC
    value: Finite
    round: int = Field(ge=0, le=MAX_ID)
    num_examples: int = Field(default=1, ge=1, le=2**31 - 1)

    @field_validator("value")
    @classmethod
    def _bounded(cls, v: float) -> float:
        if abs(v) > 1e12:
            raise ValueError("value must be within ±1e12")
        return v


class Heartbeat(_In):
    """Liveness plus the node's own latest metrics."""

    metrics: dict[MetricName, Finite] = Field(default_factory=dict, max_length=32)


class NodePublic(BaseModel):
    """A node as the network sees it (never its token)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    address: str
    domain: str
    capabilities: dict[str, Any]
    status: str
    group_id: int | None
    registered_at: dt.datetime
    last_heartbeat: dt.datetime
    metrics: dict[str, Any]


class NodesPublic(BaseModel):
    """A page of nodes and the total count."""

    data: list[NodePublic]
    count: int


class NodeRegistered(BaseModel):
    """Registration result; `token` is shown once, on first registration."""

    node: NodePublic
    token: str | None = None
    created: bool


class GroupPublic(BaseModel):
    """A group with its live metrics."""

    id: int
    name: str
    domain: str
    description: str | None
    max_capacity: int
    member_count: int
    performance: dict[str, float]
    accuracy: float | None
    round: int
    model_round: int | None
    created_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    archived: bool


class GroupDetail(GroupPublic):
    """A group with its members."""

    members: list[NodePublic]


class GroupsPublic(BaseModel):
    """A page of groups and the total count."""

    data: list[GroupPublic]
    count: int


class MembershipPublic(BaseModel):
    """Result of a join: where the node is now and where it came from."""

    node_id: str
    group_id: int
    previous_group_id: int | None
    migrated: bool


class LeaveResult(BaseModel):
    """Result of a leave."""

    node_id: str
    group_id: int


class PerformanceReportPublic(BaseModel):
    """A stored performance report."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    group_id: int
    node_id: str
    metric: str
    value: float
    round: int
    num_examples: int
    created_at: dt.datetime


class PerformanceReportsPublic(BaseModel):
    """A page of reports, with the group's current performance."""

    data: list[PerformanceReportPublic]
    count: int
    group_performance: dict[str, float]


class ModelInfo(BaseModel):
    """Metadata of a stored model snapshot."""

    model_config = ConfigDict(from_attributes=True)

    group_id: int
    round: int
    sha256: str
    size: int
    uploaded_by: str
    created_at: dt.datetime


class EventPublic(BaseModel):
    """One state change."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    node_id: str | None
    group_id: int | None
    data: dict[str, Any]
    created_at: dt.datetime


class EventsPublic(BaseModel):
    """A page of events after an id; `last_id` is where to continue from."""

    data: list[EventPublic]
    last_id: int

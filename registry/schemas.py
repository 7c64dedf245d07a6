"""Request and response models of the registry API."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    field_validator,
    model_validator,
)

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_METRIC",
    "DOMAIN_PATTERN",
    "NODE_ID_PATTERN",
    "Balance",
    "BalancesPublic",
    "ContributionIn",
    "ContributionsIn",
    "DomainSignaturePublic",
    "EvaluationReportIn",
    "EventPublic",
    "EventsPublic",
    "GroupCreate",
    "GroupDetail",
    "GroupHost",
    "GroupLinkPublic",
    "GroupLinksPublic",
    "GroupMerge",
    "GroupMoved",
    "GroupPublic",
    "GroupSplit",
    "GroupsPublic",
    "Heartbeat",
    "HostClaim",
    "JoinRequest",
    "LeaveRequest",
    "LeaveResult",
    "LedgerEntryPublic",
    "LedgerPublic",
    "MembershipPublic",
    "ModelInfo",
    "ModelSignatureJSON",
    "NodePublic",
    "NodeRegister",
    "NodeRegistered",
    "NodeToken",
    "NodesPublic",
    "PerformanceReportIn",
    "PerformanceReportPublic",
    "PerformanceReportsPublic",
    "RoundEvaluationPublic",
    "RoundEvaluationsPublic",
    "RoundKey",
    "RoundRewards",
    "RoundTicket",
    "RoundTicketClaims",
    "SiblingFitIn",
    "SiblingsReport",
    "SimulationCreate",
    "SimulationPublic",
    "SimulationsPublic",
    "TensorSpecJSON",
    "TokenRotate",
    "open_round_ticket",
    "sign_round_ticket",
]

DEFAULT_METRIC = "accuracy"
# Flower strategies a group can aggregate with (node.federation.strategies names the same).
AGGREGATIONS = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
Aggregation = Literal["fedavg", "fedmedian", "fedtrimmedavg", "krum"]
# How a group's members train together: Flower rounds, or gossip (node.p2p.gossip).
GroupMode = Literal["rounds", "gossip"]
# Labels of a round's models a member reports its losses on.
EVALUATION_LABEL_PATTERN = r"^(new|start|all|without:[A-Za-z0-9][A-Za-z0-9._:@-]{0,127})$"
EvaluationLabel = Annotated[str, StringConstraints(pattern=EVALUATION_LABEL_PATTERN)]

# Metrics that are fractions of examples: a report outside [0, 1] is refused.
FRACTION_METRICS = frozenset({"accuracy"})
MAX_ID = 2**31 - 1

NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
NodeId = Annotated[str, StringConstraints(pattern=NODE_ID_PATTERN, max_length=128)]
DOMAIN_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
Domain = Annotated[str, StringConstraints(pattern=DOMAIN_PATTERN, max_length=64)]
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


# --- model signatures (the JSON form of registry.wire.ModelSignature) ------------------

TensorName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:/\[\]-]{0,127}$", max_length=128)
]


class TensorSpecJSON(_In):
    """One tensor: its `state_dict` key (`w0`, `w1`, ... when unknown), shape, exact dtype."""

    name: TensorName
    shape: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(max_length=32)
    dtype: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9]{0,15}$")] = Field(
        description="A numpy dtype name: bool, int8 ... int64, uint8 ... uint64, float16, "
        "float32, float64, complex64, complex128."
    )


class ModelSignatureJSON(_In):
    """A model's signature: its tensors in `state_dict` order."""

    tensors: list[TensorSpecJSON] = Field(min_length=1, max_length=4096)


class DomainSignaturePublic(BaseModel):
    """The model every group of a domain trains, and how the registry learned it."""

    model_config = ConfigDict(from_attributes=True)

    domain: str
    signature: ModelSignatureJSON
    max_bytes: int = Field(description="Upper bound in bytes of one snapshot of this model.")
    source: Literal["declared", "first_upload"]
    declared_by: str | None
    declared_at: dt.datetime


class GroupCreate(_In):
    """Create a learning group; `join` puts the creator in it at once.

    `model_signature` declares the model the group trains: the domain's first declaration
    becomes the domain's signature; one that differs from it is refused (409).
    """

    name: GroupName
    domain: Domain
    max_capacity: int = Field(default=5, ge=1, le=10_000)
    description: str | None = Field(default=None, max_length=1000)
    join: bool = False
    model_signature: ModelSignatureJSON | None = None
    aggregation: Aggregation = "fedavg"
    mode: GroupMode = Field(
        default="rounds",
        description="`rounds` (Flower) or `gossip`: gossip nodes discover their domain's "
        "gossip groups by this field.",
    )


def _public_key(value: str | None) -> str | None:
    """32 raw bytes (an Ed25519 public key) as base64 or hex, to standard base64; else 422."""
    if value is None:
        return None
    raw: bytes | None = None
    if len(value) == 64:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = None
    if raw is None:
        try:
            text = value.replace("-", "+").replace("_", "/").rstrip("=")
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("public_key must be 32 bytes as base64 or hex") from None
    if len(raw) != 32:
        raise ValueError(f"public_key must be 32 bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


class NodeRegister(_In):
    """Register a node, or update a registered one (with its token).

    `model_signature`, when given, is checked against the domain's (409 when they differ);
    it is not stored. `public_key`: the node's Ed25519 key for signing P2P/gossip frames,
    32 bytes as base64 or hex (422 otherwise), stored and published as base64.
    """

    node_id: NodeId
    address: str = Field(min_length=1, max_length=256)
    domain: Domain
    capabilities: dict[Annotated[str, StringConstraints(max_length=64)], Scalar] = Field(
        default_factory=dict, max_length=32
    )
    model_signature: ModelSignatureJSON | None = None
    public_key: str | None = Field(default=None, max_length=100)

    @field_validator("public_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return _public_key(v)


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

    @model_validator(mode="after")
    def _a_fraction_for_accuracy(self) -> PerformanceReportIn:
        if self.metric in FRACTION_METRICS and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"{self.metric} is a fraction: 0 to 1, got {self.value}")
        return self


class HostClaim(_In):
    """Claim the hosting of a group's aggregation, at an address members can reach."""

    address: str = Field(min_length=1, max_length=256)


class GroupHost(BaseModel):
    """Who hosts a group's aggregation; `epoch` rises with every change of host."""

    group_id: int
    host_node_id: str | None
    host_address: str | None
    host_epoch: int
    claimed: bool


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
    public_key: str | None = None


class NodesPublic(BaseModel):
    """A page of nodes and the total count."""

    data: list[NodePublic]
    count: int


class NodeRegistered(BaseModel):
    """Registration result; `token` is the registry-generated token, shown once, on a first
    registration without a client-chosen secret (null otherwise)."""

    node: NodePublic
    token: str | None = None
    created: bool


class TokenRotate(BaseModel):
    """A node's new credential: a client-chosen secret, or none for a generated token."""

    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(
        default=None,
        max_length=512,
        description="The node's new secret (at least 32 URL-safe characters: A-Z a-z 0-9 - _); "
        "omit it and the registry generates one and returns it once.",
    )


class NodeToken(BaseModel):
    """A rotated credential: `token` is the generated one (null when the caller chose it)."""

    node_id: str
    token: str | None = None


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
    host_node_id: str | None = None
    host_address: str | None = None
    host_epoch: int = 0
    aggregation: str = "fedavg"
    mode: str = "rounds"


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
    domain: str | None = None  # its group's domain, else its node's; None for neither
    data: dict[str, Any]
    created_at: dt.datetime


class EventsPublic(BaseModel):
    """A page of events after an id; `last_id` is where to continue from."""

    data: list[EventPublic]
    last_id: int


# --- sibling links, merge and split ------------------------------------------------------

# Most siblings one group may report at once.
MAX_SIBLINGS = 64
# Strict: a fit is a JSON number, not true or "0.5".
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class SiblingFitIn(_In):
    """One sibling as the reporting group measured it on its members' validation data."""

    group_id: GroupId
    fit: Fraction = Field(description="The sibling's model's accuracy there, in [0, 1].")
    own_fit: Fraction = Field(description="The group's own model's accuracy there, in [0, 1].")
    loss: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = Field(
        default=None, description="The sibling's model's mean loss there (>= 0, finite)."
    )
    examples: int = Field(ge=1, le=2**31 - 1, description="Validation examples behind it.")


class SiblingsReport(_In):
    """A group's whole set of sibling links for a round: it replaces the previous set."""

    round: int = Field(ge=0, le=MAX_ID)
    # Required: a body without it must not wipe the group's links ([] does, on purpose).
    siblings: list[SiblingFitIn] = Field(max_length=MAX_SIBLINGS)

    @model_validator(mode="after")
    def _distinct(self) -> SiblingsReport:
        twice = sorted(i for i, n in Counter(s.group_id for s in self.siblings).items() if n > 1)
        if twice:
            raise ValueError(f"siblings listed more than once: {twice}")
        return self


class GroupLinkPublic(BaseModel):
    """A directed sibling link: group `group_id` measured group `sibling_id`'s model."""

    model_config = ConfigDict(from_attributes=True)

    group_id: int
    sibling_id: int
    fit: float
    own_fit: float
    loss: float | None
    examples: int
    round: int
    updated_at: dt.datetime


class GroupLinksPublic(BaseModel):
    """Sibling links between live groups."""

    links: list[GroupLinkPublic]


class GroupMerge(_In):
    """Merge the group into a sibling: every member moves to `into`."""

    into: GroupId


class GroupSplit(_In):
    """Split the listed members off into a new group named `name`."""

    members: list[NodeId] = Field(min_length=1, max_length=10_000)
    name: GroupName

    @model_validator(mode="after")
    def _distinct(self) -> GroupSplit:
        twice = sorted(m for m, n in Counter(self.members).items() if n > 1)
        if twice:
            raise ValueError(f"members listed more than once: {twice}")
        return self


class GroupMoved(BaseModel):
    """The group that received members (by a merge or a split) and who moved, by node id."""

    group: GroupPublic
    moved: list[str]


# --- ledger ------------------------------------------------------------------------

ContributionMethod = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$", max_length=32)
]


class ContributionIn(_In):
    """One member's measured contribution to a round (loss without it minus loss with it)."""

    node_id: NodeId
    contribution: Finite = Field(ge=-1e6, le=1e6)
    num_examples: int | None = Field(default=None, ge=0, le=2**31 - 1)


class ContributionsIn(_In):
    """Every member's contribution to one group round, sent once by the group's host."""

    method: ContributionMethod = "leave_one_out"
    contributions: list[ContributionIn] = Field(min_length=1, max_length=1000)

    @field_validator("contributions")
    @classmethod
    def _one_per_node(cls, v: list[ContributionIn]) -> list[ContributionIn]:
        ids = [c.node_id for c in v]
        if len(set(ids)) != len(ids):
            raise ValueError("each node may appear once per round")
        return v


class LedgerEntryPublic(BaseModel):
    """One ledger entry: a node's reward for one group round."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    node_id: str
    group_id: int
    round: int
    contribution: float
    claimed: float | None = None
    amount: float
    reason: str
    method: str
    submitted_by: str
    created_at: dt.datetime


class EvaluationReportIn(_In):
    """A member's losses, on its own validation data, on each of a round's models."""

    num_examples: int = Field(ge=1, le=2**31 - 1)
    losses: dict[EvaluationLabel, Finite] = Field(min_length=1, max_length=1002)
    # The round's new model's accuracy on the same data: given, it is also stored as the
    # member's performance report for the round (one request instead of two).
    accuracy: Finite | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("losses")
    @classmethod
    def _bounded_losses(cls, v: dict[str, float]) -> dict[str, float]:
        if any(not 0.0 <= x <= 1e6 for x in v.values()):
            raise ValueError("a loss is between 0 and 1e6")
        return v


class RoundEvaluationPublic(BaseModel):
    """A member's stored evaluation of one round."""

    model_config = ConfigDict(from_attributes=True)

    node_id: str
    group_id: int
    round: int
    num_examples: int
    losses: dict[str, float]
    created_at: dt.datetime


class RoundEvaluationsPublic(BaseModel):
    """Every member's evaluation of one round."""

    data: list[RoundEvaluationPublic]
    count: int


class RoundRewards(BaseModel):
    """The entries of one group round; `created` is False when all were already paid."""

    group_id: int
    round: int
    created: bool
    entries: list[LedgerEntryPublic]


class LedgerPublic(BaseModel):
    """A page of ledger entries (newest first), the total count and amount of the filter."""

    data: list[LedgerEntryPublic]
    count: int
    total_amount: float


class Balance(BaseModel):
    """A node's balance: the sum of its ledger entries."""

    node_id: str
    balance: float
    entries: int
    last_entry_at: dt.datetime | None = None


class BalancesPublic(BaseModel):
    """Balances of every node with entries, highest first."""

    data: list[Balance]
    count: int


# --- simulations ---------------------------------------------------------------------


class SimulationCreate(_In):
    """Parameters of a simulation the registry runs against itself (in-process runtime)."""

    nodes: int = Field(default=4, ge=1, le=64)
    rounds: int = Field(default=5, ge=1, le=200)
    dataset: Literal["digits", "fashion"] = "digits"
    partition: Literal["iid", "dirichlet", "clustered"] = "clustered"
    clusters: int = Field(default=2, ge=1, le=16)
    cluster_mode: Literal["rotation", "label_permutation"] = "rotation"
    policy: Literal["local", "reported"] = "local"
    strategy: Literal["fedavg", "fedmedian", "fedtrimmedavg", "krum"] = "fedavg"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    samples_per_node: int | None = Field(default=None, ge=10, le=100_000)
    local_only: bool = Field(default=False, description="Also train each node alone to compare.")


class SimulationPublic(BaseModel):
    """A simulation record."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    params: dict[str, Any]
    status: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    metrics: dict[str, Any] | None
    summary: dict[str, Any] | None = None
    error: str | None


class SimulationsPublic(BaseModel):
    """A page of simulation records (newest first, without summaries)."""

    data: list[SimulationPublic]
    count: int


# --- round tickets: who may join a group's Flower rounds ----------------------------
#
# The registry gives a group's current host the group's round key for its host epoch
# (``RoundKey``) and each current member a ticket (``RoundTicket``): the claims below,
# MACed with that key. The member shows the ticket when it connects to the host's Flower
# server; the host checks it with ``open_round_ticket``. The format:
# ``v1.<base64url(claims JSON)>.<base64url(HMAC-SHA256(key, "v1.<claims>"))>``.

ROUND_TICKET_VERSION = "v1"
MAX_ROUND_TICKET_CHARS = 1024


class RoundTicketClaims(BaseModel):
    """What a round ticket vouches for: `node_id` is a member of `group_id` while
    `host_epoch` is the group's hosting, until `expires_at` (Unix time, seconds)."""

    model_config = ConfigDict(extra="forbid")

    group_id: GroupId
    node_id: NodeId
    host_epoch: int = Field(ge=1)
    expires_at: Finite


class RoundTicket(RoundTicketClaims):
    """A member's credential for its group's Flower rounds (`ticket`: the signed claims)."""

    ticket: str = Field(max_length=MAX_ROUND_TICKET_CHARS)


class RoundKey(BaseModel):
    """A group's round key for one host epoch, given to its host only: the HMAC-SHA256 key
    (32 bytes, urlsafe base64) that checks the members' round tickets of that epoch."""

    group_id: int
    host_epoch: int
    key: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_round_ticket(claims: RoundTicketClaims, key: bytes) -> str:
    """``claims`` as a ticket string MACed with ``key`` (the group's round key)."""
    body = f"{ROUND_TICKET_VERSION}.{_b64(claims.model_dump_json().encode())}"
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def open_round_ticket(ticket: str, key: bytes) -> RoundTicketClaims:
    """The claims of ``ticket`` when its MAC is ``key``'s.

    Checks the form and the MAC only (the caller checks group, epoch, expiry, membership).
    Raises ``ValueError`` saying why: too long, malformed, another version, a MAC that does
    not match, or claims that do not parse.
    """
    if len(ticket) > MAX_ROUND_TICKET_CHARS:
        raise ValueError(f"ticket longer than {MAX_ROUND_TICKET_CHARS} characters")
    parts = ticket.split(".")
    if len(parts) != 3:
        raise ValueError("ticket is not <version>.<claims>.<mac>")
    version, payload, mac_text = parts
    if version != ROUND_TICKET_VERSION:
        raise ValueError(f"ticket version {version[:16]!r} is not {ROUND_TICKET_VERSION!r}")
    try:
        mac = _unb64(mac_text)
        raw = _unb64(payload)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"ticket is not base64url: {exc}") from exc
    expected = hmac.new(key, f"{version}.{payload}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise ValueError("ticket MAC does not match this group's round key")
    try:
        return RoundTicketClaims.model_validate(json.loads(raw))
    except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError
        raise ValueError(f"ticket claims unreadable: {exc}") from exc

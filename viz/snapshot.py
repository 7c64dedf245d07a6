"""Snapshots: the registry's state at one moment, as plain data that frames are drawn from."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from node.errors import NotFoundError
from node.registry_client import RegistryClient
from registry.schemas import EventPublic, GroupLinkPublic, GroupPublic, NodePublic

__all__ = [
    "FORMAT",
    "EventRecord",
    "GroupState",
    "Migration",
    "NodeState",
    "SiblingLink",
    "Snapshot",
    "SnapshotFetcher",
    "file_header",
    "iter_snapshots",
    "load_snapshots",
    "save_snapshots",
]

FORMAT = "mycelium-viz-snapshots"
VERSION = 1
ACCURACY = "accuracy"
MIGRATED = "migrated"
REGROUPED = ("groups_merged", "group_split")  # the registry moved a group's members
# Timestamps are kept as the registry's JSON spells them (the schema's serializer).
_DATETIME = TypeAdapter(dt.datetime)


@dataclass(frozen=True)
class GroupState:
    """A live group: its members, accuracy and round."""

    id: int
    name: str
    members: tuple[str, ...]
    accuracy: float | None
    round: int
    capacity: int = 0

    @classmethod
    def from_public(cls, group: GroupPublic, members: Iterable[str]) -> GroupState:
        """From the registry's GroupPublic and the ids of its members."""
        return cls(
            id=group.id,
            name=group.name,
            members=tuple(sorted(members)),
            accuracy=group.accuracy,
            round=group.round,
            capacity=group.max_capacity,
        )


@dataclass(frozen=True)
class NodeState:
    """A registered node: where it is, whether it is alive, its own accuracy."""

    id: str
    group_id: int | None
    status: str
    accuracy: float | None

    @property
    def active(self) -> bool:
        """True while the registry counts the node as alive."""
        return self.status == "active"

    @classmethod
    def from_public(cls, node: NodePublic) -> NodeState:
        """From the registry's NodePublic; accuracy is what the node sent in its heartbeats."""
        acc = node.metrics.get(ACCURACY)
        return cls(
            id=node.id,
            group_id=node.group_id,
            status=node.status,
            accuracy=float(acc) if isinstance(acc, int | float) else None,
        )


@dataclass(frozen=True)
class EventRecord:
    """One registry event (EventPublic), with its timestamp kept as text."""

    id: int
    type: str
    node_id: str | None
    group_id: int | None
    data: dict[str, Any]
    created_at: str

    @classmethod
    def from_public(cls, event: EventPublic) -> EventRecord:
        """From the registry's EventPublic; `created_at` as the registry's JSON wrote it."""
        return cls(
            id=event.id,
            type=event.type,
            node_id=event.node_id,
            group_id=event.group_id,
            data=dict(event.data),
            created_at=str(_DATETIME.dump_python(event.created_at, mode="json")),
        )


@dataclass(frozen=True)
class Migration:
    """A node moving from one group to another (from a `migrated` event)."""

    node_id: str
    from_group: int
    to_group: int
    event_id: int


@dataclass(frozen=True)
class SiblingLink:
    """A group-to-group sibling link as the registry records it (GET /links).

    ``fit`` is the sibling's model scored on ``group_id``'s members' validation data
    (accuracy, 0..1), ``own_fit`` the group's own model on the same data; either is None
    when the registry has no score yet. Links are directed: each side records its own.
    """

    group_id: int
    sibling_id: int
    fit: float | None = None
    own_fit: float | None = None

    @classmethod
    def from_public(cls, link: GroupLinkPublic) -> SiblingLink:
        """From the registry's GroupLinkPublic (GET /links)."""
        return cls(
            group_id=link.group_id,
            sibling_id=link.sibling_id,
            fit=link.fit,
            own_fit=link.own_fit,
        )


@dataclass(frozen=True)
class Snapshot:
    """The network at `time` seconds after recording began, plus the events since the last one."""

    index: int
    time: float
    groups: tuple[GroupState, ...]
    nodes: tuple[NodeState, ...]
    events: tuple[EventRecord, ...] = ()
    wall_time: float = 0.0
    links: tuple[SiblingLink, ...] = ()

    @property
    def migrations(self) -> tuple[Migration, ...]:
        """Migrations among this snapshot's new events, oldest first: a node's own move
        (``migrated``), and each member the registry moved when its group merged into a
        sibling (``groups_merged``) or split off (``group_split``)."""
        out = []
        for ev in self.events:
            if ev.group_id is None:
                continue
            if ev.type == MIGRATED and ev.node_id:
                src = ev.data.get("from_group")
                if isinstance(src, int):
                    out.append(Migration(ev.node_id, src, ev.group_id, ev.id))
            elif ev.type in REGROUPED:
                src, moved = ev.data.get("from"), ev.data.get("moved")
                if isinstance(src, int) and isinstance(moved, list):
                    out.extend(
                        Migration(n, src, ev.group_id, ev.id) for n in moved if isinstance(n, str)
                    )
        return tuple(out)

    @property
    def sibling_pairs(self) -> tuple[tuple[int, int, float | None], ...]:
        """Links between live groups as undirected pairs (a < b, best fit of both sides),
        sorted; a link to a group that no longer exists is left out."""
        live = {g.id for g in self.groups}
        pairs: dict[tuple[int, int], float | None] = {}
        for link in self.links:
            a, b = sorted((link.group_id, link.sibling_id))
            if a == b or a not in live or b not in live:
                continue
            fits = [f for f in (pairs.get((a, b)), link.fit) if f is not None]
            pairs[(a, b)] = max(fits) if fits else None
        return tuple((a, b, fit) for (a, b), fit in sorted(pairs.items()))

    @property
    def round(self) -> int:
        """The furthest round any live group has reached."""
        return max((g.round for g in self.groups), default=0)

    @property
    def active_nodes(self) -> tuple[NodeState, ...]:
        """Nodes the registry counts as alive."""
        return tuple(n for n in self.nodes if n.active)

    @property
    def mean_accuracy(self) -> float | None:
        """Mean of the accuracies that active nodes report about themselves."""
        accs = [n.accuracy for n in self.nodes if n.active and n.accuracy is not None]
        return sum(accs) / len(accs) if accs else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the inverse of from_json)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        """From the dict that to_json made."""
        return cls(
            index=int(data["index"]),
            time=float(data["time"]),
            wall_time=float(data.get("wall_time", 0.0)),
            groups=tuple(
                GroupState(**{**g, "members": tuple(g["members"])}) for g in data["groups"]
            ),
            nodes=tuple(NodeState(**n) for n in data["nodes"]),
            events=tuple(EventRecord(**e) for e in data.get("events", ())),
            links=tuple(SiblingLink(**link) for link in data.get("links", ())),
        )


def file_header(registry_url: str | None) -> dict[str, Any]:
    """The first line of a snapshots file."""
    return {"format": FORMAT, "version": VERSION, "registry_url": registry_url}


def save_snapshots(
    path: Path, snapshots: Sequence[Snapshot], *, registry_url: str | None = None
) -> None:
    """Write snapshots as JSON lines: a header line, then one snapshot per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(file_header(registry_url)) + "\n")
        for snap in snapshots:
            fh.write(json.dumps(snap.to_json(), separators=(",", ":")) + "\n")


def _iter_lines(path: Path) -> Iterator[Any]:
    """Each non-blank line parsed as JSON; a line that is not JSON (an interrupted write)
    or not text ends the file."""
    with path.open(encoding="utf-8") as fh:
        try:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return


def load_snapshots(path: Path) -> list[Snapshot]:
    """Read a file written by save_snapshots (or by a Recorder as it went).

    Raises ``ValueError`` naming the file when it is not a snapshot file; a file cut
    short by an interrupted run keeps the snapshots before the cut.
    """
    return list(iter_snapshots(path))


def iter_snapshots(path: Path) -> Iterator[Snapshot]:
    """load_snapshots one snapshot at a time, holding only the current one; the same
    errors, raised when iteration starts."""
    lines = _iter_lines(path)
    header = next(lines, None)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    if int(header.get("version", 0)) > VERSION:
        raise ValueError(f"{path} has format version {header['version']}; this reads {VERSION}")
    for data in lines:
        try:
            snap = Snapshot.from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError):
            return  # a line cut short by an interrupted run ends the file
        yield snap


@dataclass
class SnapshotFetcher:
    """Builds snapshots from the registry through `registry`, remembering which events it
    has seen. A failed fetch raises the client's RegistryClientError and moves no cursor,
    so the next fetch picks up the same events."""

    registry: RegistryClient
    after_id: int = 0
    started: float = field(default_factory=time.monotonic)
    count: int = 0

    def fetch(self) -> Snapshot:
        """One snapshot: events first, so the state read after them is at least as new."""
        events = self.registry.all_events(after_id=self.after_id)
        groups = self.registry.list_groups()
        # Members come from the node list: no GET /groups/{id} per group.
        nodes = {n.id: NodeState.from_public(n) for n in self.registry.all_nodes()}
        members: dict[int, list[str]] = {}
        for n in nodes.values():
            if n.group_id is not None:
                members.setdefault(n.group_id, []).append(n.id)
        links = self._links()
        snap = Snapshot(
            index=self.count,
            time=round(time.monotonic() - self.started, 3),
            wall_time=round(time.time(), 3),
            groups=tuple(
                sorted(
                    (GroupState.from_public(g, members.get(g.id, ())) for g in groups),
                    key=lambda g: g.id,
                )
            ),
            nodes=tuple(sorted(nodes.values(), key=lambda n: n.id)),
            events=tuple(EventRecord.from_public(e) for e in events.data),
            links=links,
        )
        self.after_id = events.last_id
        self.count += 1
        return snap

    def _links(self) -> tuple[SiblingLink, ...]:
        """The registry's sibling links; none from a registry that predates GET /links."""
        try:
            found = self.registry.links()
        except NotFoundError:
            return ()
        return tuple(
            sorted(
                (SiblingLink.from_public(link) for link in found),
                key=lambda k: (k.group_id, k.sibling_id),
            )
        )

"""Frame data: everything one picture shows, derived from a sequence of snapshots (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from viz.layout import Layout, Point, update_layout
from viz.snapshot import Migration, Snapshot

__all__ = [
    "HIGHLIGHT_FRAMES",
    "Frame",
    "FrameBuilder",
    "MigrationMark",
    "Stats",
    "build_frames",
    "iter_frames",
]

PERFORMANCE = "performance_reported"
ACCURACY = "accuracy"
HIGHLIGHT_FRAMES = 3  # migrations, new and expired nodes stay marked this many frames

Series = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class MigrationMark:
    """A migration to draw: where the node came from and went, `age` frames ago."""

    migration: Migration
    source: Point
    target: Point
    age: int


@dataclass(frozen=True)
class Stats:
    """The numbers in the statistics panel."""

    nodes_active: int
    nodes_total: int
    groups: int  # groups with members (an emptied group lives on at the registry a while)
    migrations: int
    best_group: str | None
    best_accuracy: float | None
    mean_accuracy: float | None
    round: int
    elapsed: float


@dataclass(frozen=True)
class Frame:
    """One picture's data: the snapshot, where things are, what changed, the history so far."""

    index: int
    snapshot: Snapshot
    layout: Layout
    group_series: Mapping[int, Series]
    mean_series: Series
    migrations: tuple[MigrationMark, ...]
    new_nodes: Mapping[str, int]
    expired: Mapping[str, tuple[Point, int]]
    stats: Stats


def _with(series: dict[int, float], round_: int, value: float | None) -> None:
    if value is not None:
        series[round_] = value


def _as_series(points: Mapping[int, float]) -> Series:
    return tuple(sorted(points.items()))


class FrameBuilder:
    """Turns snapshots into frames one at a time (for live views); build_frames does it all."""

    def __init__(self) -> None:
        self._layout: Layout | None = None
        self._prev: Snapshot | None = None
        self._history: dict[int, dict[int, float]] = {}
        self._mean: dict[int, float] = {}
        self._migrations = 0
        self._marks: list[MigrationMark] = []
        self._new: dict[str, int] = {}
        self._expired: dict[str, tuple[Point, int]] = {}
        self._count = 0

    def add(self, snap: Snapshot) -> Frame:
        """The frame of the next snapshot."""
        before = self._layout
        layout = self._layout = update_layout(before, snap)
        history = self._history
        # The chart's x axis is the network's round (the furthest group's); a group born
        # later counts its own rounds from 0, so its points shift by the difference.
        offsets = {g.id: snap.round - g.round for g in snap.groups}
        for ev in snap.events:
            if (
                ev.type == PERFORMANCE
                and ev.group_id is not None
                and ev.data.get("metric", ACCURACY) == ACCURACY
                and isinstance(ev.data.get("group_value"), int | float)
            ):
                points = history.setdefault(ev.group_id, {})
                at = int(ev.data.get("round", 0)) + offsets.get(ev.group_id, 0)
                _with(points, at, float(ev.data["group_value"]))
        for g in snap.groups:
            _with(history.setdefault(g.id, {}), snap.round, g.accuracy)
        _with(self._mean, snap.round, snap.mean_accuracy)

        # Age the highlights from earlier frames, then add this frame's.
        self._marks = [
            MigrationMark(m.migration, m.source, m.target, m.age + 1)
            for m in self._marks
            if m.age + 1 < HIGHLIGHT_FRAMES
        ]
        self._new = {n: a + 1 for n, a in self._new.items() if a + 1 < HIGHLIGHT_FRAMES}
        self._expired = {
            n: (p, a + 1) for n, (p, a) in self._expired.items() if a + 1 < HIGHLIGHT_FRAMES
        }
        for mig in snap.migrations:
            self._migrations += 1
            src = _source(before, mig)
            dst = _target(layout, mig)
            if src is not None and dst is not None:
                self._marks.append(MigrationMark(mig, src, dst, 0))
        if self._prev is not None and before is not None:
            old = {n.id: n for n in self._prev.nodes}
            for n in snap.nodes:
                was = old.get(n.id)
                if was is None:
                    self._new[n.id] = 0
                elif was.active and not n.active and n.id in before.positions:
                    self._expired[n.id] = (before.positions[n.id], 0)

        live = {g.id for g in snap.groups}
        rated = [g for g in snap.groups if g.accuracy is not None]
        best = max(rated, key=lambda g: (g.accuracy or 0.0, -g.id), default=None)
        stats = Stats(
            nodes_active=len(snap.active_nodes),
            nodes_total=len(snap.nodes),
            groups=sum(1 for g in snap.groups if g.members),  # as the demo's table counts
            migrations=self._migrations,
            best_group=best.name if best else None,
            best_accuracy=best.accuracy if best else None,
            mean_accuracy=snap.mean_accuracy,
            round=snap.round,
            elapsed=snap.time,
        )
        frame = Frame(
            index=self._count,
            snapshot=snap,
            layout=layout,
            group_series={gid: _as_series(history.get(gid, {})) for gid in sorted(live)},
            mean_series=_as_series(self._mean),
            migrations=tuple(self._marks),
            new_nodes=dict(self._new),
            expired=dict(self._expired),
            stats=stats,
        )
        self._prev = snap
        self._count += 1
        return frame


def build_frames(snapshots: Sequence[Snapshot]) -> list[Frame]:
    """One frame per snapshot, in order; the same snapshots always give the same frames."""
    return list(iter_frames(snapshots))


def iter_frames(snapshots: Iterable[Snapshot]) -> Iterator[Frame]:
    """build_frames one frame at a time, for snapshots read as a stream (a file)."""
    builder = FrameBuilder()
    for snap in snapshots:
        yield builder.add(snap)


def _source(before: Layout | None, mig: Migration) -> Point | None:
    """Where the migrating node was drawn before: its old slot, else its old group's centre."""
    if before is None:
        return None
    slot = before.node_slots.get(mig.node_id)
    if slot is not None and slot[0] == mig.from_group:
        return before.positions[mig.node_id]
    if mig.from_group in before.group_slots:
        return before.centre(mig.from_group)
    return None


def _target(layout: Layout, mig: Migration) -> Point | None:
    slot = layout.node_slots.get(mig.node_id)
    if slot is not None and slot[0] == mig.to_group:
        return layout.positions[mig.node_id]
    if mig.to_group in layout.group_slots:
        return layout.centre(mig.to_group)
    return None

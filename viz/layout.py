"""A stable topology layout: groups keep their place, nodes keep their slot unless they move.

Pure functions on plain data. Group centres sit on fixed hexagonal rings (slot k always
lands on the same point, whatever else exists); members sit on a sunflower spiral around
their group's centre; nodes without a group wait in a "lobby" strip below. A node keeps its
slot from one snapshot to the next and gets a new one only when its group changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from viz.snapshot import Snapshot

__all__ = [
    "GROUP_RADIUS",
    "LOBBY",
    "Layout",
    "group_centre",
    "update_layout",
]

Point = tuple[float, float]
LOBBY: None = None  # the "group" of nodes that belong to none

RING_SPACING = 1.2
GROUP_RADIUS = 0.38
# Hexagon vertices in the order they fill: left/right first suits a wide panel.
_RING0_ANGLES = (180.0, 0.0, 120.0, 300.0, 60.0, 240.0)
_GOLDEN = math.pi * (3.0 - math.sqrt(5.0))
LOBBY_SPACING = 0.11
LOBBY_GAP = 0.32
LOBBY_ROWS = 2
MARGIN = 0.12


def _spread_order(n: int) -> list[int]:
    """Indices 0..n-1 of points on a circle, ordered so each prefix is spread around it."""
    order: list[int] = []
    step = n
    while len(order) < n:
        for i in range(0, n, max(step, 1)):
            if i not in order:
                order.append(i)
        step //= 2
    return order


def group_centre(slot: int) -> Point:
    """Centre of group slot `slot`: ring 0 holds 6 slots, ring k holds 6(k+1)."""
    ring, first = 0, 0
    while slot >= first + 6 * (ring + 1):
        first += 6 * (ring + 1)
        ring += 1
    k = slot - first
    if ring == 0:
        angle = math.radians(_RING0_ANGLES[k])
    else:
        n = 6 * (ring + 1)
        angle = math.pi + 2 * math.pi * _spread_order(n)[k] / n
    r = RING_SPACING * (ring + 1)
    return (round(r * math.cos(angle), 6), round(r * math.sin(angle), 6))


def _ring_of(slot: int) -> int:
    ring, first = 0, 0
    while slot >= first + 6 * (ring + 1):
        first += 6 * (ring + 1)
        ring += 1
    return ring


def node_spacing(capacity: int) -> float:
    """Distance unit of a group's spiral: its capacity fits inside the group's circle."""
    cap = min(max(capacity, 4), 64)
    return 0.85 * GROUP_RADIUS / math.sqrt(cap - 0.5)


def _spiral(centre: Point, spacing: float, slot: int) -> Point:
    r = spacing * math.sqrt(slot + 0.5)
    a = slot * _GOLDEN + math.pi / 2
    return (round(centre[0] + r * math.cos(a), 6), round(centre[1] + r * math.sin(a), 6))


def _lowest_free(taken: Iterable[int]) -> int:
    used = set(taken)
    k = 0
    while k in used:
        k += 1
    return k


@dataclass(frozen=True)
class Layout:
    """Where everything is drawn in one frame, plus what the next frame needs to stay stable."""

    group_slots: Mapping[int, int] = field(default_factory=dict)
    group_colours: Mapping[int, int] = field(default_factory=dict)
    group_spacing: Mapping[int, float] = field(default_factory=dict)
    node_slots: Mapping[str, tuple[int | None, int]] = field(default_factory=dict)
    positions: Mapping[str, Point] = field(default_factory=dict)
    rings: int = 1
    lobby_capacity: int = 0

    def centre(self, group_id: int) -> Point:
        """Centre of a live group."""
        return group_centre(self.group_slots[group_id])

    @property
    def half_width(self) -> float:
        """Half the width of the drawing area (it only grows when a new ring opens)."""
        return RING_SPACING * self.rings + GROUP_RADIUS + MARGIN

    @property
    def lobby_top(self) -> float:
        """y of the lobby's first row."""
        return -(RING_SPACING * self.rings * math.sin(math.radians(60)) + GROUP_RADIUS + LOBBY_GAP)

    @property
    def lobby_width(self) -> float:
        """Width the lobby's rows may use."""
        return 2 * self.half_width - 2 * MARGIN

    @property
    def lobby_spacing(self) -> float:
        """Slot distance in the lobby: shrinks (never grows back) when many nodes wait there."""
        area = self.lobby_width * LOBBY_SPACING * LOBBY_ROWS
        fit = math.sqrt(area / max(self.lobby_capacity, 1))
        spacing = min(LOBBY_SPACING, fit)
        while True:  # exact fit: columns x rows slots must hold the capacity
            cols = max(1, int(self.lobby_width / spacing))
            rows = max(1, int(LOBBY_SPACING * LOBBY_ROWS / spacing + 1e-9))
            if cols * rows >= self.lobby_capacity:
                return spacing
            spacing *= 0.95

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the drawing area."""
        w = self.half_width
        top = RING_SPACING * self.rings * math.sin(math.radians(60)) + GROUP_RADIUS + 0.28
        bottom = self.lobby_top - LOBBY_SPACING * (LOBBY_ROWS - 0.5) - MARGIN
        return (-w, w, bottom, top)

    @property
    def lobby_columns(self) -> int:
        """Nodes per lobby row."""
        return max(1, int(self.lobby_width / self.lobby_spacing))

    def lobby_position(self, slot: int) -> Point:
        """Where lobby slot `slot` is drawn."""
        s = self.lobby_spacing
        row, col = divmod(slot, self.lobby_columns)
        x0 = -self.half_width + MARGIN + s / 2
        top = self.lobby_top + LOBBY_SPACING / 2 - s / 2
        return (round(x0 + col * s, 6), round(top - row * s, 6))

    def spacing(self, group_id: int | None) -> float:
        """The distance between neighbouring slots of a group (or the lobby)."""
        if group_id is None:
            return self.lobby_spacing
        return self.group_spacing.get(group_id, node_spacing(4))


def update_layout(previous: Layout | None, snapshot: Snapshot) -> Layout:
    """The layout of `snapshot`, keeping every place from `previous` that still holds."""
    prev = previous or Layout()

    # Groups: survivors keep slot and colour; new groups take the lowest free ones.
    live = {g.id: g for g in snapshot.groups}
    group_slots = {gid: s for gid, s in prev.group_slots.items() if gid in live}
    colours = {gid: c for gid, c in prev.group_colours.items() if gid in live}
    spacing = {gid: s for gid, s in prev.group_spacing.items() if gid in live}
    for new in sorted(live):
        if new not in group_slots:
            group_slots[new] = _lowest_free(group_slots.values())
            colours[new] = _lowest_free(colours.values())
            spacing[new] = node_spacing(live[new].capacity)
    rings = max([prev.rings, *(_ring_of(s) + 1 for s in group_slots.values())])

    # Nodes: keep (group, slot) when the group is unchanged, else take the lowest free slot.
    where: dict[str, int | None] = {}
    for n in snapshot.nodes:
        gid = n.group_id if n.group_id in live else None
        where[n.id] = gid
    node_slots: dict[str, tuple[int | None, int]] = {}
    taken: dict[int | None, set[int]] = {}
    movers = []
    for nid in sorted(where):
        old = prev.node_slots.get(nid)
        if old is not None and old[0] == where[nid]:
            node_slots[nid] = old
            taken.setdefault(old[0], set()).add(old[1])
        else:
            movers.append(nid)
    for nid in movers:
        gid = where[nid]
        slot = _lowest_free(taken.setdefault(gid, set()))
        taken[gid].add(slot)
        node_slots[nid] = (gid, slot)

    partial = Layout(
        group_slots=group_slots,
        group_colours=colours,
        group_spacing=spacing,
        node_slots=node_slots,
        rings=rings,
        lobby_capacity=max(
            prev.lobby_capacity,
            max((s for g, s in node_slots.values() if g is None), default=-1) + 1,
        ),
    )
    positions: dict[str, Point] = {}
    for nid, (gid, slot) in node_slots.items():
        if gid is None:
            positions[nid] = partial.lobby_position(slot)
        else:
            positions[nid] = _spiral(group_centre(group_slots[gid]), spacing[gid], slot)
    return Layout(
        group_slots=group_slots,
        group_colours=colours,
        group_spacing=spacing,
        node_slots=node_slots,
        positions=positions,
        rings=rings,
        lobby_capacity=partial.lobby_capacity,
    )

"""Sibling links between groups: kept in snapshots, drawn as dashed lines between groups."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import httpx
from matplotlib.lines import Line2D

from node.registry_client import RegistryClient
from tests.support.registry_proc import RegistryProcess
from tests.viz.helpers import SMALL, Network
from viz.frames import build_frames
from viz.layout import GROUP_RADIUS
from viz.render import Renderer
from viz.snapshot import (
    EventRecord,
    GroupState,
    Migration,
    NodeState,
    SiblingLink,
    Snapshot,
    SnapshotFetcher,
    load_snapshots,
    save_snapshots,
)


def _snap(links: tuple[SiblingLink, ...]) -> Snapshot:
    groups = {1: ["a", "b"], 2: ["c", "d"], 3: ["e"]}
    return Snapshot(
        index=0,
        time=0.0,
        groups=tuple(GroupState(g, f"g{g}", tuple(m), 0.5, 2, 4) for g, m in groups.items()),
        nodes=tuple(NodeState(n, g, "active", 0.5) for g, ms in groups.items() for n in ms),
        links=links,
    )


def _dashed_lines(renderer: Renderer) -> list[Line2D]:
    topo = renderer.figure.axes[0]
    return [
        line
        for line in topo.get_lines()
        if line.get_linestyle() not in ("-", "None", "", " ") and len(line.get_xdata()) == 2
    ]


def _touches(point: tuple[float, float], centre: tuple[float, float]) -> bool:
    """True when `point` lies on the rim of the group circle around `centre`."""
    return math.isclose(math.dist(point, centre), GROUP_RADIUS, abs_tol=1e-6)


def test_linked_groups_are_joined_by_one_dashed_line_rim_to_rim() -> None:
    # Prepare: 1 and 2 are siblings (both sides recorded the link); 3 is linked to nobody,
    # and a link to a group that is gone is left out
    snap = _snap(
        (
            SiblingLink(1, 2, fit=0.91, own_fit=0.9),
            SiblingLink(2, 1, fit=0.88, own_fit=0.9),
            SiblingLink(3, 99, fit=0.7),
        )
    )
    frame = build_frames([snap])[0]
    renderer = Renderer(SMALL)

    # Execute
    renderer.draw(frame)

    # Assert: one dashed line, from group 1's rim to group 2's rim
    lines = _dashed_lines(renderer)
    assert len(lines) == 1
    xs, ys = lines[0].get_xdata(), lines[0].get_ydata()
    ends = [(float(xs[0]), float(ys[0])), (float(xs[1]), float(ys[1]))]
    c1, c2 = frame.layout.centre(1), frame.layout.centre(2)
    assert _touches(ends[0], c1) and _touches(ends[1], c2)
    # the label carries the better of the two fits
    texts = [t.get_text() for t in renderer.figure.axes[0].texts]
    assert "fit 91.0%" in texts


def test_without_links_no_dashed_line_is_drawn_and_the_next_frame_drops_old_links() -> None:
    # Prepare: a frame with a link, then one without
    frames = build_frames([_snap((SiblingLink(1, 3, fit=None),)), _snap(())])
    renderer = Renderer(SMALL)

    # Execute / Assert
    renderer.draw(frames[0])
    assert len(_dashed_lines(renderer)) == 1
    renderer.draw(frames[1])
    assert _dashed_lines(renderer) == []


def test_links_survive_the_snapshot_file(tmp_path: Path) -> None:
    # Prepare
    snap = _snap((SiblingLink(1, 2, fit=0.91, own_fit=0.9),))

    # Execute
    save_snapshots(tmp_path / "s.jsonl", [snap])

    # Assert
    assert load_snapshots(tmp_path / "s.jsonl") == [snap]


def test_links_the_registry_records_are_fetched_and_drawn(sqlite_registry: RegistryProcess) -> None:
    # Prepare: three groups over real HTTP; group a records b as its sibling, c is alone
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as http:
        net = Network(http, prefix=f"l{uuid.uuid4().hex[:6]}")
        a, b, c = net.register("a"), net.register("b"), net.register("c")
        ga = net.create_group(a, f"{net.prefix}-a", capacity=3)
        gb = net.create_group(b, f"{net.prefix}-b", capacity=3)
        gc = net.create_group(c, f"{net.prefix}-c", capacity=3)
        net.report_siblings(a, ga, 1, {gb: 0.85})

    # Execute
    with RegistryClient(sqlite_registry.url) as client:
        snap = SnapshotFetcher(client).fetch()
    renderer = Renderer(SMALL)
    frame = build_frames([snap])[0]
    renderer.draw(frame)

    # Assert: the link as recorded, one dashed line between a's and b's circles, none to c
    mine = [k for k in snap.links if k.group_id in (ga, gb, gc)]
    assert mine == [SiblingLink(ga, gb, fit=0.85, own_fit=0.8)]
    drawn = [line.get_gid() for line in _dashed_lines(renderer)]
    assert f"sibling-link:{min(ga, gb)}-{max(ga, gb)}" in drawn
    assert not any(str(gc) in gid.split(":")[1].split("-") for gid in drawn)


def test_members_moved_by_a_merge_or_split_are_drawn_as_migrations() -> None:
    # Prepare: group 3 merged into its sibling 1 (moving e); then d split off 2 into 3
    first = _snap(())
    merged = Snapshot(
        index=1,
        time=1.0,
        groups=tuple(
            GroupState(g, f"g{g}", tuple(m), 0.5, 3, 4)
            for g, m in {1: ["a", "b", "e"], 2: ["c", "d"]}.items()
        ),
        nodes=tuple(
            NodeState(n, g, "active", 0.5)
            for g, ms in {1: ["a", "b", "e"], 2: ["c", "d"]}.items()
            for n in ms
        ),
        events=(
            EventRecord(7, "groups_merged", "e", 1, {"from": 3, "moved": ["e"]}, ""),
            EventRecord(8, "group_split", "c", 3, {"from": 2, "to": 3, "moved": ["d"]}, ""),
        ),
    )

    # Execute
    frames = build_frames([first, merged])

    # Assert: both moves count, and the one into a live group gets an arrow
    assert merged.migrations == (Migration("e", 3, 1, 7), Migration("d", 2, 3, 8))
    assert frames[1].stats.migrations == 2
    assert [m.migration.node_id for m in frames[1].migrations] == ["e"]

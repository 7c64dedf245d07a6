"""Recording a live registry and exporting it: GIF frames, final state, migrations, replay."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import imageio.v3 as iio
import numpy as np
import pytest

from tests.support.registry_proc import RegistryProcess
from tests.viz.helpers import SMALL, Network
from viz.export import ExportResult, export
from viz.frames import Frame, build_frames
from viz.recorder import Recorder
from viz.render import Renderer
from viz.session import SNAPSHOTS_FILE, VizOptions, export_file, run_session
from viz.snapshot import Snapshot, load_snapshots


@dataclass
class Recorded:
    """A scripted run: its snapshots, frames, export and what the registry said at the end."""

    snapshots: list[Snapshot]
    frames: list[Frame]
    result: ExportResult
    groups_at_end: list[dict[str, Any]]
    members_at_end: dict[int, list[str]]
    migrant: str
    source: int
    target: int
    snapshots_file: Path


@pytest.fixture(scope="module")
def recorded(
    sqlite_registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recorded]:
    """Two groups train for four rounds; a node migrates after round 2; a late node joins."""
    out = tmp_path_factory.mktemp("viz")
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as client:
        net = Network(client, prefix=f"v{uuid.uuid4().hex[:6]}")
        # Snapshots are taken by hand after each step, so the test knows what each one holds.
        rec = Recorder(sqlite_registry.url, interval=60, path=out / "snapshots.jsonl")
        rec.start()  # opens the file; the thread's first poll is snapshot 0
        a = [net.register(f"a{i}") for i in range(3)]
        b = [net.register(f"b{i}") for i in range(3)]
        ga = net.create_group(a[0], f"{net.prefix}-alpha")
        gb = net.create_group(b[0], f"{net.prefix}-beta")
        for n in a[1:]:
            net.join(n, ga)
        for n in b[1:]:
            net.join(n, gb)
        rec.snapshot()
        for r in range(1, 5):
            if r == 3:
                moved = net.join(a[2], gb)
                assert moved["migrated"] is True
                late = net.register("late")
                net.join(late, ga)
            for n in [*a[:2], *([a[2]] if r < 3 else [])]:
                net.report(n, ga, r, 0.3 + 0.1 * r)
            for n in [*b, *([a[2]] if r >= 3 else [])]:
                net.report(n, gb, r, 0.5 + 0.08 * r)
            rec.snapshot()
        snapshots = rec.stop(final=True)
        groups_at_end = client.get("/groups").json()["data"]
        members_at_end = {
            g["id"]: sorted(m["id"] for m in client.get(f"/groups/{g['id']}").json()["members"])
            for g in groups_at_end
        }
    frames = build_frames(snapshots)
    result = export(frames, out, fps=5, size=SMALL)
    yield Recorded(
        snapshots,
        frames,
        result,
        groups_at_end,
        members_at_end,
        a[2],
        ga,
        gb,
        out / "snapshots.jsonl",
    )


def test_export_writes_a_gif_of_several_different_frames_and_a_png(recorded: Recorded) -> None:
    # Execute
    gif = iio.imread(recorded.result.gif, index=None)
    png = iio.imread(recorded.result.png)

    # Assert
    assert gif.shape[0] == len(recorded.frames) > 1
    assert gif.shape[1:3] == (SMALL[1], SMALL[0])
    assert any(not np.array_equal(gif[0], g) for g in gif[1:])
    assert sum(not np.array_equal(x, y) for x, y in itertools.pairwise(gif)) >= 3
    assert png.shape[:2] == (SMALL[1], SMALL[0])
    assert recorded.result.ms_per_frame > 0


def test_last_frame_shows_the_groups_and_members_the_registry_reports(recorded: Recorded) -> None:
    # Execute
    last = recorded.frames[-1]
    shown = {g.id: (g.name, sorted(g.members), g.accuracy, g.round) for g in last.snapshot.groups}

    # Assert: the same groups, members, accuracy and round as GET /groups{,/id}
    expected = {
        g["id"]: (g["name"], recorded.members_at_end[g["id"]], g["accuracy"], g["round"])
        for g in recorded.groups_at_end
    }
    assert shown == expected
    assert {g.id: len(g.members) for g in last.snapshot.groups} == {
        g["id"]: g["member_count"] for g in recorded.groups_at_end
    }
    # ...and every member is drawn inside its group's circle
    for g in last.snapshot.groups:
        cx, cy = last.layout.centre(g.id)
        for m in g.members:
            x, y = last.layout.positions[m]
            assert (x - cx) ** 2 + (y - cy) ** 2 < 0.4**2


def test_migration_during_the_run_appears_in_the_frames(recorded: Recorded) -> None:
    # Execute
    marked = [
        (f.index, m.migration)
        for f in recorded.frames
        for m in f.migrations
        if m.age == 0 and m.migration.node_id == recorded.migrant
    ]

    # Assert: one frame draws the arrow source → target; the node then sits in the target
    assert len(marked) == 1
    index, mig = marked[0]
    assert (mig.from_group, mig.to_group) == (recorded.source, recorded.target)
    frame = recorded.frames[index]
    before = recorded.frames[index - 1]
    assert before.layout.node_slots[recorded.migrant][0] == recorded.source
    assert frame.layout.node_slots[recorded.migrant][0] == recorded.target
    assert frame.stats.migrations == 1
    assert recorded.frames[-1].stats.migrations == 1


def test_nodes_keep_their_place_unless_they_migrate(recorded: Recorded) -> None:
    # Execute
    moved = set()
    for prev, cur in zip(recorded.frames, recorded.frames[1:], strict=False):
        for nid, pos in cur.layout.positions.items():
            if nid in prev.layout.positions and prev.layout.positions[nid] != pos:
                moved.add(nid)

    # Assert: nodes move from lobby into a group once, and the migrant moves once more
    for prev, cur in zip(recorded.frames, recorded.frames[1:], strict=False):
        for nid, pos in cur.layout.positions.items():
            if (
                nid in prev.layout.positions
                and prev.layout.node_slots[nid][0] == (cur.layout.node_slots[nid][0])
            ):
                assert prev.layout.positions[nid] == pos
    assert recorded.migrant in moved


def test_replay_from_the_saved_file_reproduces_identical_frames(recorded: Recorded) -> None:
    # Prepare: the frames as drawn during the run
    original = [Renderer(SMALL).render(f) for f in recorded.frames]

    # Execute: load the file the recorder wrote as it went, and draw again
    replayed = load_snapshots(recorded.snapshots_file)
    again = [Renderer(SMALL).render(f) for f in build_frames(replayed)]

    # Assert
    assert replayed == recorded.snapshots
    assert len(again) == len(original)
    for x, y in zip(original, again, strict=True):
        assert np.array_equal(x, y)


def test_background_recorder_polls_until_stopped(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # Prepare
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as client:
        net = Network(client, prefix=f"bg{uuid.uuid4().hex[:6]}")
        path = tmp_path / "snaps.jsonl"

        # Execute
        with Recorder(sqlite_registry.url, interval=0.1, path=path) as rec:
            node = net.register("solo")
            gid = net.create_group(node, f"{net.prefix}-solo")
            net.report(node, gid, 1, 0.9)
            time.sleep(0.5)

    # Assert: several snapshots, the last one sees the group, and the file matches
    snaps = rec.snapshots
    assert len(snaps) >= 3
    assert [s.index for s in snaps] == list(range(len(snaps)))
    last_groups = {g.id: g for g in snaps[-1].groups}
    assert last_groups[gid].members == (node,)
    assert last_groups[gid].accuracy == pytest.approx(0.9)
    assert {n.id: n.accuracy for n in snaps[-1].nodes}[node] == pytest.approx(0.9)
    assert load_snapshots(path) == snaps
    events = [e for s in snaps for e in s.events]
    assert len({e.id for e in events}) == len(events)  # every event exactly once


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_recorder_keeps_polling_through_a_registry_restart(tmp_path: Path) -> None:
    # Prepare: a recorder polling a registry that will stop and come back on the same port
    reg = RegistryProcess(tmp_path / "registry").start()
    back = RegistryProcess(tmp_path / "registry", port=reg.port)
    path = tmp_path / "snaps.jsonl"
    rec = Recorder(reg.url, interval=0.1, path=path).start()
    try:
        _wait_for(lambda: len(rec.snapshots) >= 1, "a first snapshot")

        # Execute: the registry goes away, then returns and a node registers
        reg.stop()
        _wait_for(lambda: rec.errors >= 2, "failed polls while the registry is away")
        back.start()
        with httpx.Client(base_url=back.url, timeout=10) as client:
            node = Network(client, prefix="restart").register("late")
        _wait_for(lambda: node in {n.id for n in rec.snapshots[-1].nodes}, "the late node")
    finally:
        snaps = rec.stop()
        back.stop()
        reg.stop()

    # Assert: polling went on after the outage, with no event lost or repeated
    assert rec.errors >= 2
    assert [s.index for s in snaps] == list(range(len(snaps)))
    events = [e for s in snaps for e in s.events]
    assert len({e.id for e in events}) == len(events)
    assert any(e.node_id == node and e.type == "registered" for e in events)
    assert load_snapshots(path) == snaps


def test_a_long_recording_keeps_a_window_in_memory_and_everything_in_its_file(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # Prepare: a recorder that holds 3 snapshots in memory
    path = tmp_path / "snaps.jsonl"
    with httpx.Client(base_url=sqlite_registry.url, timeout=10) as client:
        net = Network(client, prefix=f"win{uuid.uuid4().hex[:6]}")
        rec = Recorder(sqlite_registry.url, interval=60, path=path, keep=3).start()

        # Execute: ten more snapshots, a node registering before each
        for i in range(10):
            net.register(f"n{i}")
            rec.snapshot()
        in_memory = rec.stop(final=True)

    # Assert: memory holds the newest 3; the file every snapshot, each event once
    on_file = load_snapshots(path)
    assert rec.taken == len(on_file) >= 11
    assert [s.index for s in on_file] == list(range(rec.taken))
    assert in_memory == rec.snapshots == on_file[-3:]
    registered = [e.node_id for s in on_file for e in s.events if e.type == "registered"]
    assert [f"{net.prefix}-n{i}" for i in range(10)] == [
        n for n in registered if n and n.startswith(net.prefix)
    ]
    # Export from the file, as a stream, draws what exporting every snapshot at once draws
    streamed = export_file(path, VizOptions(output=tmp_path / "streamed", size=SMALL, fps=5))
    whole = export(build_frames(on_file), tmp_path / "whole", fps=5, size=SMALL)
    assert streamed["frames_total"] == rec.taken == whole.frames_total
    assert streamed["frame_indices"] == list(whole.frame_indices)
    assert (tmp_path / "streamed" / whole.gif.name).read_bytes() == whole.gif.read_bytes()
    assert np.array_equal(iio.imread(tmp_path / "streamed" / whole.png.name), iio.imread(whole.png))


def test_a_session_exports_every_snapshot_though_it_keeps_two_in_memory(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # Prepare: once recording, five snapshots are taken, then the session is told to end
    options = VizOptions(output=tmp_path / "out", size=SMALL, live=False, keep_snapshots=2)
    stop = threading.Event()

    def five_then_stop(recorder: Recorder) -> None:
        for _ in range(5):
            recorder.snapshot()
        stop.set()

    # Execute
    summary = run_session(sqlite_registry.url, options, stop=stop, on_ready=five_then_stop)

    # Assert: the GIF covers the whole file (five and the final one, at least), not memory
    taken = len(load_snapshots(tmp_path / "out" / SNAPSHOTS_FILE))
    assert taken >= 6
    assert summary["snapshots"] == summary["frames_total"] == taken

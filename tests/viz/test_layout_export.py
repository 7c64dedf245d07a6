"""Pure parts: the stable layout, frame selection, the GIF size limit."""

from __future__ import annotations

import itertools
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from tests.viz.helpers import SMALL
from viz.export import export, select_indices
from viz.frames import build_frames
from viz.layout import group_centre, update_layout
from viz.snapshot import GroupState, NodeState, Snapshot
from viz.synthetic import synthetic_run


def _snap(index: int, groups: dict[int, list[str]], loose: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot(
        index=index,
        time=float(index),
        groups=tuple(GroupState(g, f"g{g}", tuple(m), None, 0, 5) for g, m in groups.items()),
        nodes=tuple(
            sorted(
                [NodeState(n, g, "active", None) for g, ms in groups.items() for n in ms]
                + [NodeState(n, None, "active", None) for n in loose],
                key=lambda n: n.id,
            )
        ),
    )


def test_group_centres_are_fixed_and_distinct() -> None:
    # Execute
    centres = [group_centre(k) for k in range(30)]

    # Assert: the same slot always lands on the same point; no two groups overlap
    assert centres == [group_centre(k) for k in range(30)]
    for i, a in enumerate(centres):
        for b in centres[i + 1 :]:
            assert (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 > 1.0


def test_new_groups_and_nodes_do_not_move_the_others() -> None:
    # Prepare
    first = update_layout(None, _snap(0, {1: ["a", "b"], 2: ["c"]}, loose=("d",)))

    # Execute: a group appears, a node joins, another leaves for the lobby
    second = update_layout(first, _snap(1, {1: ["a", "b", "e"], 2: [], 3: ["d"]}, loose=("c",)))

    # Assert
    assert second.centre(1) == first.centre(1)
    assert second.centre(2) == first.centre(2)
    assert second.positions["a"] == first.positions["a"]
    assert second.positions["b"] == first.positions["b"]
    assert second.positions["c"] != first.positions["c"]
    assert second.node_slots["d"][0] == 3


def test_a_migrant_leaves_a_hole_that_others_do_not_fill() -> None:
    # Prepare
    first = update_layout(None, _snap(0, {1: ["a", "b", "c"], 2: ["x"]}))

    # Execute: b migrates to group 2
    second = update_layout(first, _snap(1, {1: ["a", "c"], 2: ["b", "x"]}))

    # Assert
    assert second.positions["a"] == first.positions["a"]
    assert second.positions["c"] == first.positions["c"]
    assert second.positions["x"] == first.positions["x"]
    assert second.node_slots["b"] == (2, 1)


def test_select_indices_spreads_evenly_and_keeps_the_last() -> None:
    assert select_indices(10, 20) == list(range(10))
    assert select_indices(10, 1) == [9]
    assert select_indices(0, 5) == []
    picked = select_indices(1000, 50)
    assert len(picked) == 50 and picked[0] == 0 and picked[-1] == 999
    gaps = {b - a for a, b in itertools.pairwise(picked)}
    assert max(gaps) - min(gaps) <= 1


def test_a_long_session_is_thinned_to_stay_under_the_size_limit(tmp_path: Path) -> None:
    # Prepare: 40 frames that would not fit into 150 kB
    frames = build_frames(synthetic_run(12, 3, 40, seed=3))
    limit = 150_000

    # Execute
    result = export(frames, tmp_path, fps=8, size=SMALL, max_bytes=limit)

    # Assert
    assert result.gif.stat().st_size == result.gif_bytes <= limit
    assert 1 < result.frames_written < len(frames)
    assert result.frame_indices[-1] == len(frames) - 1
    gif = iio.imread(result.gif, index=None)
    assert gif.shape[0] == result.frames_written
    assert not np.array_equal(gif[0], gif[-1])


def test_a_group_born_late_is_charted_on_the_network_s_rounds() -> None:
    # Group 1 has run 10 rounds when group 2 is created; two snapshots later group 2 has
    # run its own rounds 1 and 2 while the network reached rounds 11 and 12
    def snap(index: int, old_round: int, new_round: int | None) -> Snapshot:
        groups = [GroupState(1, "g1", ("a",), 0.8, old_round, 5)]
        if new_round is not None:
            groups.append(GroupState(2, "g2", ("b",), 0.5 + new_round / 10, new_round, 5))
        return Snapshot(index=index, time=float(index), groups=tuple(groups), nodes=())

    frames = build_frames([snap(0, 10, None), snap(1, 11, 1), snap(2, 12, 2)])

    series = frames[-1].group_series
    assert [r for r, _ in series[1]] == [10, 11, 12]
    assert [r for r, _ in series[2]] == [11, 12]  # not 1, 2: it was not there yet


def test_an_emptied_group_is_not_counted_in_the_statistics() -> None:
    # A split left group 2 empty: the registry keeps it a while, the panel does not count it
    frames = build_frames([_snap(0, {1: ["a", "b"], 2: []})])

    assert frames[-1].stats.groups == 1

"""Commands in process: what each prints and changes, and that bad input changes nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.state import SimConfig
from tests.sim.helpers import Transcript, fingerprint


@pytest.fixture
def t() -> Transcript:
    """Four digits nodes in one neighbourhood, no registry."""
    return Transcript()


@pytest.mark.parametrize(
    "line",
    [
        "bogus",
        "train x y z",
        "train all many",
        "test n9",
        "share 5-2",
        "nstep 0",
        "step @nogroup",
        "exchange n1 n1",
        "exchange n1",
        "link n0 n77",
        "net latency abc",
        "net latency 10 jitter",
        "net loss 2",
        "net loss 0.5 link n0",
        "net bandwidth -3",
        "net warp 9",
        "group",
        "group add nope n1",
        "group create bad/name",
        "group roster",
        "group train nope",
        "node add 0",
        "node remove n42",
        "churn 1.5",
        "mobility 0",
        "mobility 3 fraction",
        "log xml out.csv",
        "restore /nonexistent/file.npz",
        "save /nonexistent/dir/file.npz",
        "seed -1",
        "load /nonexistent.sim",
        "train 'unclosed",
        "help nothing",
    ],
)
def test_malformed_commands_print_usage_and_change_nothing(
    t: Transcript, tmp_path: Path, line: str
) -> None:
    # Prepare
    t.run("group create g\ngroup add g n0-n1\nshare\nstep")
    before = fingerprint(t.session.sim, tmp_path)

    # Execute
    out = t.run(line)

    # Assert
    assert out, "an error must say something"
    assert any(x.startswith(("usage:", "unknown command", "error:")) for x in out)
    if not line.startswith(("bogus", "train 'unclosed")):
        assert any(x.startswith("usage:") for x in out) or line.startswith("help")
    assert t.session.errors == 1
    assert fingerprint(t.session.sim, tmp_path) == before


def test_loss_one_delivers_nothing(t: Transcript) -> None:
    # Execute
    out = t.run("net loss 1.0\nshare\nnstep 3\nstats")

    # Assert
    assert out[1] == "4 nodes sent 12 messages (232308 bytes), 12 lost"
    assert out[2] == "steps 1-3 (300 ms): delivered 0, dropped 0, in flight 0"
    assert out[4].split()[4:8] == ["12", "12", "0", "0"]
    counters = t.session.sim.network.counters
    assert (counters.sent, counters.dropped, counters.delivered) == (12, 12, 0)
    assert all(not node.inbox for node in t.session.sim.nodes.values())


def test_latency_delays_delivery_by_the_right_number_of_steps(t: Transcript) -> None:
    # Prepare: 250 ms at 100 ms per step is three steps; one link is slower still
    t.run("net latency 250\nnet latency 520 link n0 n1")

    # Execute
    t.run("exchange n0 n1\nexchange n2 n3")
    delivered = [t.session.sim.network.counters.delivered]
    for _ in range(6):
        t.run("step")
        delivered.append(t.session.sim.network.counters.delivered)

    # Assert: n2<->n3 arrive at step 3, n0<->n1 (520 ms) at step 6
    assert delivered == [0, 0, 0, 2, 2, 2, 4]


def test_nodes_added_and_removed_appear_in_and_vanish_from_groups_and_stats(
    t: Transcript,
) -> None:
    # Prepare
    t.run("group create g\ngroup add g all")

    # Execute
    added = t.run("node add 2\ngroup add g n4-n5\ngroup roster g\nstats")
    removed = t.run("node remove n1,n4\ngroup roster g\ngroup membership\nstats\ntest")

    # Assert
    assert added[0] == "added n004-n005 (6 nodes now)"
    assert added[2] == "g (6 members): n000-n005"
    assert added[4].split()[:4] == ["0", "0", "6", "1"]
    assert removed[0] == "removed n001, n004 (4 nodes now)"
    assert removed[1] == "g (4 members): n000, n002-n003, n005"
    assert not any("n001" in line or "n004" in line for line in removed[2:])
    assert removed[8].split()[:4] == ["0", "0", "4", "1"]


def test_autonet_steps_train_share_and_aggregate_until_nodes_learn(t: Transcript) -> None:
    # Prepare
    start = t.session.sim.stats().mean_accuracy

    # Execute
    out = t.run("autonet on\nnstep 8")

    # Assert
    assert out[1].startswith("steps 1-8 (800 ms): delivered 84, dropped 0, in flight 12")
    assert "autonet trained 32, sent 96" in out[1]
    assert t.session.sim.stats().mean_accuracy > start + 0.4


def test_flood_reaches_every_node_it_can_reach_and_no_other() -> None:
    # Prepare: two neighbourhoods of four, bridged by n3-n4; n7 cut off
    t = Transcript(SimConfig(nodes=8, areas=2))
    t.run("link n3 n4\nunlink n7 n4\nunlink n7 n5\nunlink n7 n6")

    # Execute
    t.run("flood n0\nnstep 4")

    # Assert
    sim = t.session.sim
    assert [i for i in sim.alive if 0 in sim.nodes[i].inbox] == [1, 2, 3, 4, 5, 6]
    assert not sim.nodes[7].inbox


def test_save_and_restore_in_process_continue_identically(tmp_path: Path) -> None:
    # Prepare: everything that draws from the random stream, and messages in flight
    setup = f"""
        autonet on
        net latency 120 jitter 90
        net loss 0.1
        net bandwidth 900 link n0 n1
        churn 0.05
        mobility 2 fraction 0.3
        group create g
        group add g n0-n3
        nstep 3
        flood n5
        save {tmp_path / "state.npz"}
    """
    rest = "nstep 4\nexchange n6 n7\nstep\ngroup share g\nnstep 2\nstats\ntest"
    t = Transcript(SimConfig(nodes=10, areas=3))
    t.run(setup)

    # Execute
    straight = t.run(rest)
    resumed = Transcript(SimConfig(nodes=2))
    resumed.run(f"restore {tmp_path / 'state.npz'}")
    again = resumed.run(rest)

    # Assert
    assert straight == again
    assert fingerprint(t.session.sim, tmp_path) == fingerprint(resumed.session.sim, tmp_path)


def test_log_csv_writes_a_row_per_step(t: Transcript, tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "stats.csv"

    # Execute
    t.run(f"log csv {path}\nshare\nnstep 3\nlog off\nstep")

    # Assert
    rows = list(csv.DictReader(path.open()))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["delivered"] for r in rows] == ["0", "12", "12", "12"]


def test_load_queues_a_scripts_lines_as_if_typed(t: Transcript, tmp_path: Path) -> None:
    # Prepare
    script = tmp_path / "s.sim"
    script.write_text("# a comment\n\nnode add 1   # trailing comment\nautonet on\n")

    # Execute
    out = t.run(f"load {script}")
    while t.session.queue:
        t.session.execute(t.session.queue.popleft())

    # Assert
    assert out == [f"queued 2 lines from {script}"]
    assert t.lines[-2:] == ["added n004 (5 nodes now)", "autonet on"]


_WORDS = [
    *("train", "test", "share", "aggregate", "step", "nstep", "autonet", "exchange", "flood"),
    *("neighborhood", "link", "unlink", "group", "node", "churn", "net", "mobility", "stats"),
    *("seed", "help", "list", "roster", "create", "add", "remove", "membership", "latency"),
    *("loss", "bandwidth", "jitter", "show", "reset", "fraction", "on", "off", "all", "g"),
    *("@g", "@x", "n0", "n3", "n99", "0-2", "n1,n2", "0", "1", "2", "-1", "0.5", "1e9", "nan"),
    *("abc", "'", '"', "#", ",", "-", "@", "*"),
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(_WORDS), max_size=5), min_size=1, max_size=6))
def test_nothing_a_user_types_crashes_the_simulator(lines: list[list[str]]) -> None:
    # Prepare
    t = Transcript(SimConfig(nodes=4, areas=2))

    # Execute: any exception escaping execute() fails the test
    for words in lines:
        t.session.execute(" ".join(words))

    # Assert: errors are reported as such, never as internal failures
    assert not any(line.startswith("error: ") and "Error:" in line for line in t.lines)

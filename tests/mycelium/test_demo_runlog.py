"""What the demo leaves behind besides its summary: TensorBoard scalars, the migrations table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mycelium.demo_cli import print_summary

ROOT = Path(__file__).resolve().parents[2]


def test_tensorboard_logs_hold_a_scalar_per_node_group_and_round(tmp_path: Path) -> None:
    # Prepare
    out, board = tmp_path / "out", tmp_path / "tb"
    args = ["demo", "--nodes", "3", "--rounds", "3", "--clusters", "2", "--no-drift"]
    args += ["--samples-per-node", "120", "--no-local-only", "--no-viz"]
    args += ["--output", str(out), "--tensorboard", str(board)]

    # Execute
    result = subprocess.run(
        [sys.executable, "-m", "mycelium.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )

    # Assert: read back as TensorBoard reads it
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for node_id, node in summary["nodes"].items():
        for metric in ("node_accuracy", "node_loss", "node_group_size", "node_migrations"):
            steps = [e.step for e in events.Scalars(f"{metric}/{node_id}")]
            assert steps == [1, 2, 3], (metric, node_id)
        # the accuracy logged in round 3 is the one the summary recorded for that round
        last = events.Scalars(f"node_accuracy/{node_id}")[-1].value
        assert abs(last - node["accuracy_over_time"][-1]) < 1e-6
        migrations = events.Scalars(f"node_migrations/{node_id}")[-1].value
        assert migrations == len(node["migrations"])
    # every group that existed in round 3 has its size, matching the summary's members
    for gid, group in summary["groups"].items():
        members = group["members_over_time"].get("3")
        if members:
            assert events.Scalars(f"group_size/g{gid}")[-1].value == len(members)
            assert f"group_loss/g{gid}" in tags
    assert any(t.startswith("group_accuracy/") for t in tags)
    assert [e.step for e in events.Scalars("network/mean_accuracy")] == [1, 2, 3]
    assert "TensorBoard logs written to" in result.stdout


def test_the_final_output_lists_every_migration_with_its_reason() -> None:
    # Prepare: a summary as run_demo writes it, with two migrations of one node
    moves = [
        {"round": 1, "from": None, "to": 3, "reason": "created: no group fits"},
        {"round": 4, "from": 3, "to": 5, "reason": "g5 scores 0.91 on own data vs 0.62 here"},
    ]
    migrations = [{**m, "node": "node-007"} for m in moves[1:]]
    summary = {
        "rounds": 6,
        "path": "out/summary.json",
        "nodes": {
            "node-007": {
                "cluster": 1,
                "final_group": 5,
                "migrations": moves[1:],
                "moves": moves,
                "test_accuracy": 0.9,
            }
        },
        "migrations": migrations,
        "drift": {"round": 3, "nodes": {"node-007": {"from_cluster": 0, "to_cluster": 1}}},
        "final": {
            "groups": 1,
            "migrations": 1,
            "mean_accuracy": 0.9,
            "worst_accuracy": 0.9,
            "adjusted_rand_index": 1.0,
        },
    }
    console = Console(width=200, record=True)

    # Execute
    print_summary(summary, console)

    # Assert: the migrations table has the round, node, the move and why; the drift is named
    text = console.export_text()
    assert "Migrations" in text
    row = next(line for line in text.splitlines() if "g5 scores" in line)
    assert "4" in row and "node-007" in row and "3 -> 5" in row
    assert "created: no group fits" not in text  # a first join is no migration
    assert "drift at round 3: node-007 (cluster 0 -> 1)" in text

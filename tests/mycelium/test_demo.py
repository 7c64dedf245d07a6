"""The demo as a user runs it: flags, the final table, summary.json, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.registry_proc import RegistryProcess

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_demo_writes_summary_and_prints_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(
        "--nodes", "4", "--rounds", "4", "--no-drift", "--no-viz", "--output", str(out),
        "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 4
    assert set(summary["nodes"]) == {f"node-{i:03d}" for i in range(4)}
    node = summary["nodes"]["node-000"]
    assert len(node["group_over_time"]) == 4 and len(node["accuracy_over_time"]) == 4
    assert node["cluster"] in (0, 1, 2)  # the default: 3 hidden clusters
    assert summary["groups"] and all(
        "performance_over_time" in g for g in summary["groups"].values()
    )
    assert 0 <= summary["final"]["mean_accuracy"] <= 1
    assert "Mycelium Net after 4 rounds" in result.stdout and "node-003" in result.stdout
    # every migration in summary.json carries its reason; --no-viz drew nothing
    assert all(m["reason"] for m in summary["migrations"])
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_bad_drift_flags_are_named_and_exit_2(tmp_path: Path) -> None:
    # Execute: a drift after the last round, fractions outside (0, 1], a drift without clusters
    late = _run("--rounds", "3", "--drift-at", "4", "--output", str(tmp_path))
    zero = _run("--drift-fraction", "0", "--output", str(tmp_path))
    above = _run("--drift-fraction", "1.5", "--output", str(tmp_path))
    iid = _run("--partition", "iid", "--drift-at", "2", "--output", str(tmp_path))
    nobody = _run(
        "--nodes", "2", "--drift-at", "2", "--drift-fraction", "0.2", "--output", str(tmp_path)
    )

    # Assert: exit 2, one line naming the flag, nothing run or written
    assert late.returncode == 2
    assert late.stderr.strip() == "error: --drift-at 4 is beyond the last round (--rounds 3)"
    assert zero.returncode == 2 and "--drift-fraction must be in (0, 1], got 0" in zero.stderr
    assert above.returncode == 2 and "--drift-fraction must be in (0, 1], got 1.5" in above.stderr
    assert iid.returncode == 2 and "--partition clustered" in iid.stderr
    assert (
        nobody.returncode == 2
        and "--drift-fraction 0.2 of --nodes 2 drifts no node" in nobody.stderr
    )
    for result in (late, zero, above, iid, nobody):
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_flags_are_named_without_a_traceback(tmp_path: Path) -> None:
    result = _run("--dataset", "mnist", "--output", str(tmp_path))
    assert result.returncode != 0
    assert "--dataset" in result.stderr and "digits, fashion" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_registry_that_does_not_answer_is_an_error_not_a_run_without_it(
    tmp_path: Path,
) -> None:
    # Execute: a URL where nothing listens, and one that is no URL at all
    silent = _run("--registry-url", "http://127.0.0.1:9", "--output", str(tmp_path))
    not_a_url = _run("--registry-url", "registry:8000", "--output", str(tmp_path))

    # Assert
    assert silent.returncode == 2 and "no registry answers at http://127.0.0.1:9" in silent.stderr
    assert not_a_url.returncode == 2 and "not an http:// or https:// URL" in not_a_url.stderr
    assert "Traceback" not in silent.stderr + not_a_url.stderr
    assert not (tmp_path / "summary.json").exists()


def test_an_output_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("")
    result = _run("--output", str(taken), "--rounds", "1")
    assert result.returncode == 2
    assert f"cannot write the results to {taken}" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_still_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--rounds", "100000", "--nodes", "4", "--no-viz", "--output", str(out)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "demo.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    # Wait for the progress bar to show a finished round (an event, not a clock).
    seen = b""
    while b"round=1" not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the demo ended before its first round: {seen[-3000:]!r}"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, (seen + stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] >= 1
    assert "summary written" in stdout.decode()


def test_the_demo_runs_twice_in_a_row_against_one_registry(
    tmp_path: Path, sqlite_registry: RegistryProcess
) -> None:
    # Prepare: the same output folder (where the nodes keep their credentials) both times
    out = tmp_path / "out"
    args = ("--registry-url", sqlite_registry.url, "--nodes", "2", "--rounds", "2")
    args += ("--samples-per-node", "120", "--no-local-only", "--no-viz", "--output", str(out))

    # Execute
    first = _run(*args)
    second = _run(*args)

    # Assert: the second run's nodes are recognised, not locked out
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and set(summary["nodes"]) == {"node-000", "node-001"}
    stored = sorted(p.name for p in (out / "credentials").rglob("*.json"))
    assert stored == ["node-000.json", "node-001.json"]


def test_more_clusters_than_nodes_is_named_without_a_traceback(tmp_path: Path) -> None:
    result = _run("--nodes", "4", "--clusters", "6", "--output", str(tmp_path))
    assert result.returncode == 2
    assert "--clusters" in result.stderr and "6 clusters" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_drift_switches_the_chosen_nodes_to_another_cluster_and_is_reported(
    tmp_path: Path,
) -> None:
    # Prepare: 4 nodes in 2 clusters; a half of them drift at the start of round 2
    out = tmp_path / "out"
    args = ("--nodes", "4", "--clusters", "2", "--rounds", "3", "--drift-at", "2")
    args += ("--drift-fraction", "0.5", "--samples-per-node", "120", "--no-local-only")

    # Execute
    result = _run(*args, "--no-viz", "--output", str(out))

    # Assert: two nodes moved to the other cluster, as the summary and the output say
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    drift = summary["drift"]
    assert drift["round"] == 2 and len(drift["nodes"]) == 2
    for node_id, d in drift["nodes"].items():
        assert d["from_cluster"] != d["to_cluster"]
        assert summary["nodes"][node_id]["cluster"] == d["to_cluster"]
        assert drift["report"][node_id]["new_cluster"] == d["to_cluster"]
    assert "drift at round 2: " in result.stdout.replace("\n", " ")

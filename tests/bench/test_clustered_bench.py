"""The clustered benchmark runs its methods end to end on one partition and scores them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "clustered.py"
FIELDS = {"mean_accuracy", "worst_accuracy", "purity", "ari", "sibling_ari", "seconds"}


def test_a_tiny_drift_scenario_scores_every_method_and_the_drifted_nodes(tmp_path: Path) -> None:
    # Prepare: 12 digits nodes in 4 clusters (3 each), capacity 2, a quarter drifting
    out = tmp_path / "clustered.json"
    methods = "ifca,oracle_capped,oracle_uncapped,global_fedavg,local_only"
    cmd = [sys.executable, str(SCRIPT), "--scenario", "d", "--dataset", "digits"]
    cmd += ["--nodes", "12", "--samples-per-node", "60", "--capacity", "2", "--rounds", "2"]
    cmd += ["--drift-at", "1", "--methods", methods, "--out", str(out)]

    # Execute
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)

    # Assert
    assert proc.returncode == 0, proc.stderr
    assert "purity" in proc.stdout and "sibARI" in proc.stdout
    assert all(method in proc.stdout for method in methods.split(","))
    block = json.loads(out.read_text())["scenarios"]["d"]
    rows = block["results"]
    assert set(rows) == set(methods.split(","))
    for row in rows.values():
        assert set(row) >= FIELDS
        assert len(row["accuracies"]) == 12
        assert 0 <= row["worst_accuracy"] <= row["mean_accuracy"] <= 1
        assert row["drift"]["drifted"] == 3  # round(0.25 * 12)
    uncapped, capped = rows["oracle_uncapped"], rows["oracle_capped"]
    assert uncapped["groups"] == 4 and uncapped["purity"] == uncapped["ari"] == 1.0
    assert capped["purity"] == 1.0 and capped["groups"] >= 6 and capped["ari"] < 1.0
    assert capped["sibling_ari"] == capped["ari"]  # no links: each group its own sibling cluster
    assert rows["global_fedavg"]["groups"] == 1 and rows["global_fedavg"]["purity"] <= 0.5
    assert rows["local_only"]["groups"] == 12
    assert uncapped["drift"]["rounds_to_rehome_max"] == 1  # the oracle moves them at once
    assert set(block["targets"]) == {
        "meta_rehomed_within_4_rounds",
        "meta_accuracy_back_within_2_points",
    }


def test_an_unknown_method_is_named_and_exits_2(tmp_path: Path) -> None:
    # Execute
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "ifca,kmeans", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Assert
    assert proc.returncode == 2
    assert "kmeans" in proc.stderr and "oracle_uncapped" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--scenario", "b", "--drift-fraction", "2"], "apply to scenario d only"),
        (["--scenario", "b", "--clusters", "100", "--nodes", "8"], "100 clusters need"),
        (["--scenario", "b", "--out", "{file}/x.json"], "cannot make its folder"),
        (["--scenario", "b", "--out", "{dir}"], "not a file this user can write"),
    ],
    ids=["drift-outside-d", "clusters-over-nodes", "out-under-a-file", "out-a-folder"],
)
def test_bad_flags_stop_before_any_run(flags: list[str], named: str, tmp_path: Path) -> None:
    # Prepare: a file where --out wants a folder
    (tmp_path / "afile").write_text("")
    flags = [f.format(file=tmp_path / "afile", dir=tmp_path) for f in flags]

    # Execute
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Assert: refused at once (no scenario table printed), one reason, no traceback
    assert proc.returncode == 2
    assert named in proc.stderr
    assert "method" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_drift_summary_counts_rounds_to_rehome_the_dip_and_the_gap() -> None:
    # Prepare: 4 nodes; node 3 drifts from cluster 1 to 0 after round 2, joins group A in
    # round 4 (two rounds after the drift); its accuracy 0.8 -> 0.5 -> 0.6 -> 0.79
    from bench.clustered import Trace, drift_summary

    before, after = [0, 0, 1, 1], [0, 0, 1, 0]
    trace = Trace(
        groups=[["A", "A", "B", "B"]] * 3 + [["A", "A", "B", "A"]],
        accuracy=[
            [0.9, 0.9, 0.9, 0.7],
            [0.9, 0.9, 0.9, 0.8],
            [0.9] * 3 + [0.5],
            [0.9] * 3 + [0.79],
        ],
        clusters=[before, before, after, after],
    )

    # Execute
    summary = drift_summary(trace, [3], drift_at=2)

    # Assert
    node = summary["nodes"]["3"]
    assert node["rounds_to_rehome"] == 2
    assert node["dip"] == pytest.approx(0.3) and node["gap"] == pytest.approx(0.01)
    assert node["recovered"] is True
    assert summary["rounds_to_rehome_max"] == 2 and summary["recovered"] == 1
    assert summary["gap_mean"] == pytest.approx(0.01)


def test_the_networks_drift_report_is_summarized_with_never_counted_apart() -> None:
    # Prepare: two drifted nodes; one never re-homed
    from bench.clustered import summarize_report

    report = {
        "node-001": {"rounds_to_rehome": 2, "accuracy_before": 0.9, "lowest_after": 0.5},
        "node-002": {"rounds_to_rehome": None, "accuracy_before": 0.8, "lowest_after": 0.7},
    }

    # Execute
    summary = summarize_report(report)

    # Assert
    assert summary["rounds_to_rehome"] == {"max": 2.0, "mean": 2.0, "missing": 1}
    assert summary["dip"]["max"] == pytest.approx(0.4)
    assert summary["dip"]["mean"] == pytest.approx(0.25)

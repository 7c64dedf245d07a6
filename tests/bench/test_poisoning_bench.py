"""The poisoning benchmark runs end to end: nobody crashes, and robust groups hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "poisoning.py"


def test_a_short_run_reports_every_configuration(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "poisoning.json"
    cmd = [sys.executable, str(SCRIPT), "--datasets", "digits"]
    cmd += ["--strategies", "fedavg,fedmedian", "--attacks", "sign_flip,nan"]
    cmd += ["--attackers", "0,2", "--rounds", "4", "--out", str(out)]

    # Execute
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)

    # Assert: every run finished with finite weights; the median held where the mean fell
    runs = {
        (r["strategy"], r["attack"]): r
        for r in json.loads(out.read_text())["datasets"]["digits"]["runs"]
    }
    assert set(runs) == {
        (s, a) for s in ("fedavg", "fedmedian") for a in ("none", "sign_flip", "nan")
    }
    assert all(r["crashed"] is None and r["finite"] for r in runs.values()), proc.stderr
    assert (
        runs["fedmedian", "sign_flip"]["loss_points"] < runs["fedavg", "sign_flip"]["loss_points"]
    )
    assert runs["fedavg", "sign_flip"]["attackers_flagged"] > 0
    assert all(r["attacker_share"] == 0.0 for (s, a), r in runs.items() if a != "none")
    assert "honest acc" in proc.stdout


def test_bad_arguments_are_named_before_anything_runs(tmp_path: Path) -> None:
    for args, complaint in (
        (["--attacks", "bogus"], "--attacks: unknown bogus"),
        (["--attackers", "x"], "--attackers: 'x' is not a comma-separated list"),
        (["--attackers", "10"], "between 0 and 9"),
    ):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "p.json")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and complaint in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "p.json").exists()

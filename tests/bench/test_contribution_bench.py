"""The contribution-cost benchmark runs end to end and reports real figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "contribution_cost.py"


def test_a_short_run_writes_seconds_and_shares(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "cost.json"
    cmd = [sys.executable, str(SCRIPT), "--datasets", "digits", "--sizes", "3,5"]
    cmd += ["--rounds", "1", "--out", str(out)]

    # Execute
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)

    # Assert
    rows = json.loads(out.read_text())["results"]["digits"]
    assert [r["members"] for r in rows] == [3, 5]
    for r in rows:
        assert r["round_seconds"] > 0 and r["contribution_seconds"] > 0
        assert 0 < r["share_of_round"] < 10
        assert r["evaluations_per_round"] == r["members"] + 1
    assert "share" in proc.stdout

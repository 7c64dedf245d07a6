"""The registry throughput benchmark runs end to end and reports real figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "registry_throughput.py"
SCENARIOS = {"heartbeat", "hb_paced", "list_groups", "list_groups_304", "join"}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_quick_run_writes_figures_for_every_scenario(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out)]

    # Execute: exit 1 only means a target was missed, which a 1 s run may well do
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)

    # Assert: every scenario ran without a failed request, and every node's beat landed
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(out.read_text())
    assert report["ceiling_rps"] > 0
    assert report["echo"]["rps"] > 0
    assert set(report["configs"]) == {"sqlite-1"}
    sqlite = report["configs"]["sqlite-1"]
    assert set(sqlite["scenarios"]) == SCENARIOS
    for name, fig in sqlite["scenarios"].items():
        assert fig["rps"] > 0, name
        assert fig["non_2xx"] == 0, name
        assert fig["cpu_us_per_req"] > 0, name
    assert sqlite["heartbeats_landed"] == report["config"]["nodes"] == 40
    assert "sqlite-1:join_ratio_ge_0_2" in report["targets"]["met"]
    # A registry with ETags answers the revalidation with 304, and with no body
    if sqlite["etag"] is not None:
        assert sqlite["if_none_match_status"] == 304
        lean = sqlite["scenarios"]["list_groups_304"]["bytes_per_response"]
        assert lean < sqlite["scenarios"]["list_groups"]["bytes_per_response"]
    assert "sqlite-1" in proc.stdout and "ratio" in proc.stdout

"""The metrics-overhead benchmark runs end to end and prints its five figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "metrics_overhead.py"


def test_a_short_run_prints_microseconds_for_every_loop() -> None:
    # Execute
    cmd = [sys.executable, str(SCRIPT), "--requests", "200", "--repeats", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    # Assert: every loop answered 200 (the script checks) and was timed
    assert proc.returncode == 0, proc.stderr
    figures = dict(re.findall(r"^(\w+)\s+([\d.]+) µs/request$", proc.stdout, re.MULTILINE))
    assert set(figures) == {"record_only", "ping", "ping_metrics", "heartbeat", "heartbeat_metrics"}
    assert all(float(us) > 0 for us in figures.values())

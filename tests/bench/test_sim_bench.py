"""The simulator benchmark runs end to end and reports real figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "sim_steps.py"


def test_a_small_run_writes_steps_per_second_and_memory(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "sim_steps.json"
    cmd = [sys.executable, str(SCRIPT), "--sizes", "16", "--steps", "2", "--output", str(out)]

    # Execute
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)

    # Assert
    assert proc.returncode == 0, proc.stderr
    [run] = json.loads(out.read_text())["runs"]
    assert run["nodes"] == 16
    assert run["steps_per_second"] > 0
    assert run["messages_per_step"] == 16 * 7  # two neighbourhoods of eight
    assert run["bytes_per_step"] > run["messages_per_step"] * 10_000
    assert run["peak_rss_mb"] > 0
    assert "steps/s" in proc.stdout

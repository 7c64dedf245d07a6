"""The scale benchmarks refuse too few examples per node up front: one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", ["scale.py", "memory.py", "flower_baseline.py"])
def test_fewer_examples_per_node_than_a_partition_allows_is_exit_2_naming_the_flag(
    script: str,
) -> None:
    # Execute: 9 examples a node (a partition needs 10) and nothing else to stop the run
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--samples", "9"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    # Assert: refused before any run starts, naming the flag and the bound
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1].endswith("argument --samples: must be at least 10, got 9")
    assert "Traceback" not in proc.stderr

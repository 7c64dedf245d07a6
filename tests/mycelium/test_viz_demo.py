"""`mycelium demo` as a user runs it: by default every round becomes a frame and the GIF
and PNG land in --output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio


def test_the_default_demo_records_every_round_into_a_gif_and_png(tmp_path: Path) -> None:
    # Prepare: a small network, but no --viz: drawing is the default
    out = tmp_path / "out"
    args = ["demo", "--nodes", "4", "--rounds", "5", "--output", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "mycelium.cli", *args, "--no-local-only"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    snapshots = [
        json.loads(line) for line in (out / "snapshots.jsonl").read_text().splitlines()[1:]
    ]
    rounds_seen = {g["round"] for s in snapshots for g in s["groups"]}
    assert set(range(1, 6)) <= rounds_seen  # no round was missed
    frames = iio.imread(out / "mycelium_net_demo.gif", index=None)
    assert frames.shape[0] >= 6
    assert (out / "mycelium_net_final.png").stat().st_size > 10_000
    assert "GIF written to" in result.stdout
    # the registry was the run's own: no node tokens were kept for it
    assert not (out / "credentials").exists()

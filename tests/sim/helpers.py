"""Shared helpers for the simulator tests: an in-process session and state fingerprints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pexpect

from sim.commands import Session
from sim.persist import STATE_KEY, save_simulation
from sim.state import Mirror, SimConfig, Simulation

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "sim> "
REPL_TIMEOUT = 120


class Transcript:
    """A session whose output lines are kept, and a way to run several lines."""

    def __init__(self, config: SimConfig | None = None, mirror: Mirror | None = None) -> None:
        self.lines: list[str] = []
        self.session = Session(Simulation(config or SimConfig(), mirror), self.lines.append, mirror)

    def run(self, script: str) -> list[str]:
        """Run each non-empty line; return the output they printed."""
        start = len(self.lines)
        for line in script.strip().splitlines():
            self.session.execute(line.strip())
        return self.lines[start:]


def fingerprint(sim: Simulation, tmp: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    """Everything a save holds, as comparable data."""
    path = tmp / "fingerprint.npz"
    save_simulation(sim, path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k].tobytes() for k in npz.files}
    state = json.loads(arrays.pop(STATE_KEY).decode())
    return state, arrays


def sim_env() -> dict[str, str]:
    """The environment `python -m sim` runs in."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}


def run_sims(*runs: Sequence[str], timeout: float = 180) -> list[subprocess.CompletedProcess[str]]:
    """`python -m sim ARGS` for each ARGS, all at once; output captured."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sim", *args],
            cwd=ROOT,
            env=sim_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in runs
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def run_sim(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m sim ARGS` in a subprocess, output captured."""
    return run_sims(args, timeout=timeout)[0]


def spawn_repl(tmp_path: Path, *args: str) -> tuple[pexpect.spawn, str]:
    """``mycelium sim`` over four nodes in a pseudo-terminal, with ``args``; the REPL and
    what it printed before its first prompt."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "sim", "--nodes", "4", "--history", str(tmp_path / "history"), *args],
        cwd=str(ROOT),
        env=sim_env(),
        encoding="utf-8",
        timeout=REPL_TIMEOUT,
        dimensions=(40, 200),
    )
    child.expect_exact("Type `help`.")
    startup: str = child.before
    child.expect_exact(PROMPT)
    return child, startup


def type_line(child: pexpect.spawn, line: str) -> str:
    """Type a line; return what it printed before the next prompt."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    before: str = child.before
    return before.replace("\r\n", "\n").split("\n", 1)[1] if "\n" in before else ""

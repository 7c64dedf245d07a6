"""Nodes removed or churned in the simulation expire at the embedded registry; live
ones stay active (their heartbeats come from the mirror)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pexpect

from tests.sim.helpers import PROMPT, spawn_repl

TTL_S = "2"
SAFETY_S = 60.0  # a net against a hang; the wait ends when the registry says so


def _status(url: str, node_id: str) -> str:
    answer = httpx.get(f"{url}/nodes/{node_id}", timeout=10)
    answer.raise_for_status()
    return str(answer.json()["status"])


def _wait_inactive(url: str, node_ids: list[str]) -> dict[str, str]:
    """Poll until every node is inactive (or the safety net); returns the last statuses."""
    deadline = time.monotonic() + SAFETY_S
    statuses = {n: _status(url, n) for n in node_ids}
    while any(s != "inactive" for s in statuses.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        statuses = {n: _status(url, n) for n in node_ids}
    return statuses


def test_removed_and_churned_nodes_expire_and_live_ones_stay(tmp_path: Path) -> None:
    # Prepare: the REPL with its embedded registry, a short TTL
    child, startup = spawn_repl(tmp_path, "--samples-per-node", "40", "--registry-ttl", TTL_S)
    try:
        found = re.search(r"registry: (http://\S+) \(names start with (\S+)-\)", startup)
        assert found, startup
        url, prefix = found.group(1), found.group(2)

        # Execute: remove n1 by hand; churn replaces others at the next step
        child.sendline("node remove n1")
        child.expect_exact("removed n001 (3 nodes now)")
        child.expect_exact(PROMPT)
        child.sendline("seed 3")
        child.expect_exact(PROMPT)
        child.sendline("churn 0.5")
        child.expect_exact(PROMPT)
        child.sendline("step")
        child.expect(r"churn: left ([n0-9, -]+), joined")
        left = re.findall(r"n\d{3}", child.match.group(1))
        child.expect_exact(PROMPT)
        child.sendline("churn off")
        child.expect_exact(PROMPT)
        gone = ["n001", *left]
        live = [f"n{i:03d}" for i in range(4) if f"n{i:03d}" not in gone]

        statuses = _wait_inactive(url, [f"{prefix}-{n}" for n in gone])
        live_statuses = {n: _status(url, f"{prefix}-{n}") for n in live}
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)

    # Assert
    assert left, "seed 3 with churn 0.5 takes at least one node"
    assert set(statuses.values()) == {"inactive"}, statuses
    assert live and set(live_statuses.values()) == {"active"}, live_statuses

"""The REPL through a pseudo-terminal, as a user types: prompt, completion, history, registry."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.sim.helpers import ROOT, sim_env

PROMPT = "sim> "
TIMEOUT = 120


def _spawn(tmp_path: Path, *args: str) -> tuple[pexpect.spawn, str]:
    """The REPL and what it printed before its first prompt."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "sim", "--nodes", "4", "--history", str(tmp_path / "history"), *args],
        cwd=str(ROOT),
        env=sim_env(),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(40, 200),
    )
    child.expect_exact("Type `help`.")
    startup: str = child.before
    child.expect_exact(PROMPT)
    return child, startup


def _type(child: pexpect.spawn, line: str) -> str:
    """Type a line; return what it printed before the next prompt."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    before: str = child.before
    return before.replace("\r\n", "\n").split("\n", 1)[1] if "\n" in before else ""


@pytest.fixture
def repl(tmp_path: Path) -> Iterator[pexpect.spawn]:
    """A REPL over four nodes without a registry."""
    child, _ = _spawn(tmp_path, "--no-registry")
    yield child
    child.close(force=True)


def test_a_user_session_at_the_prompt(repl: pexpect.spawn, tmp_path: Path) -> None:
    # Prepare
    script = tmp_path / "setup.sim"
    script.write_text("# two groups\ngroup create a\n\ngroup add a n0-n1\n")

    # Execute / Assert: help, a bad command, a script, completion, learning
    assert "neighborhood" in _type(repl, "help")
    bad = _type(repl, "train x y z")
    assert "usage: train [scope] [epochs]" in bad
    repl.sendline(f"load {script}")  # queued lines echo after the prompt, then run
    repl.expect_exact("queued 2 lines")
    repl.expect_exact(f"{PROMPT}group create a")
    repl.expect_exact(f"{PROMPT}group add a n0-n1")
    repl.expect_exact("a: added n000-n001 (2 nodes)")
    repl.expect_exact(PROMPT)

    repl.send("gro\t")  # completes the command name
    repl.expect_exact("group ")
    repl.send("ros\t")
    repl.expect_exact("roster ")
    repl.send("\t")  # the only group
    repl.expect_exact("a ")
    assert "a (2 members): n000-n001" in _type(repl, "")

    assert "4 nodes sent 12 messages" in _type(repl, "share")
    assert "step 1 (100 ms): delivered 12" in _type(repl, "step")
    table = _type(repl, "test @a")
    assert re.search(r"n001\s+a\s+\d\.\d{4}\s+\d\.\d{4}", table)

    # Ctrl-D leaves, and the history keeps what was typed
    repl.sendeof()
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0
    assert "share" in (tmp_path / "history").read_text()


def test_groups_appear_in_the_embedded_registry(tmp_path: Path) -> None:
    # Prepare
    child, startup = _spawn(tmp_path)
    try:
        url = re.search(r"registry: (http://\S+)", startup)
        assert url, startup

        # Execute
        _type(child, "group create blue")
        _type(child, "group add blue n0-n2")
        _type(child, "node remove n1")

        # Assert
        groups = httpx.get(f"{url.group(1)}/groups", timeout=10).json()["data"]
        [blue] = [g for g in groups if g["name"].endswith("-blue")]
        assert blue["member_count"] == 2
        nodes = httpx.get(f"{url.group(1)}/nodes", params={"group_id": blue["id"]}).json()
        assert sorted(n["id"].rsplit("-", 1)[1] for n in nodes["data"]) == ["n000", "n002"]
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)

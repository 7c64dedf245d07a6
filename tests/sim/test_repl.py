"""The REPL through a pseudo-terminal, as a user types: prompt, completion, history, registry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.sim.helpers import PROMPT, spawn_repl, type_line


@pytest.fixture
def repl(tmp_path: Path) -> Iterator[pexpect.spawn]:
    """A REPL over four nodes without a registry."""
    child, _ = spawn_repl(tmp_path, "--no-registry")
    yield child
    child.close(force=True)


def test_a_user_session_at_the_prompt(repl: pexpect.spawn, tmp_path: Path) -> None:
    # Prepare
    script = tmp_path / "setup.sim"
    script.write_text("# two groups\ngroup create a\n\ngroup add a n0-n1\n")

    # Execute / Assert: help, a bad command, a script, completion, learning
    assert "neighborhood" in type_line(repl, "help")
    bad = type_line(repl, "train x y z")
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
    assert "a (2 members): n000-n001" in type_line(repl, "")

    assert "4 nodes sent 12 messages" in type_line(repl, "share")
    assert "step 1 (100 ms): delivered 12" in type_line(repl, "step")
    table = type_line(repl, "test @a")
    assert re.search(r"n001\s+a\s+\d\.\d{4}\s+\d\.\d{4}", table)

    # Ctrl-D leaves, and the history keeps what was typed
    repl.sendeof()
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0
    assert "share" in (tmp_path / "history").read_text()


def test_groups_appear_in_the_embedded_registry(tmp_path: Path) -> None:
    # Prepare
    child, startup = spawn_repl(tmp_path)
    try:
        url = re.search(r"registry: (http://\S+)", startup)
        assert url, startup

        # Execute
        type_line(child, "group create blue")
        type_line(child, "group add blue n0-n2")
        type_line(child, "node remove n1")

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

"""DEL-Step's README, command by command, typed at our REPL: each one's visible effect."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.sim.helpers import PROMPT, spawn_repl, type_line


@pytest.fixture
def repl(tmp_path: Path) -> Iterator[pexpect.spawn]:
    """Four digits nodes, one area, no registry."""
    child, _ = spawn_repl(tmp_path, "--samples-per-node", "60", "--no-registry")
    yield child
    child.close(force=True)


def _rows(table: str) -> list[str]:
    """The node column of a table."""
    return re.findall(r"^(n\d{3})\s", table, flags=re.M)


def test_every_command_of_del_steps_readme(repl: pexpect.spawn, tmp_path: Path) -> None:
    # Interface: neighborhood (all nodes), guestbook NODE (its neighbours)
    assert _rows(type_line(repl, "neighborhood")) == ["n000", "n001", "n002", "n003"]
    guestbook = type_line(repl, "guestbook n1")
    assert _rows(guestbook) == ["n001"] and "n000, n002-n003" in guestbook

    # Scopes: one node, a list, a range, everyone
    assert "trained 1 node for 1 epoch" in type_line(repl, "train n1")
    assert "trained 2 nodes for 1 epoch" in type_line(repl, "train n0,n2")
    assert "trained 4 nodes for 1 epoch" in type_line(repl, "train")
    assert _rows(type_line(repl, "test n1-n2")) == ["n001", "n002"]
    assert "(4 nodes)" in type_line(repl, "test")

    # Communicating: exchange, then the network step delivers both models
    assert "n000 <-> n001: sent 2 messages" in type_line(repl, "exchange n0 n1")
    assert re.search(r"step \d+ \(\d+ ms\): delivered 2,", type_line(repl, "nstep"))
    assert "1 node flooded: sent 3 messages" in type_line(repl, "flood n0")
    assert "4 nodes flooded" in type_line(repl, "flood")
    assert re.search(r"delivered [1-9]\d*", type_line(repl, "nstep 2"))

    # Steps: autonet reports and switches; step on one node trains that node only
    assert type_line(repl, "autonet").strip() == "autonet off"
    assert type_line(repl, "autonet on").strip() == "autonet on"
    assert "autonet trained 1, sent 3" in type_line(repl, "step n1")
    assert "autonet trained 4" in type_line(repl, "step")
    assert "autonet trained 1" in type_line(repl, "nstep n2")  # DEL-Step's `nstep NODE`
    type_line(repl, "autonet off")

    # Groups, at top level where the name is free, and DEL-Step's `group G ...` order
    assert "no groups" in type_line(repl, "list")
    assert "created group lab" in type_line(repl, "create lab")
    assert "lab: added n000-n001 (2 nodes)" in type_line(repl, "add lab n0 n1")
    assert "lab: added n002 (1 node)" in type_line(repl, "group lab add n2")
    assert "lab (3 members): n000-n002" in type_line(repl, "roster lab")
    assert re.search(r"^lab\s+3\s+0\s+n000-n002$", type_line(repl, "list"), flags=re.M)
    membership = type_line(repl, "membership n2-n3")
    assert re.search(r"^n002\s+lab$", membership, flags=re.M)
    assert re.search(r"^n003\s+-$", membership, flags=re.M)
    assert "lab: sent 6 messages" in type_line(repl, "group lab share")  # 3 x 2
    trained = type_line(repl, "group lab train")
    assert re.search(r"lab round 1 \(3 members, fedavg\): val accuracy 0\.\d{4}", trained)
    assert "lab: removed n002 (1 node)" in type_line(repl, "remove lab n2")
    assert "lab: removed n001 (1 node)" in type_line(repl, "group lab remove n1")
    assert "lab (1 member): n000" in type_line(repl, "group roster lab")

    # help lists the aliases and says which names were taken
    listing = type_line(repl, "help")
    for alias in ("list", "roster", "membership", "create", "add", "remove"):
        assert re.search(rf"^{alias}\s+.*\(alias of `group {alias}`\)", listing, flags=re.M)
    assert "`group share NAME` (this name was taken)" in type_line(repl, "help share").replace(
        "\n  ", " "
    )

    # Tab completes an alias, then the group's name
    repl.send("ros\t")
    repl.expect_exact("roster ")
    repl.send("\t")
    repl.expect_exact("lab ")
    assert "lab (1 member): n000" in type_line(repl, "")

    # Scripting: load queues a script's lines and runs them as if typed
    script = tmp_path / "readme.sim"
    script.write_text("train n1\ntrain n2\nexchange n1 n2\nstep\ntest n1\ntest n2\n")
    loaded = type_line(repl, f"load {script}")
    assert "queued 6 lines" in loaded
    repl.expect_exact("n001 <-> n002: sent 2 messages")
    repl.expect_exact(f"{PROMPT}test n2")
    repl.expect(r"mean accuracy 0\.\d{4}, worst 0\.\d{4} \(1 node\)")
    repl.expect_exact(PROMPT)

    # Logging: a stats row now and after each step
    log = tmp_path / "stats.csv"
    assert f"logging stats to {log} (csv)" in type_line(repl, f"log csv {log}")
    type_line(repl, "step")
    type_line(repl, "log off")
    assert len(log.read_text().splitlines()) == 3  # header, now, one step

    repl.sendline("quit")
    repl.expect(pexpect.EOF)

"""``mycelium gossip``, ``scripts/run_gossip_node.py`` and ``scripts/run_scale_test.sh``, run
for real against a real registry process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from node.cli import gossip as gossip_cli
from node.registry_client import RegistryClient
from tests.support.registry_proc import RegistryProcess

ROOT = Path(__file__).resolve().parents[3]
BASE = ROOT / "configs" / "base.yaml"
MYCELIUM = Path(sys.executable).parent / "mycelium"
SUMMARY = re.compile(
    r"^gossip done: node=(\S+) group=(\d+) accuracy=([\d.]+) bytes_sent=(\d+) "
    r"bytes_received=(\d+) merges=(\d+) updates=(\d+)$",
    re.MULTILINE,
)

pytestmark = pytest.mark.usefixtures("no_peer_environment")


def _node_args(url: str, node_id: str, index: int, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(BASE), "--registry-url", url, "--node-id", node_id,
        "--host", "127.0.0.1", "--port", "0", "--index", str(index), "--nodes", "4",
        "--period-s", "0.05", "--data-dir", str(data_dir), *extra,
    ]  # fmt: skip


def test_two_gossip_commands_find_one_group_train_and_leave_it(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    url = sqlite_registry.url
    together = ["--cycles", "60", "--min-peers", "1"]  # each waits for the other, then gossips
    commands = [
        [str(MYCELIUM), "gossip", *_node_args(url, "cli-a", 0, tmp_path / "a", *together)],
        [
            sys.executable,
            str(ROOT / "scripts" / "run_gossip_node.py"),
            *_node_args(url, "cli-b", 1, tmp_path / "b", *together),
        ],
    ]

    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
    outs = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    found = [SUMMARY.search(out.decode()) for out, _ in outs]
    assert found[0] is not None and found[1] is not None, outs
    assert found[0][1] == "cli-a" and found[1][1] == "cli-b"
    assert found[0][2] == found[1][2]  # one group, found by domain
    for match in found:
        assert float(match[3]) > 0.3  # trained together: well above chance (0.1)
        assert int(match[4]) > 0 and int(match[5]) > 0 and int(match[6]) > 0
    admin = RegistryClient(url)
    admin.register("cli-admin", "127.0.0.1:1", "digits")
    group = admin.get_group(int(found[0][2]))
    assert group.mode == "gossip" and group.member_count == 0  # both left on exit


def test_sigterm_stops_the_node_cleanly_and_it_leaves_its_group(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # No cycles, no duration: the node runs until it is signalled.
    args = _node_args(sqlite_registry.url, "cli-term", 2, tmp_path / "t", "--log-level", "info")
    proc = subprocess.Popen(
        [str(MYCELIUM), "gossip", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    started = False
    for line in proc.stderr:  # until it has joined its group and listens (or exits)
        if "started at" in line:
            started = True
            break

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)

    assert started
    assert proc.returncode == 0, err[-2000:]
    match = SUMMARY.search(out)
    assert match is not None and match[1] == "cli-term"
    assert "Traceback" not in err
    admin = RegistryClient(sqlite_registry.url)
    admin.register("cli-admin2", "127.0.0.1:1", "digits")
    assert admin.get_group(int(match[2])).member_count == 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ([], "--registry-url"),
        (["--registry-url", "registry.example"], "gossip.registry_url"),
        (["--registry-url", "http://127.0.0.1:1"], "--data-dir"),
        (["--period-s", "-1"], "gossip.period_s"),
        (["--cycles", "0"], "gossip.cycles"),
        (["--index", "4", "--nodes", "4"], "data.index"),
        (["--port", "70000"], "p2p.local_port"),
        (["--dataset", "cifar"], "data.dataset"),
        (["--node-id", "../../../escaped"], "node id '../../../escaped' is not valid"),
    ],
)
def test_bad_flags_are_one_clear_line_and_exit_2(
    flags: list[str], named: str, tmp_path: Path
) -> None:
    base = ["--registry-url", "http://127.0.0.1:1", "--data-dir", str(tmp_path)]
    if named in ("--registry-url", "gossip.registry_url", "--data-dir"):
        base = []
    app = typer.Typer()
    app.command()(gossip_cli.gossip)

    result = CliRunner().invoke(app, ["--config", str(BASE), *base, *flags])

    assert result.exit_code == 2
    assert result.output.startswith("Invalid configuration: ")
    assert named in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unknown_key_in_the_gossip_section_is_named(tmp_path: Path) -> None:
    config = tmp_path / "gossip.yaml"
    config.write_text("gossip:\n  colour: blue\n  registry_url: http://127.0.0.1:1\n")
    app = typer.Typer()
    app.command()(gossip_cli.gossip)

    result = CliRunner().invoke(app, ["--config", str(config), "--data-dir", str(tmp_path)])

    assert result.exit_code == 2
    assert "gossip.colour" in result.output


def test_the_scale_script_refuses_a_bad_node_count() -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "run_scale_test.sh"), "many"], capture_output=True, text=True
    )

    assert run.returncode == 2
    assert "usage:" in run.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("SCALE_CYCLES", "0"), ("SCALE_PERIOD_S", "-1"), ("SCALE_TIMEOUT_S", "soon")],
)
def test_the_scale_script_names_a_bad_setting_before_it_starts_anything(
    name: str, value: str
) -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "run_scale_test.sh"), "2"],
        capture_output=True,
        text=True,
        env={**os.environ, name: value},
    )

    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {name} must be")
    assert f"got '{value}'" in run.stderr
    assert "registry" not in run.stdout  # nothing was started


@pytest.mark.slow
def test_the_scale_script_runs_10_gossip_processes_against_one_registry(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MYCELIUM_PYTHON": sys.executable,
        "SCALE_CYCLES": "40",
        "SCALE_PERIOD_S": "0.1",
        "TMPDIR": str(tmp_path),
    }

    run = subprocess.run(
        [str(ROOT / "scripts" / "run_scale_test.sh"), "10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"^node-(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)$", run.stdout, re.M)
    assert sorted(int(r[0]) for r in rows) == list(range(10))
    accuracies = [float(r[1]) for r in rows]
    assert all(a > 0.1 for a in accuracies), run.stdout  # every node above chance
    mean = re.search(r"^mean\s+([\d.]+)", run.stdout, re.M)
    assert mean is not None and float(mean[1]) > 0.5
    assert all(int(r[2]) > 0 and int(r[3]) > 0 for r in rows)  # bytes both ways
    assert "nodes 10/10 finished" in run.stdout
    assert list(tmp_path.glob("mycelium-scale.*")) == []  # its temporary dir is removed

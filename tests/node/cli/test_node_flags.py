"""The ``node`` command's settings flags: new names, old spellings, and their precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from node.cli.node import node


@pytest.fixture(autouse=True)
def _no_node_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the MYCELIUM_NODE_* variables it sets itself."""
    for name in list(os.environ):
        if name.upper().startswith("MYCELIUM_NODE_"):
            monkeypatch.delenv(name)


def _dry_run(*args: str, env: dict[str, str] | None = None) -> Result:
    app = typer.Typer()
    app.command()(node)
    return CliRunner().invoke(app, [*args, "--dry-run"], env=env)


@pytest.mark.parametrize(
    ("heartbeat_flag", "evaluation_flag"),
    [
        ("--heartbeat-interval-s", "--group-evaluation-interval-s"),
        ("--heartbeat-interval", "--group-evaluation-interval"),  # old spellings, kept
    ],
)
def test_interval_flags_set_the_seconds(heartbeat_flag: str, evaluation_flag: str) -> None:
    # Execute
    result = _dry_run(heartbeat_flag, "5", evaluation_flag, "30")

    # Assert: the settings the node would run with
    assert result.exit_code == 0, result.output
    assert "'heartbeat_interval_s': 5.0" in result.output
    assert "'group_evaluation_interval_s': 30.0" in result.output


def test_an_old_flag_is_still_checked_like_the_new_one() -> None:
    result = _dry_run("--heartbeat-interval", "0")

    assert result.exit_code == 2
    assert "--heartbeat-interval" in result.output


def test_file_then_environment_then_flag(tmp_path: Path) -> None:
    # Prepare: each layer sets a different value of some key
    path = tmp_path / "node.yaml"
    path.write_text(
        "node:\n  heartbeat_interval_s: 10\n  group_evaluation_interval_s: 11\n"
        "  cooldown_rounds: 4\n  domain: fashion\n"
    )
    env = {
        "MYCELIUM_NODE_HEARTBEAT_INTERVAL_S": "20",
        "MYCELIUM_NODE_GROUP_EVALUATION_INTERVAL_S": "21",
    }

    # Execute
    result = _dry_run("--config", str(path), "--heartbeat-interval", "40", env=env)

    # Assert
    assert result.exit_code == 0, result.output
    assert "'heartbeat_interval_s': 40.0" in result.output  # flag (old spelling)
    assert "'group_evaluation_interval_s': 21.0" in result.output  # environment, no flag
    assert "'cooldown_rounds': 4" in result.output  # file only
    assert "'domain': 'fashion'" in result.output  # file only


def test_an_invalid_file_value_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("node:\n  cooldown_rounds: -2\n")

    result = _dry_run("--config", str(path))

    assert result.exit_code == 2
    assert "invalid node config key 'cooldown_rounds'" in result.output


def test_tls_flags_are_checked_before_the_node_starts(tmp_path: Path) -> None:
    # Prepare: a certificate without its key, and a CA file that is not PEM
    cert = tmp_path / "server.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")

    # Execute
    half = _dry_run("--tls-certfile", str(cert))
    bad_ca = _dry_run("--ca-cert", str(not_pem))

    # Assert: exit status 2 and the flag named, no traceback
    assert half.exit_code == 2
    assert "--tls-certfile and --tls-keyfile go together" in half.output
    assert bad_ca.exit_code == 2 and f"--ca-cert {not_pem}: not a PEM file" in bad_ca.output
    assert half.exception is None or isinstance(half.exception, SystemExit)

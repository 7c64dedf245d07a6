"""The ``peer`` command's flags reach the config: new names, old spellings, precedence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from node.addresses import Address
from node.cli import peer as peer_cli
from node.p2p.config import PeerConfig

ROOT = Path(__file__).resolve().parents[3]
BASE = ROOT / "configs" / "base.yaml"


pytestmark = pytest.mark.usefixtures("no_peer_environment")


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch, no_peer_environment: None) -> None:
    """Replace the training run by one that reports the settings it was given."""

    async def report(config: PeerConfig, peers: list[Address], *_: object) -> dict[str, Any]:
        return {
            "listen_timeout_s": config.p2p.listen_timeout_s,
            "local_port": config.p2p.local_port,
            "rounds": config.training.rounds,
        }

    monkeypatch.setattr(peer_cli, "run_peer_training", report)
    monkeypatch.setenv("MYCELIUM_PEER_P2P__SHARED_SECRET", "flags-tests-shared-secret")


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    app = typer.Typer()
    app.command()(peer_cli.peer)
    return CliRunner().invoke(app, ["--config", str(BASE), *args], env=env)


@pytest.mark.usefixtures("no_training")
@pytest.mark.parametrize("flag", ["--listen-timeout-s", "--listen-timeout"])
def test_both_spellings_of_the_listen_timeout_flag_set_it(flag: str) -> None:
    result = _run(flag, "7.5")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["listen_timeout_s"] == 7.5


@pytest.mark.usefixtures("no_training")
def test_file_then_environment_then_flag(tmp_path: Path) -> None:
    # Prepare: the file sets all three keys, the environment two, a flag one
    path = tmp_path / "peer.yaml"
    path.write_text("p2p:\n  listen_timeout_s: 10\n  local_port: 5100\ntraining:\n  rounds: 3\n")
    env = {"MYCELIUM_PEER_P2P__LISTEN_TIMEOUT_S": "20", "MYCELIUM_PEER_TRAINING__ROUNDS": "4"}
    app = typer.Typer()
    app.command()(peer_cli.peer)

    # Execute
    result = CliRunner().invoke(app, ["--config", str(path), "--listen-timeout", "40"], env=env)

    # Assert
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "listen_timeout_s": 40.0,  # flag beats environment
        "rounds": 4,  # environment beats file; no flag given
        "local_port": 5100,  # file only
    }


def test_a_bad_old_flag_value_names_the_new_key() -> None:
    result = _run("--listen-timeout", "-1")

    assert result.exit_code == 2
    assert "p2p.listen_timeout_s" in result.output


@pytest.mark.usefixtures("no_training")
@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ("127.0.0.1:7301,localhost:7302", "is this peer itself"),
        ("127.0.0.1:7303,127.0.0.1:7303", "is listed twice"),
    ],
)
def test_a_peer_list_naming_this_peer_or_a_peer_twice_is_refused(peers: str, message: str) -> None:
    result = _run("--port", "7302", "--peers", peers)

    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output

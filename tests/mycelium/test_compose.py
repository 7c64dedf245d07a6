"""docker-compose.yml and the Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from mycelium.cli import app as mycelium_app
from node.cli.node import node

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def _parse(command: click.Command, name: str, args: list[str]) -> dict[str, Any]:
    """Parse ``args`` as the CLI would, without running the command."""
    with command.make_context(name, list(args)) as ctx:
        return dict(ctx.params)


def test_services_ports_volumes_and_scale(compose: dict[str, Any]) -> None:
    # Prepare
    registry, node_svc = compose["services"]["registry"], compose["services"]["node"]

    # Assert: the registry on 8000 with its data on a named volume, nodes scaled to 4
    assert registry["ports"] == ["8000:8000"]
    volume, mount = registry["volumes"][0].split(":")
    assert volume in compose["volumes"]
    assert registry["command"][registry["command"].index("--data-dir") + 1] == mount
    assert node_svc["deploy"]["replicas"] == 4
    assert "ports" not in node_svc  # published ports would clash under --scale
    assert node_svc["depends_on"]["registry"]["condition"] == "service_healthy"
    assert registry["image"] == node_svc["image"]


def test_registry_healthcheck_hits_healthz(compose: dict[str, Any]) -> None:
    check = compose["services"]["registry"]["healthcheck"]
    assert check["test"][0] == "CMD"
    assert "http://127.0.0.1:8000/healthz" in " ".join(check["test"])
    assert check["retries"] >= 1


def test_registry_command_is_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    # Prepare
    cmd = compose["services"]["registry"]["command"]
    group = typer.main.get_command(mycelium_app)
    assert isinstance(group, click.Group)

    # Execute
    sub = group.get_command(click.Context(group), cmd[1])
    assert cmd[0] == "mycelium" and sub is not None
    params = _parse(sub, cmd[1], cmd[2:])

    # Assert
    assert (params["host"], params["port"]) == ("0.0.0.0", 8000)


def test_node_command_is_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    # Prepare
    cmd = compose["services"]["node"]["command"]
    assert cmd[:2] == ["mycelium", "node"]

    # Execute: parse, then the same flags through `python -m node --dry-run`
    single = typer.Typer()
    single.command()(node)
    params = _parse(typer.main.get_command(single), "node", cmd[2:])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIUM_NODE_")}
    run = subprocess.run(
        [sys.executable, "-m", "node", *cmd[2:], "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )

    # Assert: it reaches the registry service by name and takes its own data share
    assert params["registry_url"] == "http://registry:8000"
    assert params["partition_id"] == "auto"
    assert params["address"].endswith(":7000")
    assert "7000" in compose["services"]["node"]["expose"]
    assert run.returncode == 0, run.stderr


def test_dockerfile_installs_cpu_torch_before_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    torch_at = text.index("--index-url https://download.pytorch.org/whl/cpu torch==2.13.0")
    assert torch_at < text.index("pip install .")
    for package in ("mycelium", "registry", "node", "viz"):
        assert f"COPY {package} {package}" in text


def test_the_image_holds_the_default_config_its_commands_read(tmp_path: Path) -> None:
    """Lay out the image's WORKDIR from the Dockerfile's COPY lines and load the default config."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:] for line in lines if line.startswith("COPY ")]
    image = tmp_path / "app"
    image.mkdir()
    for *sources, target in copies:
        for source in sources:
            destination = image / target if not target.endswith("/") else image
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("*.pyc"))
            else:
                shutil.copy(ROOT / source, image / Path(source).name)

    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from node.p2p.config import DEFAULT_CONFIG_PATH, load_config;"
            "print(load_config(DEFAULT_CONFIG_PATH).gossip.view_size)",
        ],
        cwd=image,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().isdigit()

"""The registry mirror: groups, members, Flower rounds and restores show up over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.server import BackgroundRegistry
from registry.settings import build_settings
from sim.mirror import RegistryMirror
from sim.state import SimConfig
from tests.sim.helpers import Transcript


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """An embedded registry's URL."""
    with BackgroundRegistry(build_settings(data_dir=tmp_path / "registry")) as reg:
        yield reg.url


def _groups(url: str) -> dict[str, dict[str, object]]:
    data = httpx.get(f"{url}/groups", timeout=10).json()["data"]
    return {str(g["name"]): g for g in data}


def test_group_rounds_and_restores_are_mirrored(registry: str, tmp_path: Path) -> None:
    # Prepare
    mirror = RegistryMirror(registry, domain="digits", prefix="t")
    t = Transcript(SimConfig(nodes=4), mirror)
    saved = tmp_path / "s.npz"

    try:
        # Execute
        out = t.run("group create g1\ngroup create g2\ngroup add g1 n0-n2\ngroup train g1")
        after_round = _groups(registry)
        t.run(f"save {saved}\ngroup add g2 n0,n3\nnode remove n1")
        moved = _groups(registry)
        t.run(f"restore {saved}")
        restored = _groups(registry)
    finally:
        mirror.close()

    # Assert
    assert out[-1].startswith("g1 round 1 (3 members, fedavg): val accuracy")
    assert after_round["t-g1"]["member_count"] == 3
    assert after_round["t-g1"]["model_round"] == 1
    assert after_round["t-g1"]["accuracy"] is not None
    assert after_round["t-g2"]["member_count"] == 0
    assert (moved["t-g1"]["member_count"], moved["t-g2"]["member_count"]) == (1, 2)
    assert (restored["t-g1"]["member_count"], restored["t-g2"]["member_count"]) == (3, 0)
    assert mirror.failures == 0


def test_an_unreachable_registry_never_stops_the_simulation() -> None:
    # Prepare
    mirror = RegistryMirror("http://127.0.0.1:9", domain="digits", prefix="t", timeout=0.5)
    t = Transcript(SimConfig(nodes=2), mirror)

    try:
        # Execute
        out = t.run("group create g\ngroup add g all\nshare\nstep")
    finally:
        mirror.close()

    # Assert
    assert out[-1].startswith("step 1 (100 ms): delivered 2")
    assert mirror.failures > 0
    assert t.session.errors == 0


def test_with_an_external_registry_nodes_keep_sending_heartbeats(registry: str) -> None:
    # Prepare
    mirror = RegistryMirror(registry, domain="digits", prefix="hb", heartbeat_every=0.2)
    Transcript(SimConfig(nodes=2), mirror)
    first = httpx.get(f"{registry}/nodes/hb-n001", timeout=10).json()["last_heartbeat"]

    try:
        # Execute
        time.sleep(1.0)
        later = httpx.get(f"{registry}/nodes/hb-n001", timeout=10).json()["last_heartbeat"]
    finally:
        mirror.close()

    # Assert
    assert later > first

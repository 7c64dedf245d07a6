"""The netns backend: nodes' messages cross real network namespaces, shaped per link."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sim.netns import MAX_NODES, NETNS_REQUIREMENT, Emulator, NetnsNetwork, attach, netem_args
from sim.network import Conditions
from sim.state import SimConfig
from tests.sim.helpers import ROOT, Transcript, sim_env


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    return None


needs_netns = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _sim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", "--no-registry", *args],
        cwd=ROOT,
        env=env or sim_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_netns_backend_without_iproute2_is_refused_with_exit_2(tmp_path: Path) -> None:
    script = tmp_path / "s.sim"
    script.write_text("stats\n")
    # sys.executable is absolute, so an empty PATH only hides ip and tc.
    done = _sim("--backend", "netns", "--script", str(script), env={**sim_env(), "PATH": ""})
    assert done.returncode == 2
    assert NETNS_REQUIREMENT in done.stderr
    assert "Traceback" not in done.stderr


def test_netns_backend_refuses_more_nodes_than_its_limit(tmp_path: Path) -> None:
    done = _sim("--backend", "netns", "--nodes", str(MAX_NODES + 1))
    assert done.returncode == 2
    assert f"at most {MAX_NODES} nodes" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    done = _sim("--backend", "ns3")
    assert done.returncode == 2
    assert "unknown backend 'ns3'" in done.stderr


LOSSLESS = """
train
exchange n0 n1
nstep 2
aggregate
test
stats
"""

DELAYED = """
net latency 200 link n1 n2
exchange n1 n2
nstep 2
nstep 4
"""

SLOW = """
net bandwidth 400 link n0 n1
exchange n0 n1
nstep 6
nstep 4
"""

LOST = """
net loss 1 link n0 n2
exchange n0 n2
nstep 3
"""


def test_netem_gets_the_links_conditions_in_its_units() -> None:
    cond = Conditions(latency_ms=40, jitter_ms=20, loss=0.1, bandwidth_kbps=800)
    # uniform(0, jitter) on top of the latency is netem's 50 ms +- 10 ms.
    assert netem_args(cond) == [
        "delay", "50.000ms", "10.000ms", "loss", "10.0000%", "rate", "800kbit",
    ]  # fmt: skip
    assert netem_args(Conditions()) == ["delay", "0.000ms"]


@pytest.mark.slow
@needs_netns
@pytest.mark.parametrize("netem", [None, False], ids=["kernel-shaping", "relay-shaping"])
def test_messages_cross_namespaces_shaped_per_link_and_teardown_leaves_nothing(
    netem: bool | None,
) -> None:
    config = SimConfig(nodes=3, step_ms=50)
    before = _namespaces()
    deterministic = Transcript(config)
    emulated = Transcript(config)
    network = attach(emulated.session.sim, emulator=Emulator(netem=netem))
    try:
        assert isinstance(emulated.session.sim.network, NetnsNetwork)
        em = network.emulator
        assert {em.namespace(n) for n in range(3)} <= _namespaces()

        # Lossless links: the same report, line for line, and the models' bytes arrived.
        assert emulated.run(LOSSLESS) == deterministic.run(LOSSLESS)
        model_bytes = emulated.session.sim.network.counters.bytes_sent // 2
        assert em.bytes_received == {0: model_bytes, 1: model_bytes}

        # 200 ms on a 50 ms step: nothing after two steps, both after four more, as modelled.
        delayed = emulated.run(DELAYED)
        assert delayed == deterministic.run(DELAYED)
        assert delayed[-2].startswith("steps 3-4 (200 ms): delivered 0")
        assert delayed[-1].startswith("steps 5-8 (400 ms): delivered 2")
        assert em.bytes_received[2] == model_bytes

        # 400 kbit/s: a model of 19 kB takes about 390 ms, not 300, yet well under 500.
        slow = emulated.run(SLOW)
        assert slow[-2].startswith("steps 9-14 (700 ms): delivered 0")
        assert slow[-1].startswith("steps 15-18 (900 ms): delivered 2")
        assert slow == deterministic.run(SLOW)

        # A link losing everything delivers nothing; node 2 receives no more bytes.
        lost = emulated.run(LOST)
        assert "delivered 0" in lost[-1]
        assert em.bytes_received[2] == model_bytes
        assert network.counters.delivered == deterministic.session.sim.network.counters.delivered
    finally:
        network.close()
    assert _namespaces() == before
    assert all(relay.process.poll() is not None for relay in em.relays.values())


@pytest.mark.slow
@needs_netns
def test_ctrl_c_during_a_netns_run_removes_every_namespace(tmp_path: Path) -> None:
    script = tmp_path / "long.sim"
    # A message 10 minutes away keeps every step waiting its full 100 ms.
    script.write_text("net latency 600000\nexchange n0 n1\nnstep 100000\n")
    before = _namespaces()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim",
            "--no-registry",
            "--nodes",
            "3",
            "--backend",
            "netns",
            "--script",
            str(script),
        ],
        cwd=ROOT,
        env=sim_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded by the script: the exchange line comes first
            if "sent 2 messages" in line:
                break
        assert len(_namespaces() - before) == 3
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err
    assert _namespaces() == before


@pytest.mark.slow
@needs_netns
def test_a_node_beyond_the_limit_gets_no_namespace_and_its_messages_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sim.netns.MAX_NODES", 2)
    before = _namespaces()
    emulated = Transcript(SimConfig(nodes=2, step_ms=50))
    network = attach(emulated.session.sim)
    try:
        out = emulated.run("node add\nexchange n0 n2\nexchange n0 n1\nnstep 2")
        assert out[-1].startswith("steps 1-2 (100 ms): delivered 2, dropped 0")
        assert network.outside == {2}
        assert network.counters.dropped == 2
        assert len(network.emulator.relays) == 2
    finally:
        network.close()
    assert _namespaces() == before

"""Two hosts in their own network namespaces (ip netns + veth) train together over TCP."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.node.p2p.signing import secret_file

ROOT = Path(__file__).resolve().parents[3]


def _skip_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.mark.slow
@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_two_hosts_in_separate_namespaces_train_across_their_addresses(tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    namespaces = [f"myc-{tag}-a", f"myc-{tag}-b"]
    veths = [f"mv{tag}a", f"mv{tag}b"]
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    addresses = [f"{subnet}.1", f"{subnet}.2"]
    procs: list[subprocess.Popen[bytes]] = []
    created: list[str] = []
    try:
        for ns in namespaces:
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("link", "add", veths[0], "type", "veth", "peer", "name", veths[1])
        for ns, veth, address in zip(namespaces, veths, addresses, strict=True):
            _ip("link", "set", veth, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{address}/30", "dev", veth)
            _ip("-n", ns, "link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

        secret = secret_file(tmp_path)
        outputs = [tmp_path / "a.json", tmp_path / "b.json"]
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        for i, ns in enumerate(namespaces):
            cmd = [
                "ip", "netns", "exec", ns,
                sys.executable, str(ROOT / "run_peer_training.py"),
                "--config", str(ROOT / "configs" / "base.yaml"),
                "--host", addresses[i],
                "--port", "5000",
                "--peers", f"{addresses[1 - i]}:5000",
                "--index", str(i),
                "--partitions", "2",
                "--rounds", "4",
                "--listen-timeout", "30",
                "--output", str(outputs[i]),
                "--shared-secret-file", str(secret),
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs.append(
                subprocess.Popen(cmd, stderr=logs[i].open("wb"), stdout=subprocess.DEVNULL, env=env)
            )
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(90) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    results = [json.loads(p.read_text()) for p in outputs]
    for i, result in enumerate(results):
        assert result["node_id"] == f"{addresses[i]}:5000"
        assert all(r["received_from"] == [f"{addresses[1 - i]}:5000"] for r in result["rounds"])
        assert result["test_accuracy"] >= 0.8
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in leftover for ns in namespaces)

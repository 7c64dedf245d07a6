"""P2P rounds between real peer processes on loopback: convergence, a killed peer, configs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.addresses import Address, free_port
from node.p2p.codecs import DenseCodec
from node.p2p.config import ConfigError, load_config
from node.p2p.peer import UPDATE, PeerTrainer
from node.p2p.transport import (
    Envelope,
    request,
)
from tests.node.helpers import digits_learner
from tests.node.p2p.signing import AUTH, SECRET, secret_file

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "run_peer_training.py"


def _start_peer(
    tmp: Path,
    port: int,
    others: list[int],
    index: int,
    partitions: int,
    *extra: str,
    secret: bytes = SECRET,
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, log = tmp / f"peer{port}.json", tmp / f"peer{port}.log"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--config",
        str(ROOT / "configs" / "base.yaml"),
        "--peers",
        ",".join(f"127.0.0.1:{p}" for p in others),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--index",
        str(index),
        "--partitions",
        str(partitions),
        "--output",
        str(out),
        "--shared-secret-file",
        str(secret_file(tmp, secret)),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stderr=log.open("wb"), stdout=subprocess.DEVNULL, env=env, cwd=ROOT
    )
    return proc, out, log


def _run_group(tmp: Path, n: int, *extra: str, timeout: float = 60) -> list[dict[str, object]]:
    ports = [free_port() for _ in range(n)]
    procs = [
        _start_peer(tmp, p, [q for q in ports if q != p], i, n, *extra) for i, p in enumerate(ports)
    ]
    try:
        for proc, _, log in procs:
            assert proc.wait(timeout) == 0, log.read_text()
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [json.loads(out.read_text()) for _, out, _ in procs]


@pytest.mark.slow
def test_two_peers_exchange_updates_and_converge_on_digits(tmp_path: Path) -> None:
    results = _run_group(tmp_path, 2, "--rounds", "6", "--listen-timeout", "20")

    for result in results:
        rounds = result["rounds"]
        assert isinstance(rounds, list) and len(rounds) == 6
        assert all(r["missing"] == [] and len(r["received_from"]) == 1 for r in rounds)
        assert float(result["test_accuracy"]) >= 0.85  # type: ignore[arg-type]
    # Every update arrived everywhere, so both hold the very same model.
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]


@pytest.mark.slow
def test_four_peers_with_8bit_updates_converge(tmp_path: Path) -> None:
    results = _run_group(
        tmp_path, 4, "--rounds", "8", "--listen-timeout", "30", "--compression", "weights_quantize"
    )

    for result in results:
        rounds = result["rounds"]
        assert isinstance(rounds, list)
        assert all(len(r["received_from"]) == 3 for r in rounds)
        assert float(result["test_accuracy"]) >= 0.85  # type: ignore[arg-type]
        assert result["codec"] == "q8"
    assert len({r["weights_sha256"] for r in results}) == 1
    dense_bytes = 4 * (64 * 64 + 64 + 64 * 10 + 10)
    sizes = [r["message_bytes"] for r in results[0]["rounds"]]  # type: ignore[attr-defined, index]
    assert all(dense_bytes / 4.2 < size < dense_bytes / 3.5 for size in sizes)


@pytest.mark.slow
def test_a_killed_peer_does_not_stall_the_others_past_the_timeout(tmp_path: Path) -> None:
    listen_timeout = 4.0
    ports = [free_port() for _ in range(3)]
    extra = ("--rounds", "30", "--listen-timeout", str(listen_timeout))
    procs = [
        _start_peer(tmp_path, p, [q for q in ports if q != p], i, 3, *extra)
        for i, p in enumerate(ports)
    ]
    victim, _, victim_log = procs[2]
    try:
        deadline = time.monotonic() + 60
        while "round 3:" not in victim_log.read_text():
            assert time.monotonic() < deadline, victim_log.read_text()
            assert victim.poll() is None, victim_log.read_text()
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        for proc, _, log in procs[:2]:
            assert proc.wait(60) == 0, log.read_text()
        finished_after = time.monotonic() - killed_at
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    victim_address = f"127.0.0.1:{ports[2]}"
    for _, out, _ in procs[:2]:
        result = json.loads(out.read_text())
        rounds = result["rounds"]
        assert len(rounds) == 30
        assert victim_address in rounds[-1]["missing"]
        # Round 1 also waits for the other processes to start. After that no round waits
        # past the listen timeout, and at most the rounds around the kill wait for it at
        # all (half the timeout separates "waited for the dead peer" from CPU contention).
        waited = [r["seconds"] for r in rounds[1:] if r["seconds"] > listen_timeout / 2]
        assert all(r["seconds"] < listen_timeout + 3 for r in rounds[1:]), waited
        assert len(waited) <= 2, waited
        assert result["test_accuracy"] >= 0.85
    assert finished_after < listen_timeout + 20


@pytest.mark.slow
def test_a_peer_with_the_wrong_secret_is_refused_and_says_so(tmp_path: Path) -> None:
    # Prepare: two peers whose secrets differ
    ports = [free_port(), free_port()]
    secrets = [SECRET, b"another-secret-entirely"]
    extra = ("--rounds", "2", "--listen-timeout", "5")

    # Execute
    procs = [
        _start_peer(tmp_path, p, [ports[1 - i]], i, 2, *extra, secret=secrets[i])
        for i, p in enumerate(ports)
    ]
    try:
        codes = [proc.wait(60) for proc, _, _ in procs]
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # Assert: neither merged the other's update, each dropped or was refused frames and says
    # so; whoever sent while the other listened was refused by name and exits 3
    results = [json.loads(out.read_text()) for _, out, _ in procs]
    logs = [log.read_text() for _, _, log in procs]
    for i, result in enumerate(results):
        assert all(r["received_from"] == [] for r in result["rounds"])
        assert result["refused_by"] or result["frames_refused"], logs[i]
        assert "did not verify (bad_signature" in logs[i] or "refused this peer" in logs[i]
    refused = [i for i, r in enumerate(results) if r["refused_by"]]
    assert refused, logs  # the first to send met the other listening
    for i in refused:
        assert results[i]["refused_by"] == {f"127.0.0.1:{ports[1 - i]}": "bad_signature"}
        assert codes[i] == 3
        assert f"error: peer 127.0.0.1:{ports[1 - i]} refused this peer's frames" in logs[i]
    assert "Traceback" not in "".join(logs)


def test_late_updates_never_mix_into_a_later_round(iid_digits_nodes: list) -> None:  # type: ignore[type-arg]
    async def scenario() -> tuple[int, list[int]]:
        trainer = PeerTrainer(digits_learner(iid_digits_nodes[0]), [], DenseCodec(), auth=AUTH)
        await trainer.start()
        try:
            await trainer.run(2)  # rounds 1 and 2, no peers
            address = Address("127.0.0.1", trainer.port)
            ack = await request(address, Envelope(sender="x", kind=UPDATE, round=1), auth=AUTH)
            await request(address, Envelope(sender="y", kind=UPDATE, round=99), auth=AUTH)
            return int(ack.meta["late"]), sorted(trainer._inbox)
        finally:
            await trainer.stop()

    late, buffered_rounds = asyncio.run(scenario())

    assert late == 1
    assert buffered_rounds == []  # round 1 is closed, round 99 too far ahead


def test_a_trainer_refuses_itself_or_a_duplicate_among_its_peers(iid_digits_nodes: list) -> None:  # type: ignore[type-arg]
    learner = digits_learner(iid_digits_nodes[0])
    port = free_port()
    itself = [Address("127.0.0.1", port + 1), Address("localhost", port)]
    twice = [Address("127.0.0.1", port + 1), Address("127.0.0.1", port + 1)]

    with pytest.raises(ValueError, match="is this peer itself"):
        PeerTrainer(learner, itself, DenseCodec(), auth=AUTH, port=port)
    with pytest.raises(ValueError, match="is listed twice"):
        PeerTrainer(learner, twice, DenseCodec(), auth=AUTH, port=port)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("compression:\n  mode: zip\np2p:\n  listen_timeout_s: -1\n  colour: red\n")

    with pytest.raises(ConfigError) as err:
        load_config(bad)

    message = str(err.value)
    assert "compression.mode" in message
    assert "p2p.listen_timeout_s" in message
    assert "p2p.colour" in message


def test_cli_flags_override_the_file_and_bad_flags_are_named() -> None:
    cfg = load_config(ROOT / "configs" / "base.yaml", {"p2p.local_port": 6001, "data.index": 2})
    assert cfg.p2p.local_port == 6001 and cfg.data.index == 2
    assert cfg.p2p.local_port != load_config(ROOT / "configs" / "base.yaml").p2p.local_port

    import typer

    app = typer.Typer()
    from node.cli.peer import peer

    app.command()(peer)
    result = CliRunner().invoke(
        app, ["--config", str(ROOT / "configs" / "base.yaml"), "--bits", "5"]
    )
    assert result.exit_code == 2
    assert "compression.bits" in result.output

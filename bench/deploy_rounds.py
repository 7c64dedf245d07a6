"""Seconds per federated round for a group of 4 node processes, against the same round in process.

Usage: python bench/deploy_rounds.py [--window S] [--ttl S] [--out FILE]

- ``deployed``: a registry and 4 ``python -m node`` processes on loopback (digits, IID
  shares, one group of 4, 1 local epoch, no pause between rounds). Seconds per round is
  wall time over the group's model rounds in a window of ``--window`` seconds, as the
  registry records them: Flower over gRPC plus the registry traffic of a round (host
  claim check, roster, snapshot upload, one performance report per member).
- ``in_process``: the group round (``train_in_memory``) over 4 learners with the same
  shares and epochs (Flower's message API on the in-memory grid, no registry): the same
  learning work.
- CPU seconds per round (all processes, from /proc) are reported beside wall time: on a
  shared machine they drift less than wall time, which depends on who else is running.
- ``host_death``: the host is SIGKILLed; the time until the group's next completed round
  under a new host. It is bounded below by the registry's heartbeat TTL (``--ttl``): the
  dead host stays the group's host until the registry expires it.

Results go to bench/results/deploy_rounds.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from node.addresses import free_port
from node.federation.inprocess import train_in_memory
from node.federation.strategies import set_flower_log_level
from node.learning.data import load_dataset
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import partition

log = logging.getLogger("bench.deploy_rounds")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "deploy_rounds.json"
NODES = 4
LOCAL_EPOCHS = 1
ROUND_LINE = re.compile(r"round \d+: (\d+) trained \(0 failed\), accuracy \S+, ([\d.]+) s")


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def _flower_seconds(host_log: str) -> float | None:
    """Median of the host's own timing of a full round's Flower phases (fit + evaluate)."""
    times = [float(m[2]) for m in ROUND_LINE.finditer(host_log) if int(m[1]) == NODES]
    return statistics.median(times) if times else None


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes so far, from /proc (Linux)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _group(url: str) -> dict[str, Any] | None:
    data = httpx.get(f"{url}/groups", timeout=5).json()["data"]
    return dict(data[0]) if data else None


def in_process_round_seconds(rounds: int, contributions: bool = False) -> dict[str, float]:
    """Median seconds of a group round in memory over 4 learners, after one warm-up round."""
    shares = partition(load_dataset("digits"), NODES, "iid", seed=0)
    learners = [Learner(build_model("digits", seed=i), s, seed=i) for i, s in enumerate(shares)]
    weights = learners[0].get_weights()
    times = []
    cpu = 0.0
    for r in range(rounds + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = train_in_memory(
            learners,
            weights,
            round_=r + 1,
            local_epochs=LOCAL_EPOCHS,
            measure_contribution=contributions,
        )
        if r:
            times.append(time.perf_counter() - start)
            cpu += time.process_time() - cpu_start
        weights = result.weights
    return {
        "median": statistics.median(times),
        "min": min(times),
        "cpu_seconds_per_round": cpu / rounds,
        "rounds": rounds,
    }


def deployed(window: float, ttl: float, tmp: Path, contributions: bool = False) -> dict[str, Any]:
    """Start a registry and 4 nodes; measure rounds, then the recovery from a host's death."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    cmd = [sys.executable, "-m", "registry", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data-dir", str(tmp / "registry"), "--heartbeat-ttl", str(ttl)]
    cmd += ["--sweep-interval", "0.2"]
    with (tmp / "registry.log").open("ab") as out:
        procs["registry"] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 60, "registry")

        def start(i: int) -> None:
            node_cmd = [
                sys.executable, "-m", "node", "--registry-url", url, "--node-id", f"n{i}",
                "--address", "127.0.0.1:0", "--listen", "127.0.0.1:0",
                "--partition", "iid", "--num-partitions", str(NODES), "--partition-id", str(i),
                "--policy", "reported", "--max-capacity", str(NODES),
                "--local-epochs", str(LOCAL_EPOCHS), "--heartbeat-interval-s", "0.5",
                "--group-evaluation-interval-s", "3600", "--join-wait-s", "2",
            ]  # fmt: skip
            if not contributions:  # the in-process baseline measures none either
                node_cmd.append("--no-contributions")
            with (tmp / f"n{i}.log").open("ab") as out:
                procs[f"n{i}"] = subprocess.Popen(
                    node_cmd, stdout=out, stderr=subprocess.STDOUT, env=env
                )

        start(0)
        _wait(lambda: _group(url), 120, "the first group")
        for i in range(1, NODES):
            start(i)
        full = _wait(
            lambda: (g := _group(url)) and g["member_count"] == NODES and g, 120, "4 members"
        )
        # Let every member connect to the host before timing.
        base = full["model_round"]
        _wait(lambda: (_group(url) or {})["model_round"] >= base + 3, 60, "rounds with 4")
        pids = [p.pid for p in procs.values()]
        g0, t0, c0 = _group(url), time.monotonic(), _cpu_seconds(pids)
        time.sleep(window)
        g1, t1, c1 = _group(url), time.monotonic(), _cpu_seconds(pids)
        assert g0 is not None and g1 is not None
        rounds = g1["model_round"] - g0["model_round"]
        per_round = (t1 - t0) / rounds if rounds else float("inf")

        host = g1["host_node_id"]
        epoch = g1["host_epoch"]
        procs[host].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        round_at_kill = (_group(url) or g1)["model_round"]
        after = _wait(
            lambda: (
                (g := _group(url))
                and g["host_epoch"] > epoch
                and g["model_round"] > round_at_kill
                and g
            ),
            120,
            "a round under a new host",
        )
        recovery = time.monotonic() - killed_at
        flower = _flower_seconds((tmp / f"{host}.log").read_text(errors="replace"))
        return {
            "seconds_per_round": per_round,
            "flower_seconds_per_round_median": flower,
            "cpu_seconds_per_round": (c1 - c0) / rounds if rounds else None,
            "rounds_in_window": rounds,
            "window_seconds": t1 - t0,
            "host_death": {
                "killed": host,
                "new_host": after["host_node_id"],
                "seconds_to_next_round": recovery,
                "round_at_kill": round_at_kill,
                "next_round": after["model_round"],
                "heartbeat_ttl": ttl,
            },
        }
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def main() -> None:
    """Run both measurements and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=15.0, help="Seconds of rounds timed.")
    parser.add_argument("--ttl", type=float, default=3.0, help="The registry's heartbeat TTL.")
    parser.add_argument("--in-process-rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--contributions",
        action="store_true",
        help="Measure leave-one-out contributions in every round, on both sides.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "node.federation.inprocess"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_flower_log_level(logging.WARNING)
    load_before = os.getloadavg()[0]
    inproc = in_process_round_seconds(args.in_process_rounds, args.contributions)
    log.info("in process: %.4f s per round (median)", inproc["median"])
    with tempfile.TemporaryDirectory(prefix="deploy-rounds-") as tmp:
        dep = deployed(args.window, args.ttl, Path(tmp), args.contributions)
    log.info(
        "deployed: %.4f s per round (%d rounds); host death to next round: %.2f s",
        dep["seconds_per_round"],
        dep["rounds_in_window"],
        dep["host_death"]["seconds_to_next_round"],
    )
    result = {
        "group_size": NODES,
        "dataset": "digits",
        "local_epochs": LOCAL_EPOCHS,
        "contributions": args.contributions,
        "transport": "flower legacy grpc-bidi (start_grpc_server + start_client)",
        "deployed": dep,
        "in_process": inproc,
        "ratio_deployed_to_in_process": dep["seconds_per_round"] / inproc["median"],
        "cpu_ratio_deployed_to_in_process": (
            dep["cpu_seconds_per_round"] / inproc["cpu_seconds_per_round"]
            if dep["cpu_seconds_per_round"]
            else None
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "load_1min_before": load_before,
            "load_1min_after": os.getloadavg()[0],
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("ratio %.1fx; written to %s", result["ratio_deployed_to_in_process"], args.out)


if __name__ == "__main__":
    main()

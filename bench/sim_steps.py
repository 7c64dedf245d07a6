"""Simulator speed: steps per second with autonet on, at 100 and 1,000 digits nodes, and memory.

Each size runs in its own process, so its peak RSS (``resource.getrusage``) is its
own. A step with autonet on delivers the due messages, then every node trains one
epoch, sends its model to its neighbours (8 nodes per neighbourhood: 7 messages of
the real encoded size) and averages what it received. Every node holds
``--samples-per-node`` examples (nodes overlap when that exceeds the data set), so
both sizes do the same work per node. Writes ``bench/results/sim_steps.json``.

    .venv/bin/python bench/sim_steps.py                 # 100 and 1,000 nodes
    .venv/bin/python bench/sim_steps.py --sizes 100 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sim_steps.json"


def measure(nodes: int, steps: int, samples_per_node: int, seed: int) -> dict[str, Any]:
    """Build ``nodes`` nodes and time ``steps`` autonet steps (after one warm-up)."""
    import torch

    from sim.state import SimConfig, Simulation

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sim = Simulation(
        SimConfig(nodes=nodes, dataset="digits", samples_per_node=samples_per_node, seed=seed)
    )
    build_s = time.perf_counter() - t0
    sim.schedules.autonet = True
    sim.step()  # warm-up: the first messages go out
    counters = sim.network.counters
    sent0, bytes0 = counters.sent, counters.bytes_sent
    durations = []
    for _ in range(steps):
        t = time.perf_counter()
        sim.step()
        durations.append(time.perf_counter() - t)
    t = time.perf_counter()
    stats = sim.stats()
    stats_s = time.perf_counter() - t
    total = sum(durations)
    return {
        "nodes": nodes,
        "areas": sim.network.topology.areas,
        "samples_per_node": samples_per_node,
        "steps_timed": steps,
        "build_seconds": round(build_s, 3),
        "seconds_per_step": round(total / steps, 4),
        "slowest_step_seconds": round(max(durations), 4),
        "steps_per_second": round(steps / total, 3),
        "messages_per_step": (counters.sent - sent0) // steps,
        "bytes_per_step": (counters.bytes_sent - bytes0) // steps,
        "stats_seconds": round(stats_s, 3),
        "mean_accuracy": round(stats.mean_accuracy, 4),
        "worst_accuracy": round(stats.worst_accuracy, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _run_one(nodes: int, steps: int, samples_per_node: int, seed: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [
        sys.executable,
        __file__,
        "--single",
        str(nodes),
        "--steps",
        str(steps),
        "--samples-per-node",
        str(samples_per_node),
        "--seed",
        str(seed),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Run each size in a fresh process, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--steps", type=int, default=None, help="Default: 20 (100), 5 (1000).")
    parser.add_argument("--samples-per-node", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(measure(args.single, args.steps, args.samples_per_node, args.seed)))
        return
    runs = []
    for size in args.sizes:
        steps = args.steps or (20 if size <= 100 else 5)
        runs.append(_run_one(size, steps, args.samples_per_node, args.seed))
        r = runs[-1]
        print(
            f"{r['nodes']:>5} nodes: {r['steps_per_second']:.3f} steps/s "
            f"({r['seconds_per_step']:.3f} s/step, {r['messages_per_step']} msgs, "
            f"{r['bytes_per_step'] / 1e6:.1f} MB per step), build {r['build_seconds']:.1f} s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, mean acc {r['mean_accuracy']:.3f}",
            flush=True,
        )
    report = {
        "benchmark": "sim_steps",
        "what": "autonet steps (deliver, train 1 epoch, share with neighbours, aggregate)",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch_threads": 1,
            "load_average_at_end": os.getloadavg(),
        },
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

"""Peak memory of an in-process network: N Fashion-MNIST nodes, one round, each N alone.

Every N runs in a fresh subprocess (peaks never carry over from a larger N): it loads
Fashion-MNIST, partitions it (clustered, 4 rotation clusters, ``--samples`` examples per
node), builds an ``InProcessNetwork`` against a real ``BackgroundRegistry`` in the same
process (as ``bench/clustered.py`` does), ``start()``s it and runs ``--rounds`` rounds.
It records the resident set size after each stage (``VmRSS``, MB) and the peak
(``ru_maxrss``), and the per-node cost: (RSS after the last round - RSS before the
network was built) / N. Prints a table; ``--out`` writes the figures as JSON.

    nice .venv/bin/python bench/memory.py --nodes 10,100,300 --samples 80 --out mem.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from node.errors import DatasetError
from node.federation.strategies import set_flower_log_level
from node.learning.data import load_dataset
from node.learning.partition import MIN_SAMPLES_PER_NODE, partition
from node.runtime.network import InProcessNetwork, NetworkConfig
from registry.server import BackgroundRegistry
from registry.settings import RegistrySettings

if __package__ in (None, ""):  # run as a script: the repository root holds `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cli_args import at_least, check_out, positive

CLUSTERS = 4
TARGET_NODES = 1000
TARGET_PEAK_MB = 4096.0
_KB = 1024.0


def rss_mb() -> float:
    """This process's resident set size now, in MB (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / _KB
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def peak_mb() -> float:
    """This process's peak resident set size so far, in MB (``ru_maxrss`` is KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KB


def probe(nodes: int, samples: int, rounds: int, seed: int) -> dict[str, Any]:
    """Build, start and run one network of ``nodes`` nodes here; the memory figures."""
    stages: dict[str, float] = {"imported": rss_mb()}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    dataset = load_dataset("fashion")
    stages["loaded"] = rss_mb()
    data = partition(
        dataset, nodes, "clustered", seed=seed, clusters=CLUSTERS, samples_per_node=samples
    )
    del dataset  # the network keeps only the nodes' shares
    stages["partitioned"] = rss_mb()
    seconds["data"] = time.perf_counter() - t0
    cfg = NetworkConfig(dataset="fashion", domain="fashion", seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        with BackgroundRegistry(RegistrySettings(data_dir=tmp)) as reg:
            stages["registry"] = rss_mb()
            t = time.perf_counter()
            net = InProcessNetwork(reg.url, data, cfg)
            seconds["build"] = time.perf_counter() - t
            stages["built"] = rss_mb()
            t = time.perf_counter()
            net.start()
            seconds["start"] = time.perf_counter() - t
            stages["started"] = rss_mb()
            t = time.perf_counter()
            for _ in range(rounds):
                net.run_round()
            seconds["rounds"] = time.perf_counter() - t
            stages["ran"] = rss_mb()
            groups = len({a.group_id for a in net.agents if a.group_id is not None})
            net.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "nodes": nodes,
        "samples_per_node": samples,
        "rounds": rounds,
        "groups": groups,
        "rss_mb": stages,
        "peak_mb": peak_mb(),
        "per_node_mb": (stages["ran"] - stages["registry"]) / nodes,
        "seconds": seconds,
    }


def _child(nodes: int, samples: int, rounds: int, seed: int) -> dict[str, Any]:
    """Run ``probe`` for ``nodes`` in a fresh interpreter; its figures."""
    cmd = [sys.executable, __file__, "--child", str(nodes), "--samples", str(samples)]
    cmd += ["--rounds", str(rounds), "--seed", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{nodes} nodes: the probe failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'nodes':>6} {'loaded':>8} {'parted':>8} {'built':>8} {'started':>8} "
        f"{'ran':>8} {'peak':>8} {'MB/node':>8} {'build s':>8} {'round s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        s = r["rss_mb"]
        lines.append(
            f"{r['nodes']:>6} {s['loaded']:>8.0f} {s['partitioned']:>8.0f} {s['built']:>8.0f} "
            f"{s['started']:>8.0f} {s['ran']:>8.0f} {r['peak_mb']:>8.0f} "
            f"{r['per_node_mb']:>8.2f} {r['seconds']['build']:>8.1f} "
            f"{r['seconds']['rounds'] / r['rounds']:>8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    """Probe each N in its own subprocess; print the table, write JSON with ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10,100,300", help="comma-separated node counts")
    parser.add_argument(
        "--samples", type=at_least(MIN_SAMPLES_PER_NODE), default=80, help="examples per node"
    )
    parser.add_argument("--rounds", type=positive, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.out is not None:
        check_out(parser, args.out)
    logging.basicConfig(level=logging.WARNING)
    set_flower_log_level(logging.WARNING)
    if args.child is not None:
        print(json.dumps(probe(args.child, args.samples, args.rounds, args.seed)))
        return
    try:
        counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--nodes {args.nodes!r}: give comma-separated whole numbers")
    if not counts or min(counts) < 1:
        parser.error("--nodes: give at least one count, each at least 1")
    try:
        load_dataset("fashion")  # fail here, with the package to install, not in a child
    except DatasetError as exc:
        parser.exit(2, f"{exc}\n")
    results = []
    for n in counts:  # each row as it comes: a large N may take long
        results.append(_child(n, args.samples, args.rounds, args.seed))
        print(_table(results).splitlines()[-1] if len(results) > 1 else _table(results), flush=True)
    for r in results:
        if r["nodes"] == TARGET_NODES:
            verdict = "met" if r["peak_mb"] < TARGET_PEAK_MB else "MISSED"
            print(f"target: {TARGET_NODES} nodes under {TARGET_PEAK_MB:.0f} MB peak: {verdict}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "results": results,
        }
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""How far one machine goes: 10 to 1,000 nodes in one process, and on Ray (issue 16).

For each size and backend, in a fresh process (so peaks do not carry over): Fashion-MNIST
nodes (``--samples`` examples each, ``--clusters`` rotation clusters) run ``--rounds``
rounds of an ``InProcessNetwork`` against a real registry (its own process, as a
deployment has it) with the default configuration (meta-federation and contribution
measurement on). After every round the same nodes' bare local training of the same
epochs runs on the same backend (``InProcessNetwork.bare_round``): the overhead ratio is
the round's seconds over the bare training's, measured in the same run. Printed per run:
seconds per round, the overhead ratio (mean over rounds after the first, whose
placement is a one-off; and round 1's), peak RSS of the network's process and of its
largest worker, group purity and mean validation accuracy after the last round.

For 10 clients it also runs Flower's Ray simulation of plain FedAvg on the same model and
data (``bench/flower_baseline.py``), the peer baseline, per client-round.

Targets (issue 16): 1,000 nodes under 4 GB peak RSS; overhead <= 1.3x at 1,000 nodes; the
in-process backend >= 5x faster per client-round than Flower's Ray simulation at 10
clients; Ray at 1,000 nodes on 2 local CPUs within 1.5x of the in-process backend.

    PYTHONPATH=. python bench/scale.py --nodes 10,100,300,1000 --backends processes,ray
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a script: the repository root holds `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cli_args import at_least, check_out, choice_list, positive
from node.learning.partition import MIN_SAMPLES_PER_NODE

BACKEND_CHOICES = ("serial", "processes", "ray")
TARGET_RSS_MB = 4096
TARGET_OVERHEAD = 1.3
TARGET_FLOWER_SPEEDUP = 5.0
TARGET_RAY_RATIO = 1.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def registry_process(data_dir: Path) -> Iterator[str]:
    """A registry in its own process (``python -m registry``); yields its URL."""
    port = _free_port()
    log = (data_dir / "registry.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "registry",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("MYCELIUM_REGISTRY_")},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # up to ~30 s for the process to come up
            if proc.poll() is not None:
                raise RuntimeError(f"registry exited: see {data_dir / 'registry.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("registry did not become healthy")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _peak_mb(pid: int | str) -> float:
    """Peak resident set (VmHWM) of process ``pid``, MB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _worker_pids(backend: str) -> list[int]:
    """This process's children (worker processes), or Ray's workers on this machine."""
    me = str(os.getpid())
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if (backend == "processes" and ppid == me) or (
            backend == "ray" and cmd.startswith("ray::")
        ):
            out.append(int(proc.name))
    return out


def registry_load(url: str) -> dict[str, dict[str, float]]:
    """The registry's own count of requests and seconds spent answering, by route
    (``METHOD route``), from its Prometheus ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = f"{sample.labels.get('method')} {sample.labels.get('route')}"
            if sample.name == "mycelium_registry_requests_total":
                out.setdefault(key, {"requests": 0.0, "seconds": 0.0})["requests"] += sample.value
            elif sample.name == "mycelium_registry_request_duration_seconds_sum":
                out.setdefault(key, {"requests": 0.0, "seconds": 0.0})["seconds"] += sample.value
    return out


def _per_round(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], rounds: int
) -> dict[str, dict[str, float]]:
    diff = {
        key: {k: (v - before.get(key, {}).get(k, 0.0)) / rounds for k, v in figures.items()}
        for key, figures in after.items()
    }
    return dict(sorted(diff.items(), key=lambda item: -item[1]["requests"]))


def run_one(nodes: int, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """One network of ``nodes`` on ``backend``: its figures."""
    import torch

    from node.federation.strategies import set_flower_log_level
    from node.learning.data import load_dataset
    from node.learning.partition import partition
    from node.runtime.backends import make_backend
    from node.runtime.network import InProcessNetwork, NetworkConfig

    torch.set_num_threads(1)  # the driver's own forward passes: tiny batches, one thread
    set_flower_log_level(logging.WARNING)
    logging.getLogger("node").setLevel(logging.WARNING)
    data = partition(
        load_dataset("fashion"),
        nodes,
        "clustered",
        seed=args.seed,
        clusters=args.clusters,
        cluster_mode="rotation",
        samples_per_node=args.samples,
    )
    cfg = NetworkConfig(dataset="fashion", domain="fashion", seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rounds: list[dict[str, float]] = []
    try:
        with registry_process(tmp) as url:
            t0 = time.perf_counter()
            net = InProcessNetwork(
                url, data, cfg, backend=make_backend(backend, workers=args.workers)
            )
            del data  # the network keeps its pooled copy only
            net.start()
            start_s = time.perf_counter() - t0
            load_before = registry_load(url)
            for _ in range(args.rounds):
                stats = net.run_round()
                bare = net.bare_round()
                rounds.append(
                    {
                        "seconds": stats.seconds,
                        "bare_seconds": bare,
                        "overhead": stats.seconds / bare if bare > 0 else float("nan"),
                        "groups": len(stats.groups),
                        "mean_accuracy": stats.mean_accuracy,
                    }
                )
                print(
                    f"  {nodes} nodes {backend} round {len(rounds)}: {stats.seconds:.1f} s, "
                    f"bare {bare:.1f} s, {len(stats.groups)} groups, "
                    f"acc {stats.mean_accuracy:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
            load = _per_round(load_before, registry_load(url), len(rounds))
            workers = [_peak_mb(pid) for pid in _worker_pids(backend)]
            purity = net.purity()
            net.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    later = rounds[1:] or rounds
    mean = lambda key, rs=later: sum(r[key] for r in rs) / len(rs)  # noqa: E731
    return {
        "nodes": nodes,
        "backend": backend,
        "start_seconds": start_s,
        "seconds_per_round": mean("seconds", rounds),
        "seconds_per_round_after_first": mean("seconds"),
        "bare_seconds_per_round": mean("bare_seconds", rounds),
        "overhead": mean("overhead"),
        "overhead_round_1": rounds[0]["overhead"],
        "seconds_per_client_round": mean("seconds", rounds) / nodes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": max(workers, default=0.0),
        "workers": len(workers),
        "purity": purity,
        "mean_accuracy": rounds[-1]["mean_accuracy"],
        "groups": rounds[-1]["groups"],
        "rounds": rounds,
        "registry_per_round": load,
        "requests_per_round": sum(v["requests"] for v in load.values()),
        "registry_seconds_per_round": sum(v["seconds"] for v in load.values()),
    }


def _subprocess(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` (this script with ``--one``) in a fresh process; its JSON answer."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]
    )
    out = subprocess.run(
        [sys.executable, __file__, *argv], env=env, stdout=subprocess.PIPE, check=False
    )
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}"}
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def targets(results: Sequence[dict[str, Any]], flower: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's targets: met (True/False) or not measured (None), with the figures."""

    def row(nodes: int, backend: str) -> dict[str, Any] | None:
        return next(
            (r for r in results if r.get("nodes") == nodes and r.get("backend") == backend), None
        )

    inproc = row(1000, "processes") or row(1000, "serial")
    ray = row(1000, "ray")
    small = row(10, "processes") or row(10, "serial")
    out: dict[str, Any] = {
        "rss_1000_under_4gb": inproc["peak_rss_mb"] < TARGET_RSS_MB if inproc else None,
        "overhead_1000_at_most_1.3": inproc["overhead"] <= TARGET_OVERHEAD if inproc else None,
        "ray_1000_within_1.5x": (
            ray["seconds_per_round"] <= TARGET_RAY_RATIO * inproc["seconds_per_round"]
            if ray and inproc
            else None
        ),
        "flower_speedup_at_least_5x": None,
    }
    if flower and small and "seconds_per_client_round" in flower:
        speedup = flower["seconds_per_client_round"] / small["seconds_per_client_round"]
        out["flower_speedup"] = speedup
        out["flower_speedup_at_least_5x"] = speedup >= TARGET_FLOWER_SPEEDUP
    if ray and inproc:
        out["ray_ratio"] = ray["seconds_per_round"] / inproc["seconds_per_round"]
    return out


def print_table(results: Sequence[dict[str, Any]]) -> None:
    """The runs as a Markdown table."""
    print(
        "| nodes | backend | s/round | s/round after 1 | bare s/round | overhead "
        "| overhead round 1 | peak RSS MB | worker peak MB | purity | mean acc | groups "
        "| requests/round | registry s/round |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r.get('nodes')} | {r.get('backend')} | {r['error']} |")
            continue
        print(
            f"| {r['nodes']} | {r['backend']} | {r['seconds_per_round']:.2f} "
            f"| {r['seconds_per_round_after_first']:.2f} | {r['bare_seconds_per_round']:.2f} "
            f"| {r['overhead']:.2f} | {r['overhead_round_1']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['worker_peak_rss_mb']:.0f} | {r['purity']:.2f} | {r['mean_accuracy']:.3f} "
            f"| {r['groups']} | {r['requests_per_round']:.0f} "
            f"| {r['registry_seconds_per_round']:.2f} |"
        )


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be integers, got {text!r}") from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(f"sizes must be at least 2 nodes, got {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sizes x backends, print the table and the targets, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=_sizes, default=[10, 100, 300, 1000])
    p.add_argument(
        "--backends", type=choice_list(BACKEND_CHOICES, "backend"), default=["processes", "ray"]
    )
    p.add_argument("--rounds", type=positive, default=5)
    p.add_argument(
        "--samples", type=at_least(MIN_SAMPLES_PER_NODE), default=80, help="examples per node"
    )
    p.add_argument("--clusters", type=positive, default=4)
    p.add_argument("--workers", type=positive, default=None, help="processes / Ray CPUs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flower", action="store_true", help="skip Flower's Ray simulation")
    p.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    p.add_argument("--one", nargs=2, metavar=("NODES", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--flower-only", type=positive, metavar="CLIENTS", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1], args)))
        return
    if args.flower_only:
        # Ray's start-up and shut-down in a process of its own.
        from bench.flower_baseline import flower_fedavg
        from node.learning.data import load_dataset
        from node.learning.partition import partition

        data = partition(
            load_dataset("fashion"),
            args.flower_only,
            "clustered",
            seed=args.seed,
            clusters=args.clusters,
            samples_per_node=args.samples,
        )
        print(json.dumps(flower_fedavg(data, args.rounds, 2, seed=args.seed)))
        return
    check_out(p, args.out)
    common = ["--rounds", str(args.rounds), "--samples", str(args.samples)]
    common += ["--clusters", str(args.clusters), "--seed", str(args.seed)]
    if args.workers:
        common += ["--workers", str(args.workers)]
    results = []
    for nodes in args.nodes:
        for backend in args.backends:
            print(f"{nodes} nodes on {backend} ...", file=sys.stderr, flush=True)
            results.append(
                {"nodes": nodes, "backend": backend}
                | _subprocess([*common, "--one", str(nodes), backend])
            )
    flower = None
    if not args.no_flower and 10 in args.nodes:
        print("Flower's Ray simulation, 10 clients ...", file=sys.stderr, flush=True)
        flower = _subprocess([*common, "--flower-only", "10"])
    print_table(results)
    if flower:
        print(f"\nFlower Ray simulation, FedAvg, 10 clients: {json.dumps(flower)}")
    met = targets(results, flower)
    print("\nTargets:", json.dumps(met, indent=1))
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
                "flower": flower,
                "targets": met,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

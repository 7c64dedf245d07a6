"""What visualization costs: ms per rendered frame, and training kept while it runs.

Usage: python bench/viz_cost.py [--frames 20] [--rounds 30] [--nodes 8] [--repeats 2]
                                [--interval 0.5] [--out bench/results/viz_cost.json]

1. Drawing: synthetic runs of 8, 64 and 256 nodes (viz.synthetic), frames rendered at
   1280x720 one after another; ms per frame (mean, median, p95) and GIF encoding time.
2. Training throughput: the demo (digits, clustered) for a fixed number of rounds without
   and with visualization (a viz session in its own process polling every --interval s),
   alternated --repeats times in this one run; rounds per second of each and the ratio
   (target: >= 0.90). The machine is shared, so compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from viz.export import export
from viz.frames import build_frames
from viz.render import DEFAULT_SIZE, Renderer
from viz.session import VizOptions
from viz.synthetic import synthetic_run

SIZES = ((8, 2), (64, 4), (256, 8))


def render_cost(frames_per_size: int) -> list[dict[str, Any]]:
    """ms per frame at each node count."""
    out = []
    for nodes, groups in SIZES:
        frames = build_frames(synthetic_run(nodes, groups, frames_per_size, seed=1))
        renderer = Renderer(DEFAULT_SIZE)
        renderer.render(frames[0])  # warm-up: font cache, first layout
        renderer.timings.clear()
        for f in frames:
            renderer.render(f)
        ms = sorted(1000 * t for t in renderer.timings)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = export(frames, Path(tmp), fps=4)
            export_s = time.perf_counter() - t0
        out.append(
            {
                "nodes": nodes,
                "groups": groups,
                "frames": len(frames),
                "ms_per_frame_mean": round(statistics.fmean(ms), 1),
                "ms_per_frame_median": round(statistics.median(ms), 1),
                "ms_per_frame_p95": round(ms[int(0.95 * (len(ms) - 1))], 1),
                "export_seconds": round(export_s, 2),
                "gif_bytes_per_frame": round(result.gif_bytes / result.frames_written),
            }
        )
    return out


def _demo(nodes: int, rounds: int, seed: int, viz: VizOptions | None) -> dict[str, Any]:
    from mycelium.demo import DemoConfig, run_demo
    from mycelium.viz_demo import run_demo_with_viz

    with tempfile.TemporaryDirectory() as tmp:
        times: list[float] = []
        cfg = DemoConfig(
            nodes=nodes,
            rounds=rounds,
            dataset="digits",
            partition="clustered",
            clusters=2,
            capacity=5,
            drift=False,  # the drawing's cost on the network this bench always measured
            seed=seed,
            output=Path(tmp) / "demo",
            local_only=False,
            progress=False,
            on_round=lambda s: times.append(time.monotonic()),
        )
        viz_summary: dict[str, Any] = {}
        if viz is None:
            run_demo(cfg)
        else:
            viz.output = Path(tmp) / "viz"
            _, viz_summary = run_demo_with_viz(cfg, viz)
    # Training time from the end of round 1 to the last round: start-up and export excluded.
    span = times[-1] - times[0]
    return {
        "rounds_per_second": round((len(times) - 1) / span, 3),
        "training_seconds": round(span, 3),
        "viz_snapshots": viz_summary.get("snapshots"),
        "viz_ms_per_frame": viz_summary.get("ms_per_frame"),
    }


def throughput(nodes: int, rounds: int, repeats: int, interval: float) -> dict[str, Any]:
    """Rounds/s without and with visualization, alternated in one run."""
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for i in range(repeats):
        runs["without"].append(_demo(nodes, rounds, i, None))
        opts = VizOptions(interval=interval, live=False)
        runs["with"].append(_demo(nodes, rounds, i, opts))
    base = statistics.fmean(r["rounds_per_second"] for r in runs["without"])
    viz = statistics.fmean(r["rounds_per_second"] for r in runs["with"])
    return {
        "nodes": nodes,
        "rounds": rounds,
        "interval": interval,
        "runs": runs,
        "rounds_per_second_without": round(base, 3),
        "rounds_per_second_with": round(viz, 3),
        "kept": round(viz / base, 3),
        "target": 0.9,
    }


def main() -> None:
    """Run both parts and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/viz_cost.json"))
    args = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.basicConfig(level=logging.WARNING)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_start": os.getloadavg(),
        "frame_size": list(DEFAULT_SIZE),
        "render": render_cost(args.frames),
    }
    for r in result["render"]:
        print(
            f"{r['nodes']:>4} nodes: {r['ms_per_frame_mean']:6.1f} ms/frame "
            f"(median {r['ms_per_frame_median']}, p95 {r['ms_per_frame_p95']})"
        )
    if not args.skip_training:
        t = result["training"] = throughput(args.nodes, args.rounds, args.repeats, args.interval)
        print(
            f"training: {t['rounds_per_second_without']} rounds/s without viz, "
            f"{t['rounds_per_second_with']} with: {100 * t['kept']:.0f}% kept"
        )
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""The process of one simulation: the demo's in-process network against a given registry.

Started by the registry's SimulationManager; everything it prints is the simulation's
log, streamed live to the dashboard.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from registry.schemas import SimulationCreate

ROUND_LINE = "round {round}/{total}: {groups} groups, mean accuracy {acc:.3f}, {moves} moves"


def main(argv: list[str] | None = None) -> int:
    """Run one simulation; exit status 0 when it finished and wrote its summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registry-url", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--node-prefix", required=True)
    parser.add_argument("--params", required=True, help="SimulationCreate as JSON.")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore", "flwr", "node.federation.inprocess"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    params = SimulationCreate.model_validate_json(args.params)

    from mycelium.demo import DemoConfig, run_demo
    from node.runtime.network import RoundStats

    def on_round(stats: RoundStats) -> None:
        print(
            ROUND_LINE.format(
                round=stats.round,
                total=params.rounds,
                groups=len(stats.groups),
                acc=stats.mean_accuracy,
                moves=stats.migrations,
            )
            + f" ({stats.seconds:.2f} s)",
            flush=True,
        )
        if stats.contributions:
            best = sorted(stats.contributions.items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{n} {c:+.4f}" for n, c in best[:6])
            print(
                f"  contributions (leave-one-out, {stats.contribution_seconds:.2f} s): {shown}",
                flush=True,
            )

    print(f"simulation: {params.model_dump_json()}", flush=True)
    print(f"registry: {args.registry_url}", flush=True)
    summary = run_demo(
        DemoConfig(
            nodes=params.nodes,
            rounds=params.rounds,
            dataset=params.dataset,
            partition=params.partition,
            clusters=params.clusters,
            cluster_mode=params.cluster_mode,
            policy=params.policy,
            strategy=params.strategy,
            samples_per_node=params.samples_per_node,
            seed=params.seed,
            output=args.output,
            registry_url=args.registry_url,
            local_only=params.local_only,
            progress=False,
            node_prefix=args.node_prefix,
            on_round=on_round,
        )
    )
    final = summary["final"]
    print(
        f"finished: {summary['rounds']} rounds, {final['groups']} groups, "
        f"mean test accuracy {final['mean_accuracy']:.3f}, worst {final['worst_accuracy']:.3f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

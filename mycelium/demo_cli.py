"""The `demo` command: flags, the final tables (nodes, migrations), clear errors for bad input."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mycelium.demo import DEFAULT_CLUSTERS, DemoConfig, migrations_table, run_demo
from node.cli.common import one_of
from node.errors import NodeError
from node.federation.strategies import STRATEGY_NAMES
from node.learning.data import DATASET_NAMES
from node.learning.partition import CLUSTER_MODES, SCHEMES
from node.runtime.backends import RAY_MISSING, BackendError
from node.runtime.policy import POLICIES


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """The final tables: one row per node, one per migration with its reason; then the
    network's figures."""
    console = console or Console()
    table = Table(title=f"Mycelium Net after {summary['rounds']} rounds")
    for col in ("node", "true cluster", "group", "migrations", "test acc", "local-only acc"):
        table.add_column(col, justify="right" if col != "node" else "left")
    for node_id, n in summary["nodes"].items():
        local = n.get("local_only_test_accuracy")
        table.add_row(
            node_id,
            str(n["cluster"]),
            str(n["final_group"]),
            str(len(n["migrations"])),
            f"{n['test_accuracy']:.3f}" if n["test_accuracy"] is not None else "-",
            f"{local:.3f}" if local is not None else "-",
        )
    console.print(table)
    migrations = summary.get("migrations") or migrations_table(summary)
    if migrations:
        moved = Table(title="Migrations")
        for col in ("round", "node", "from -> to", "reason"):
            moved.add_column(col, justify="right" if col == "round" else "left")
        for m in migrations:
            moved.add_row(str(m["round"]), m["node"], f"{m['from']} -> {m['to']}", m["reason"])
        console.print(moved)
    drift = summary.get("drift")
    if drift:
        console.print(
            f"drift at round {drift['round']}: "
            + ", ".join(
                f"{n} (cluster {d['from_cluster']} -> {d['to_cluster']})"
                for n, d in drift["nodes"].items()
            )
        )
    f = summary["final"]
    line = (
        f"groups {f['groups']}, migrations {f['migrations']}, "
        f"mean acc {f['mean_accuracy']:.3f}, worst {f['worst_accuracy']:.3f}, "
        f"ARI vs true clusters {f['adjusted_rand_index']:.2f}"
    )
    if "local_only_mean_accuracy" in f:
        line += (
            f"; local-only mean {f['local_only_mean_accuracy']:.3f}, "
            f"worst {f['local_only_worst_accuracy']:.3f}"
        )
    console.print(line)
    console.print(f"summary written to {summary['path']}")


def demo(
    nodes: Annotated[int, typer.Option(min=1, max=2000, help="Number of nodes.")] = 12,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds to run.")] = 16,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Run for this many seconds instead of --rounds.")
    ] = None,
    dataset: Annotated[str, typer.Option(help="digits | fashion")] = "digits",
    partition: Annotated[str, typer.Option(help="iid | dirichlet | clustered")] = "clustered",
    clusters: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Hidden clusters (default 3, at most --nodes)."),
    ] = None,
    cluster_mode: Annotated[
        str,
        typer.Option(help="rotation (90° steps up to 4, 360/k beyond) | label_permutation | mixed"),
    ] = "rotation",
    capacity: Annotated[int, typer.Option(min=2, help="Most members a group may have.")] = 5,
    meta: Annotated[
        bool,
        typer.Option(
            "--meta/--no-meta",
            help="Meta-federation: sibling groups share models, may merge, and split.",
        ),
    ] = True,
    drift: Annotated[
        bool, typer.Option("--drift/--no-drift", help="Some nodes' data drift mid-run.")
    ] = True,
    drift_at: Annotated[
        int | None,
        typer.Option(
            help="Round at whose start the drift happens (default: half-way through --rounds)."
        ),
    ] = None,
    drift_fraction: Annotated[
        float, typer.Option(help="Share of the nodes that switch to another cluster, in (0, 1].")
    ] = 0.25,
    alpha: Annotated[float, typer.Option(min=0.001, help="Dirichlet concentration.")] = 0.5,
    policy: Annotated[str, typer.Option(help="local (judge on own data) | reported")] = "local",
    strategy: Annotated[str, typer.Option(help="fedavg | fedmedian | fedtrimmedavg | krum")] = (
        "fedavg"
    ),
    samples_per_node: Annotated[
        int | None, typer.Option(min=10, help="Cap each node's examples.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for data, models and training.")] = 0,
    output: Annotated[
        Path, typer.Option(help="Folder for summary.json, the GIF and the PNG.")
    ] = Path("output"),
    registry_url: Annotated[
        str | None, typer.Option(help="Use this registry instead of starting one.")
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="PEM CA certificate an https --registry-url's certificate chains to.",
        ),
    ] = None,
    local_only: Annotated[
        bool, typer.Option(help="Also train each node alone, for comparison.")
    ] = True,
    viz: Annotated[
        bool,
        typer.Option("--viz/--no-viz", help="Record the network; write a GIF and PNG to --output."),
    ] = True,
    fps: Annotated[float, typer.Option(min=0.1, max=50, help="GIF frames per second.")] = 4.0,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="Write TensorBoard scalars (per node, per group) to this folder."
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="Where group rounds run: serial | processes | ray.")
    ] = "serial",
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes, or Ray CPUs (default: every core)."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="A Ray cluster's head, HOST:6379 (with --backend ray; default: local)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the demo: nodes form groups by how well models fit their data, then re-home after
    a drift."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    one_of(dataset, list(DATASET_NAMES), "--dataset")
    one_of(partition, SCHEMES, "--partition")
    one_of(cluster_mode, CLUSTER_MODES, "--cluster-mode")
    if clusters is None:
        clusters = min(DEFAULT_CLUSTERS, nodes)
    if clusters > nodes:
        raise typer.BadParameter(
            f"{clusters} clusters need at least as many nodes, got {nodes}", param_hint="--clusters"
        )
    one_of(policy, list(POLICIES), "--policy")
    one_of(strategy, list(STRATEGY_NAMES), "--strategy")
    cfg = DemoConfig(
        nodes=nodes,
        rounds=rounds,
        duration=duration,
        dataset=dataset,
        partition=partition,
        clusters=clusters,
        cluster_mode=cluster_mode,
        capacity=capacity,
        meta_federation=meta,
        drift=drift,
        drift_at=drift_at,
        drift_fraction=drift_fraction,
        alpha=alpha,
        policy=policy,
        strategy=strategy,
        samples_per_node=samples_per_node,
        seed=seed,
        output=output,
        registry_url=registry_url,
        ca_cert=ca_cert,
        local_only=local_only,
        tensorboard=tensorboard,
        backend=backend,
        workers=workers,
        ray_address=ray_address,
    )
    try:
        cfg.check()  # before a registry or a recorder starts
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:  # before a registry or a recorder starts: both write there
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        typer.echo(f"error: cannot write the results to {output}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        typer.echo(f"error: --backend ray: {RAY_MISSING}", err=True)
        raise typer.Exit(2)
    if tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
        typer.echo("error: --tensorboard needs the tensorboard package", err=True)
        raise typer.Exit(2)
    try:
        if viz:
            from mycelium.viz_demo import run_demo_with_viz
            from viz.session import VizOptions

            summary, viz_summary = run_demo_with_viz(
                cfg, VizOptions(output=output, fps=fps, ca_cert=ca_cert)
            )
            for key in ("gif", "png"):
                if viz_summary.get(key):
                    typer.echo(f"{key.upper()} written to {viz_summary[key]}")
        else:
            summary = run_demo(cfg)
    except (NodeError, ValueError, BackendError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:  # e.g. --output names a file, or a folder that cannot be made
        where = exc.filename or output
        typer.echo(f"error: cannot write the results to {where}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    if tensorboard is not None:
        typer.echo(
            f"TensorBoard logs written to {tensorboard} (tensorboard --logdir {tensorboard})"
        )
    print_summary(summary)

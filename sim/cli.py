"""The `sim` command: build the simulation (and a registry), then a REPL or a script."""

from __future__ import annotations

import functools
import logging
import secrets
import signal
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from node.errors import ConfigError, NodeError
from node.registry_client import RegistryClient
from sim.commands import Session
from sim.mirror import RegistryMirror
from sim.repl import HISTORY_FILE, run_repl, run_script
from sim.state import SimConfig, Simulation

__all__ = ["BACKENDS", "app", "main", "sim"]

BACKENDS = ("deterministic", "netns")

# The embedded registry never archives the simulation's groups (simulated time does not
# follow the wall clock); its nodes live on heartbeats, so a removed node expires.
_FOREVER_S = 10.0**9
_EXTERNAL_HEARTBEAT_S = 10.0
_BEATS_PER_TTL = 3
_SWEEPS_PER_TTL = 4
_MAX_SWEEP_S = 5.0


def _start_registry(stack: ExitStack, port: int, ttl_s: float) -> str:
    from registry.server import BackgroundRegistry
    from registry.settings import build_settings

    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mycelium-sim-")))
    settings = build_settings(
        data_dir=data_dir,
        heartbeat_ttl=ttl_s,
        sweep_interval=min(_MAX_SWEEP_S, ttl_s / _SWEEPS_PER_TTL),
        archive_grace=_FOREVER_S,
    )
    registry = BackgroundRegistry(settings, port=port).start()
    stack.callback(registry.stop)
    return registry.url


def _attach_netns(stack: ExitStack, simulation: Simulation) -> None:
    """Put the simulation's network on namespaces, torn down when ``stack`` closes."""
    from sim.netns import NetnsError, attach

    # SIGTERM unwinds like Ctrl-C, so the namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        network = attach(simulation)
    except NetnsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    stack.callback(network.close)
    em = network.emulator
    shaping = "netem" if em.netem else "tbf + relays (this kernel has no sch_netem)"
    typer.echo(
        f"netns: namespaces {em.namespace(0).rsplit('-', 1)[0]}-n*, links by {shaping}", err=True
    )


def sim(
    nodes: Annotated[int, typer.Option(min=1, max=100_000, help="Nodes at the start.")] = 4,
    dataset: Annotated[str, typer.Option(help="digits | fashion")] = "digits",
    partition: Annotated[str, typer.Option(help="iid | dirichlet | clustered")] = "iid",
    clusters: Annotated[int, typer.Option(min=1, max=4, help="Hidden clusters.")] = 2,
    cluster_mode: Annotated[str, typer.Option(help="rotation | label_permutation")] = "rotation",
    alpha: Annotated[float, typer.Option(min=0.001, help="Dirichlet concentration.")] = 0.5,
    samples_per_node: Annotated[
        int | None,
        typer.Option(min=10, help="Examples per node; nodes overlap beyond the data set."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed for data, models and network.")] = 0,
    areas: Annotated[
        int | None, typer.Option(min=1, help="Neighbourhoods (default: one per 8 nodes).")
    ] = None,
    step_ms: Annotated[float, typer.Option(min=0.001, help="Simulated ms per step.")] = 100.0,
    codec: Annotated[str, typer.Option(help="Model encoding on the wire: dense | q8 | q4")] = (
        "dense"
    ),
    local_epochs: Annotated[int, typer.Option(min=0, help="Epochs per train.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 0.05,
    strategy: Annotated[str, typer.Option(help="Flower strategy for `group train`.")] = "fedavg",
    registry: Annotated[
        bool, typer.Option("--registry/--no-registry", help="Mirror nodes and groups.")
    ] = True,
    registry_url: Annotated[
        str | None, typer.Option(help="Use this registry instead of an embedded one.")
    ] = None,
    registry_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the embedded registry (0: free).")
    ] = 0,
    registry_prefix: Annotated[
        str | None, typer.Option(help="Prefix of node and group names in the registry.")
    ] = None,
    script: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Run FILE and exit.")
    ] = None,
    history: Annotated[Path, typer.Option(help="REPL history file.")] = HISTORY_FILE,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    # Options of issue 17's simulator part, kept together.
    scenario: Annotated[
        str | None, typer.Option(help="Run a pre-configured network (see `scenario`) and exit.")
    ] = None,
    registry_ttl: Annotated[
        float,
        typer.Option(min=0.5, help="Seconds before the embedded registry expires a removed node."),
    ] = 30.0,
    backend: Annotated[
        str,
        typer.Option(help="deterministic (modelled network) | netns (namespaces; root)"),
    ] = "deterministic",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Drive an in-process decentralized network step by step: a REPL, or --script FILE."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import torch

    torch.set_num_threads(threads)
    out = functools.partial(print, flush=True)
    try:
        config = SimConfig(
            nodes=nodes,
            dataset=dataset,
            partition=partition,
            clusters=clusters,
            cluster_mode=cluster_mode,
            alpha=alpha,
            samples_per_node=samples_per_node,
            seed=seed,
            areas=areas,
            step_ms=step_ms,
            codec=codec,
            learning_rate=learning_rate,
            batch_size=batch_size,
            local_epochs=local_epochs,
            strategy=strategy,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if scenario is not None:  # checked before the (slow) simulation is built
        from sim.commands.scenarios import scenario_names

        if scenario.lower() not in scenario_names():
            typer.echo(
                f"error: no scenario {scenario!r}; known: {', '.join(scenario_names())}",
                err=True,
            )
            raise typer.Exit(2)
    if backend not in BACKENDS:
        typer.echo(f"error: unknown backend {backend!r}; choose {' | '.join(BACKENDS)}", err=True)
        raise typer.Exit(2)
    if backend == "netns":
        from sim.netns import MAX_NODES, NetnsError, check_environment

        try:
            if nodes > MAX_NODES:
                raise NetnsError(f"the netns backend runs at most {MAX_NODES} nodes, not {nodes}")
            check_environment()
        except NetnsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    if script is not None:  # checked before the (slow) simulation is built
        try:
            script.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            typer.echo(f"error: cannot read script {script}: {exc}", err=True)
            raise typer.Exit(2) from exc
    with ExitStack() as stack:
        mirror: RegistryMirror | None = None
        if registry:
            url = registry_url or _start_registry(stack, registry_port, registry_ttl)
            try:
                probe = RegistryClient(url, retries=0)
            except ConfigError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from exc
            with probe:
                if not probe.healthy():
                    typer.echo(
                        f"error: no registry answers at {url} (or use --no-registry)", err=True
                    )
                    raise typer.Exit(2)
            mirror = RegistryMirror(
                url,
                domain=dataset,
                prefix=registry_prefix or f"sim-{secrets.token_hex(3)}",
                heartbeat_every=(
                    _EXTERNAL_HEARTBEAT_S if registry_url else registry_ttl / _BEATS_PER_TTL
                ),
            )
            stack.callback(mirror.close)
            typer.echo(f"registry: {url} (names start with {mirror.prefix}-)", err=True)
        try:
            simulation = Simulation(config, mirror)
        except (NodeError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if backend == "netns":
            _attach_netns(stack, simulation)
        session = Session(simulation, out, mirror)
        stack.callback(session.close)
        if scenario is not None or script is not None:
            if scenario is not None:
                session.execute(f"scenario {scenario}")
            code = run_script(session, script)
        else:
            topo = simulation.network.topology
            out(
                f"Mycelium sim: {nodes} nodes ({dataset}, {partition}, seed {seed}), "
                f"{topo.areas} area(s), {step_ms:g} ms per step. Type `help`."
            )
            code = run_repl(session, history)
    if code:
        raise typer.Exit(code)


app = typer.Typer(add_completion=False)
app.command()(sim)


def main() -> None:
    """Entry point of `python -m sim`."""
    app()

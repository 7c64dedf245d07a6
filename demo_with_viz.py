"""`python demo_with_viz.py`: the demo with a live view of the network and a GIF at the end.

With `--viz-only --registry-url URL` it only watches a network that is already running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    duration: Annotated[float, typer.Option(min=1, help="Seconds to run (or to watch).")] = 300,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many rounds instead.")
    ] = None,
    viz_only: Annotated[
        bool, typer.Option("--viz-only", help="Only watch the network at --registry-url.")
    ] = False,
    registry_url: Annotated[
        str | None, typer.Option(help="Registry of a running network (needed with --viz-only).")
    ] = None,
    output: Annotated[Path, typer.Option(help="Folder for the GIF, PNG and summaries.")] = Path(
        "output"
    ),
    fps: Annotated[float, typer.Option(min=0.1, max=50, help="GIF frames per second.")] = 4.0,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between snapshots.")] = 1.0,
    size: Annotated[str, typer.Option(help="Frame size WIDTHxHEIGHT.")] = "1280x720",
    max_mb: Annotated[float, typer.Option(min=0.1, help="Largest GIF in MB.")] = 20.0,
    live: Annotated[
        bool | None,
        typer.Option("--live/--no-live", help="Live window (default: when a display exists)."),
    ] = None,
    nodes: Annotated[int, typer.Option(min=1, max=2000, help="Number of nodes.")] = 8,
    dataset: Annotated[str, typer.Option(help="digits | fashion")] = "digits",
    partition: Annotated[str, typer.Option(help="iid | dirichlet | clustered")] = "clustered",
    clusters: Annotated[int, typer.Option(min=1, max=4, help="Hidden clusters.")] = 2,
    policy: Annotated[str, typer.Option(help="local | reported")] = "local",
    seed: Annotated[int, typer.Option(help="Seed for data, models and training.")] = 0,
) -> None:
    """Run registry + nodes + live visualization; write output/mycelium_net_demo.gif."""
    import logging

    from viz.cli import options_from_flags
    from viz.session import run_session

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = options_from_flags(
        output=output, fps=fps, interval=interval, size=size, max_mb=max_mb, live=live
    )
    if viz_only:
        if not registry_url:
            raise typer.BadParameter("--viz-only needs --registry-url", param_hint="--viz-only")
        typer.echo(f"watching {registry_url} for {duration:g} s; Ctrl+C to stop and export")
        viz_summary = run_session(registry_url, options, duration=duration)
    else:
        from mycelium.demo import DemoConfig
        from mycelium.demo_cli import print_summary
        from mycelium.viz_demo import run_demo_with_viz

        cfg = DemoConfig(
            nodes=nodes,
            rounds=rounds or 10**9,
            duration=None if rounds else duration,
            dataset=dataset,
            partition=partition,
            clusters=clusters,
            policy=policy,
            seed=seed,
            output=output,
            registry_url=registry_url,
            local_only=False,
        )
        summary, viz_summary = run_demo_with_viz(cfg, options)
        print_summary(summary)
    typer.echo(
        f"GIF: {viz_summary['gif']} ({viz_summary['frames_written']} frames, "
        f"{viz_summary['gif_bytes'] / 2**20:.1f} MB); PNG: {viz_summary['png']}"
    )


if __name__ == "__main__":
    typer.run(main)

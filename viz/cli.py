"""The `viz` command: watch a running network (or replay a recording) and write GIF + PNG."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from viz.export import DEFAULT_FPS, DEFAULT_MAX_BYTES
from viz.session import SNAPSHOTS_FILE, VizOptions, export_file, run_session
from viz.snapshot import iter_snapshots

__all__ = ["app", "parse_size", "viz"]

app = typer.Typer(add_completion=False)


def parse_size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT → (width, height), for the --size option."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise typer.BadParameter("size is WIDTHxHEIGHT in pixels, e.g. 1280x720") from exc
    if w < 160 or h < 90:
        raise typer.BadParameter("size must be at least 160x90")
    return w, h


def options_from_flags(
    *, output: Path, fps: float, interval: float, size: str, max_mb: float, live: bool | None
) -> VizOptions:
    """The session options that the viz flags (--size WxH, --max-mb, …) describe."""
    return VizOptions(
        output=output,
        fps=fps,
        interval=interval,
        size=parse_size(size),
        max_bytes=int(max_mb * 2**20),
        live=live,
    )


@app.command()
def viz(
    registry_url: Annotated[
        str | None, typer.Option(help="Registry to watch, e.g. http://127.0.0.1:8000.")
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Draw a saved snapshots file instead."),
    ] = None,
    output: Annotated[Path, typer.Option(help="Folder for the GIF, PNG and snapshots.")] = Path(
        "output"
    ),
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds (default: Ctrl+C).")
    ] = None,
    fps: Annotated[float, typer.Option(min=0.1, max=50, help="GIF frames per second.")] = (
        DEFAULT_FPS
    ),
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between snapshots of the registry.")
    ] = 1.0,
    size: Annotated[str, typer.Option(help="Frame size WIDTHxHEIGHT in pixels.")] = "1280x720",
    max_mb: Annotated[
        float, typer.Option(min=0.1, help="Largest GIF in MB; long runs are thinned to fit.")
    ] = DEFAULT_MAX_BYTES / 2**20,
    live: Annotated[
        bool | None,
        typer.Option("--live/--no-live", help="Live window (default: when a display exists)."),
    ] = None,
) -> None:
    """Watch a running network until Ctrl+C (or --duration), or replay a recording; write a GIF,
    a PNG of the last frame and the snapshots file."""
    if (registry_url is None) == (replay is None):
        raise typer.BadParameter("give exactly one of --registry-url and --replay")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = options_from_flags(
        output=output, fps=fps, interval=interval, size=size, max_mb=max_mb, live=live
    )
    if replay is not None:
        try:  # read as a stream: a long recording need not fit in memory
            first = next(iter_snapshots(replay), None)
        except (ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if first is None:
            typer.echo(f"error: {replay} holds no snapshots", err=True)
            raise typer.Exit(1)
        summary = export_file(replay, options)
    else:
        assert registry_url is not None
        typer.echo(f"recording {registry_url} every {interval:g} s; Ctrl+C to stop and export")
        try:
            summary = run_session(registry_url, options, duration=duration)
        except RuntimeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"snapshots: {output / SNAPSHOTS_FILE}")
    typer.echo(
        f"GIF: {summary['gif']} ({summary['frames_written']} of {summary['frames_total']} frames, "
        f"{summary['gif_bytes'] / 2**20:.1f} MB, {summary['ms_per_frame']:.0f} ms/frame)"
    )
    typer.echo(f"PNG: {summary['png']}")
    logging.getLogger(__name__).debug("summary: %s", json.dumps(summary))

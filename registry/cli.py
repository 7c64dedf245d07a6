"""The `registry` subcommand: run the registry service."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from registry.credentials import load_or_create_admin_token, redact, redact_url
from registry.migrate import upgrade
from registry.settings import build_settings

app = typer.Typer(add_completion=False)

# The name only: importing registry.metrics here would fix prometheus-client's mode early.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOG_LEVEL_ENV = "MYCELIUM_REGISTRY_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@app.command()
def registry(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL (postgresql+psycopg://…); default: SQLite in data dir."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder for the database file and model snapshots.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    heartbeat_interval: Annotated[
        float | None, typer.Option(min=0.01, help="Expected seconds between heartbeats.")
    ] = None,
    heartbeat_ttl: Annotated[
        float | None, typer.Option(min=0.01, help="Seconds of silence before a node expires.")
    ] = None,
    archive_grace: Annotated[
        float | None, typer.Option(min=0, help="Seconds an empty group lives before archiving.")
    ] = None,
    sweep_interval: Annotated[
        float | None, typer.Option(min=0.01, help="Seconds between liveness sweeps.")
    ] = None,
    max_model_bytes: Annotated[
        int | None, typer.Option(min=1, help="Largest model snapshot accepted, in bytes.")
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token for admin calls (simulations, token rotation); default: the "
            "one in <data-dir>/admin_token, generated there (mode 0600) on first start."
        ),
    ] = None,
    reward_scale: Annotated[
        float | None, typer.Option(min=0, help="Tokens per unit of positive contribution.")
    ] = None,
    flag_margin: Annotated[
        float | None,
        typer.Option(
            min=0, max=1, help="Flag a member worth less than minus this share of the loss."
        ),
    ] = None,
    max_round_jump: Annotated[
        int | None,
        typer.Option(min=1, help="How far past a group's round an upload or report may claim."),
    ] = None,
    quarantine_flags: Annotated[
        int | None,
        typer.Option(
            min=0, help="Quarantine a member flagged this many rounds in a row (0: never)."
        ),
    ] = None,
    quarantine_s: Annotated[
        float | None,
        typer.Option(min=0.001, help="Seconds a quarantine lasts after the member's last flag."),
    ] = None,
    max_simulations: Annotated[
        int | None, typer.Option(min=0, help="Simulations that may run at once.")
    ] = None,
    metrics_token: Annotated[
        str | None,
        typer.Option(help="Bearer token GET /metrics asks for; default: /metrics is open."),
    ] = None,
    public_url: Annotated[
        str | None, typer.Option(help="This registry's URL as simulations should reach it.")
    ] = None,
    rate_limit_per_token: Annotated[
        str | None,
        typer.Option(
            help="Write calls one node token may make, e.g. '50/second;3000/minute' or 'off'."
        ),
    ] = None,
    rate_limit_per_address: Annotated[
        str | None,
        typer.Option(help="Write calls one client address may make, e.g. '2000/second' or 'off'."),
    ] = None,
    retention_days: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Prune events, performance reports and simulation logs older than this "
            "many days (0: keep them by row count only). Default 7.",
        ),
    ] = None,
    events_max_rows: Annotated[
        int | None, typer.Option(min=0, help="Newest events kept (0: no row limit).")
    ] = None,
    performance_max_rows: Annotated[
        int | None,
        typer.Option(min=0, help="Newest performance reports kept (0: no row limit)."),
    ] = None,
    simulation_logs_max_rows: Annotated[
        int | None,
        typer.Option(min=0, help="Newest simulation log lines kept (0: no row limit)."),
    ] = None,
    prune_interval_s: Annotated[
        float | None, typer.Option(min=0.01, help="Seconds between pruning passes.")
    ] = None,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="PEM certificate: serve HTTPS (with --ssl-keyfile)."
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="PEM private key of --ssl-certfile."),
    ] = None,
    proxy_headers: Annotated[
        bool,
        typer.Option(
            help="Take client addresses from X-Forwarded-For/-Proto (behind a reverse proxy; "
            "per-address rate limits then count the real clients). Off: the socket's peer, "
            "and no header parsing per request."
        ),
    ] = False,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Proxies trusted with --proxy-headers, comma-separated IPs or networks "
            "(uvicorn's default: 127.0.0.1)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run the registry: the network's lookup table, with docs at /docs."""
    if forwarded_allow_ips is not None and not proxy_headers:
        raise typer.BadParameter(
            "only means something with --proxy-headers", param_hint="'--forwarded-allow-ips'"
        )
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter(
            "give both or neither", param_hint="'--ssl-certfile' / '--ssl-keyfile'"
        )
    scheme = "https" if ssl_certfile else "http"
    overrides = {
        "database_url": database_url,
        "data_dir": data_dir,
        "heartbeat_interval": heartbeat_interval,
        "heartbeat_ttl": heartbeat_ttl,
        "archive_grace": archive_grace,
        "sweep_interval": sweep_interval,
        "max_model_bytes": max_model_bytes,
        "admin_token": admin_token,
        "reward_scale": reward_scale,
        "flag_margin": flag_margin,
        "max_round_jump": max_round_jump,
        "quarantine_flags": quarantine_flags,
        "quarantine_s": quarantine_s,
        "max_simulations": max_simulations,
        "metrics_token": metrics_token,
        "public_url": public_url,
        "rate_limit_per_token": rate_limit_per_token,
        "rate_limit_per_address": rate_limit_per_address,
        "retention_days": retention_days,
        "events_max_rows": events_max_rows,
        "performance_max_rows": performance_max_rows,
        "simulation_logs_max_rows": simulation_logs_max_rows,
        "prune_interval_s": prune_interval_s,
    }
    try:
        settings = build_settings(**overrides)
    except ValidationError as exc:  # name each setting and the rule, never echo the value
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise typer.BadParameter(problems) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(level=level, format=LOG_FORMAT)
    os.environ[LOG_LEVEL_ENV] = log_level  # workers (separate processes) log the same way
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        typer.echo(
            f"error: cannot use data dir {settings.data_dir}: {exc.strerror or exc}", err=True
        )
        raise typer.Exit(2) from exc
    url = settings.effective_database_url
    try:
        upgrade(url)
    except Exception as exc:  # a bad URL or unreachable database: say so, no traceback
        # Neither the URL nor the driver's message may show the password.
        reason = redact(" ".join(str(exc).split()), url)
        typer.echo(f"error: cannot prepare database {redact_url(url)!r}: {reason}", err=True)
        raise typer.Exit(2) from None
    # Workers build their settings from the environment: hand everything over there.
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"MYCELIUM_REGISTRY_{key.upper()}"] = str(value)
    os.environ["MYCELIUM_REGISTRY_AUTO_MIGRATE"] = "false"
    if settings.admin_token is None:  # made here, once, for every worker to read
        try:
            load_or_create_admin_token(settings.admin_token_path)
        except (OSError, ValueError) as exc:
            typer.echo(f"error: admin token: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"admin token: in {settings.admin_token_path.resolve()} (mode 0600)")
    typer.echo(f"registry on {scheme}://{host}:{port} (docs: {scheme}://{host}:{port}/docs)")
    with _metrics_dir(workers):
        _serve(
            host,
            port,
            workers,
            log_level,
            access_log,
            ssl_certfile,
            ssl_keyfile,
            proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips,
        )


@contextlib.contextmanager
def _metrics_dir(workers: int) -> Iterator[None]:
    """With several workers, a fresh PROMETHEUS_MULTIPROC_DIR for this run (removed after),
    so /metrics sums every worker's counts; one given in the environment is kept."""
    if workers == 1 or os.environ.get(MULTIPROC_ENV):
        yield
        return
    folder = tempfile.mkdtemp(prefix="mycelium-registry-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


WORKER_START_TIMEOUT_S = 30


def _spawn_light_workers() -> None:
    """Make uvicorn's spawned workers import the registry only.

    A spawned process re-imports the parent's ``__main__`` module unless that module is a
    package's ``__main__`` (multiprocessing.spawn). Run as ``mycelium registry``, the main
    module is the ``mycelium`` script, which imports every command and so torch: 480 MB
    and several seconds per worker. Naming ``registry.__main__`` as the main module's spec
    makes the workers skip it (``python -m registry`` already works that way).
    """
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.util.find_spec("registry.__main__")


def _serve(
    host: str,
    port: int,
    workers: int,
    log_level: str,
    access_log: bool,
    ssl_certfile: Path | None,
    ssl_keyfile: Path | None,
    *,
    proxy_headers: bool,
    forwarded_allow_ips: str | None,
) -> None:
    if workers > 1:
        _spawn_light_workers()
    uvicorn.run(
        "registry.main:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=3,
        # A worker answers uvicorn's health check once it has imported the app; on a busy
        # 2-core machine that took longer than uvicorn's 5 s, and the worker was killed.
        timeout_worker_healthcheck=WORKER_START_TIMEOUT_S,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )

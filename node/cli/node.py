"""The ``node`` command: one node as its own process, until SIGTERM or Ctrl+C."""

from __future__ import annotations

import logging
import secrets
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from node.addresses import AUTO, parse_address
from node.cli.common import one_of
from node.config import load_node_config
from node.errors import ConfigError, NodeError
from node.federation.strategies import STRATEGY_NAMES, set_flower_log_level
from node.learning.data import DATASET_NAMES
from node.learning.partition import CLUSTER_MODES, SCHEMES, PartitionSpec
from node.runtime.policy import POLICIES
from node.runtime.process import NodeProcess, ProcessOptions, load_tls

__all__ = ["node", "parse_partition_id"]

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def parse_partition_id(value: str) -> int | None:
    """A partition id: a non-negative number, or ``auto`` (None: the registry's order decides)."""
    if value == AUTO:
        return None
    if not value.isdigit():
        raise typer.BadParameter(
            f"{value!r} is neither a number nor 'auto'", param_hint="--partition-id"
        )
    return int(value)


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(2)}"


def node(
    registry_url: Annotated[
        str | None, typer.Option(help="The registry, e.g. http://127.0.0.1:8000.")
    ] = None,
    node_id: Annotated[
        str | None, typer.Option(help="This node's id (default: host name + random suffix).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="This node's folder (default data/node): credentials/ keeps its registry "
            "token (0600), so a restart with the same id and folder keeps its identity."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="host:port where members reach this node's Flower server when it hosts "
            "its group; host 'auto' = this machine's own address, port 0 = any free port."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML file of node settings: keys of NodeConfig, or its node: section."),
    ] = None,
    domain: Annotated[str | None, typer.Option(help="Domain of groups to join.")] = None,
    dataset: Annotated[str | None, typer.Option(help="digits | fashion")] = None,
    partition: Annotated[
        str, typer.Option(envvar="MYCELIUM_NODE_PARTITION", help="iid | dirichlet | clustered")
    ] = "iid",
    num_partitions: Annotated[
        int, typer.Option(min=1, envvar="MYCELIUM_NODE_NUM_PARTITIONS", help="Shares in all.")
    ] = 4,
    partition_id: Annotated[
        str,
        typer.Option(
            envvar="MYCELIUM_NODE_PARTITION_ID",
            help="This node's share, 0-based; 'auto' = its registration order at the "
            "registry, modulo --num-partitions.",
        ),
    ] = "0",
    clusters: Annotated[
        int, typer.Option(min=1, max=4, envvar="MYCELIUM_NODE_CLUSTERS", help="Hidden clusters.")
    ] = 2,
    cluster_mode: Annotated[str, typer.Option(help="rotation | label_permutation")] = "rotation",
    alpha: Annotated[float, typer.Option(min=0.001, help="Dirichlet concentration.")] = 0.5,
    samples_per_node: Annotated[
        int | None, typer.Option(min=10, help="Cap each share's examples.")
    ] = None,
    data_seed: Annotated[
        int, typer.Option(help="Seed of the partitioning (same on every node).")
    ] = 0,
    seed: Annotated[int | None, typer.Option(help="Seed of the model and training.")] = None,
    policy: Annotated[str | None, typer.Option(help="local | reported")] = None,
    strategy: Annotated[
        str | None, typer.Option(help="fedavg | fedmedian | fedtrimmedavg | krum")
    ] = None,
    max_capacity: Annotated[
        int | None, typer.Option(min=1, help="Size of groups it creates.")
    ] = None,
    local_epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per round.")] = None,
    heartbeat_interval_s: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-interval-s",
            "--heartbeat-interval",  # the old spelling, for existing scripts
            min=0.01,
            help="Seconds between heartbeats.",
        ),
    ] = None,
    group_evaluation_interval_s: Annotated[
        float | None,
        typer.Option(
            "--group-evaluation-interval-s",
            "--group-evaluation-interval",  # the old spelling, for existing scripts
            min=0.01,
            help="Seconds between group re-evaluations.",
        ),
    ] = None,
    event_stream: Annotated[
        bool | None,
        typer.Option(
            "--event-stream/--no-event-stream",
            help="Follow the registry's events of this domain and re-evaluate at once when "
            "another group's snapshot or a membership changes (default: on; the interval "
            "stays as the fallback).",
            show_default=False,
        ),
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="Where the Flower server binds (default 0.0.0.0:<port>).")
    ] = None,
    round_timeout_s: Annotated[
        float,
        typer.Option(
            "--round-timeout-s",
            "--round-timeout",  # the old spelling, for existing scripts
            min=0.1,
            help="Seconds a host waits for a member's reply.",
        ),
    ] = 30.0,
    join_wait_s: Annotated[
        float,
        typer.Option(
            "--join-wait-s",
            "--join-wait",  # the old spelling, for existing scripts
            min=0.0,
            help="Seconds a host waits for members before a round.",
        ),
    ] = 2.0,
    round_pause_s: Annotated[
        float,
        typer.Option(
            "--round-pause-s",
            "--round-pause",  # the old spelling, for existing scripts
            min=0.0,
            help="Seconds between rounds.",
        ),
    ] = 0.0,
    contributions: Annotated[
        bool,
        typer.Option(
            help="As a group's host, measure members' contributions each round and submit "
            "them to the registry's ledger (costs n + 1 evaluations per member).",
        ),
    ] = True,
    warmup_epochs: Annotated[
        int, typer.Option(min=0, help="Local epochs before choosing a group.")
    ] = 1,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="PEM CA certificate(s) the registry's and group hosts' TLS certificates "
            "chain to; with it, this node talks TLS to both (default: plaintext Flower, "
            "the system's CAs for an https registry).",
        ),
    ] = None,
    tls_certfile: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="PEM certificate this node's Flower server presents when it hosts its group "
            "(with --tls-keyfile); members verify it with their --ca-cert.",
        ),
    ] = None,
    tls_keyfile: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="PEM private key of --tls-certfile."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the settings, print them, exit.")
    ] = False,
) -> None:
    """Run one node: register, join or create a group, train with it over Flower, migrate."""
    try:
        cfg = load_node_config(
            config,
            registry_url=registry_url,
            node_id=node_id,
            data_dir=data_dir,
            node_address=address,
            domain=domain,
            dataset=dataset,
            policy=policy,
            strategy=strategy,
            max_capacity=max_capacity,
            local_epochs=local_epochs,
            heartbeat_interval_s=heartbeat_interval_s,
            group_evaluation_interval_s=group_evaluation_interval_s,
            event_stream=event_stream,
            seed=seed,
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    one_of(cfg.dataset, list(DATASET_NAMES), "--dataset (or config key 'dataset')")
    one_of(partition, list(SCHEMES), "--partition")
    one_of(cluster_mode, list(CLUSTER_MODES), "--cluster-mode")
    one_of(cfg.policy, list(POLICIES), "--policy (or config key 'policy')")
    one_of(cfg.strategy, list(STRATEGY_NAMES), "--strategy (or config key 'strategy')")
    part_id = parse_partition_id(partition_id)
    if part_id is not None and part_id >= num_partitions:
        raise typer.BadParameter(
            f"{part_id} is out of range for {num_partitions} partitions",
            param_hint="--partition-id",
        )
    for flag, value in (("--address", cfg.node_address), ("--listen", listen)):
        if value is not None:
            try:
                parse_address(value, allow_port_zero=True)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint=flag) from exc
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown level {log_level!r}", param_hint="--log-level")
    if cfg.node_id is None:
        cfg = cfg.model_copy(update={"node_id": _default_node_id()})
    spec = PartitionSpec(
        dataset=cfg.dataset,
        scheme=partition,
        num_partitions=num_partitions,
        clusters=clusters,
        cluster_mode=cluster_mode,
        alpha=alpha,
        samples_per_node=samples_per_node,
        seed=data_seed,
    )
    options = ProcessOptions(
        listen=listen,
        round_timeout_s=round_timeout_s,
        join_wait_s=join_wait_s,
        round_pause_s=round_pause_s,
        warmup_epochs=warmup_epochs,
        measure_contribution=contributions,
        ca_cert=ca_cert,
        tls_certfile=tls_certfile,
        tls_keyfile=tls_keyfile,
    )
    try:
        load_tls(options)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if dry_run:
        typer.echo(f"node {cfg.node_id}: settings are valid")
        typer.echo(f"  config:  {cfg.model_dump()}")
        typer.echo(f"  data:    {spec}, partition {part_id if part_id is not None else AUTO}")
        typer.echo(f"  process: {options}")
        return
    logging.basicConfig(level=level, format=LOG_FORMAT)
    set_flower_log_level(logging.WARNING if level <= logging.INFO else level)
    for noisy in ("httpx", "httpcore", "alembic"):  # one line per request drowns the decisions
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: %s received, shutting down", cfg.node_id, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        proc = NodeProcess(cfg, spec, options, partition_id=part_id)
        log.info(
            "%s: starting, registry %s, address %s", cfg.node_id, cfg.registry_url, proc.address
        )
        proc.run(stop)
    except (ConfigError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except NodeError as exc:  # a thread died or the Flower server cannot listen: say so, stop
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    log.info("%s: stopped", cfg.node_id)

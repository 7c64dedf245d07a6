"""The ``gossip`` command: one gossip-learning node that finds its group by domain.

``mycelium gossip --config configs/base.yaml --registry-url URL`` reads the ``gossip:``
section (and ``data``, ``training``, ``p2p``, ``compression``) of the peer config, flags
overriding it. The node registers at the registry, joins its domain's gossip group
(``data.dataset`` is the domain; the group is created when none has room), waits until
the group has ``gossip.min_peers`` other members, gossips for
``gossip.cycles`` cycles and/or ``gossip.duration_s`` seconds, or until SIGINT/SIGTERM,
leaves the group, and prints one final line of ``key=value`` pairs::

    gossip done: node=g1 group=3 accuracy=0.9120 bytes_sent=1234 bytes_received=5678 \
        merges=40 updates=80   (one line)

``accuracy`` is on the node's test split, in [0, 1]; bytes are frame bytes on the wire.
Bad config or flags: one ``Invalid configuration: ...`` line, exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from node.addresses import check_url
from node.cli.peer import data_share
from node.credentials import CredentialStore
from node.errors import ConfigError, NodeError
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import NodeData
from node.names import check_node_id
from node.p2p.auth import auth_from_config
from node.p2p.config import DEFAULT_CONFIG_PATH, PeerConfig, load_config
from node.p2p.gossip import GossipNode
from node.registry_client import RegistryClient

__all__ = ["GossipSummary", "gossip", "main", "run_gossip"]

logger = logging.getLogger(__name__)

_WILDCARDS = {"0.0.0.0", "::", ""}
PEER_POLL_S = 0.5  # how often a node waiting for peers (gossip.min_peers) asks the registry


@dataclass(frozen=True)
class GossipSummary:
    """What one gossip run did: test accuracy in [0, 1], frame bytes, merges, and updates
    (merges plus local epochs)."""

    node_id: str
    group_id: int | None
    accuracy: float
    bytes_sent: int
    bytes_received: int
    merges: int
    updates: int

    def line(self) -> str:
        """The final ``gossip done: key=value ...`` line."""
        return (
            f"gossip done: node={self.node_id} group={self.group_id} "
            f"accuracy={self.accuracy:.4f} bytes_sent={self.bytes_sent} "
            f"bytes_received={self.bytes_received} merges={self.merges} updates={self.updates}"
        )


def _node_id(config: PeerConfig) -> str:
    if config.node_id:
        return config.node_id
    if config.p2p.local_port:
        return f"{socket.gethostname()}-{config.p2p.local_port}"
    return f"{socket.gethostname()}-{os.getpid()}"


def _check(config: PeerConfig) -> str:
    """The registry URL; ConfigError for what would fail later."""
    url = config.gossip.registry_url
    if not url:
        raise ConfigError(
            "gossip.registry_url: needed to discover the domain's gossip group (--registry-url)"
        )
    try:
        url = check_url(url)
    except ValueError as exc:
        raise ConfigError(f"gossip.registry_url: {exc}") from exc
    if config.node_id is not None:
        check_node_id(config.node_id)
    if config.p2p.data_dir is None:
        raise ConfigError(
            "p2p.data_dir: needed to keep this node's signing key and registry token (--data-dir)"
        )
    return url


async def run_gossip(config: PeerConfig, stop: asyncio.Event | None = None) -> GossipSummary:
    """Discover the group, gossip until cycles/duration/``stop``, leave; return the summary.

    Raises ``ConfigError`` for an unusable config (no registry URL or data dir, bad
    index, unusable key) and ``RegistryClientError`` when the registry cannot be used
    to register or find a group; ``OSError`` when the port cannot be bound.
    """
    url = _check(config)
    assert config.p2p.data_dir is not None  # _check
    data = data_share(config)
    node_id = _node_id(config)
    client = RegistryClient(url, credentials=CredentialStore(config.p2p.data_dir))
    stop = stop or asyncio.Event()
    try:
        auth = auth_from_config(config.p2p, registry=client)
        node = GossipNode.from_config(config, node_id=node_id, registry=client, auth=auth)

        async def session() -> None:
            await asyncio.to_thread(_warm_up, config, data)
            await node.start()
            await _wait_for_peers(node, client, config.gossip.min_peers, stop)
            if not stop.is_set():
                await node.run_continuous(data, max_cycles=config.gossip.cycles)

        run = asyncio.create_task(session())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait(
                {run, stopper},
                timeout=config.gossip.duration_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopper.cancel()
            stop.set()
            await node.stop()  # leaves the group
            await run
        scores = await asyncio.to_thread(node.model.evaluate, data.test.x, data.test.y)
        accuracy = float(scores["accuracy"])
        return GossipSummary(
            node_id=node.node_id,
            group_id=node.group_id,
            accuracy=accuracy,
            bytes_sent=node.server.stats.bytes_sent,
            bytes_received=node.server.stats.bytes_received,
            merges=node.stats.merged,
            updates=node.updates,
        )
    finally:
        client.close()


def _warm_up(config: PeerConfig, data: NodeData) -> None:
    """Train a throwaway model once, before joining: torch's first optimizer step imports
    and initialises for about a second of CPU, holding the GIL, which would otherwise
    stall this node's gossip right when its peers start sending."""
    Learner(build_model(config.data.dataset, config.training.seed), data, epochs=1).train()


async def _wait_for_peers(
    node: GossipNode, client: RegistryClient, want: int, stop: asyncio.Event
) -> None:
    """Return once the node's group has ``want`` other members (or ``stop`` is set)."""
    if want <= 0 or node.group_id is None:
        return
    while not stop.is_set():
        group = await asyncio.to_thread(client.get_group, node.group_id)
        if group.member_count - 1 >= want:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PEER_POLL_S)


def _run_until_signalled(config: PeerConfig) -> GossipSummary:
    async def main() -> GossipSummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await run_gossip(config, stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)

    return asyncio.run(main())


def gossip(
    config: Annotated[
        Path, typer.Option(help="YAML config; its gossip, data, training, p2p sections.")
    ] = DEFAULT_CONFIG_PATH,
    registry_url: Annotated[
        str | None, typer.Option(help="Registry to discover the group at (gossip.registry_url).")
    ] = None,
    node_id: Annotated[str | None, typer.Option(help="This node's id (node_id).")] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on and be reached at (p2p.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on, 0: any free (p2p.local_port).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="digits or fashion; also the domain (data.dataset).")
    ] = None,
    index: Annotated[
        int | None, typer.Option(help="Which data share to train on (data.index).")
    ] = None,
    nodes: Annotated[
        int | None, typer.Option(help="Into how many shares (data.partitions).")
    ] = None,
    cycles: Annotated[
        int | None, typer.Option(help="Gossip cycles to run (gossip.cycles).")
    ] = None,
    duration_s: Annotated[
        float | None, typer.Option(help="Seconds to run at most (gossip.duration_s).")
    ] = None,
    period_s: Annotated[
        float | None, typer.Option(help="Seconds between gossip sends (gossip.period_s).")
    ] = None,
    min_peers: Annotated[
        int | None,
        typer.Option(help="Wait for this many other group members first (gossip.min_peers)."),
    ] = None,
    group_capacity: Annotated[
        int | None,
        typer.Option(help="Members of a group this node creates (gossip.group_capacity)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Keeps the signing key and registry token (p2p.data_dir)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "warning",
) -> None:
    """Run one gossip-learning node: discover the domain's group, gossip, print a summary."""
    level = log_level.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise typer.BadParameter(f"{log_level!r} is not one of: debug, info, warning, error")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    overrides = {
        "gossip.registry_url": registry_url,
        "node_id": node_id,
        "p2p.host": host,
        "p2p.local_port": port,
        "data.dataset": dataset,
        "data.index": index,
        "data.partitions": nodes,
        "gossip.cycles": cycles,
        "gossip.duration_s": duration_s,
        "gossip.period_s": period_s,
        "gossip.group_capacity": group_capacity,
        "gossip.min_peers": min_peers,
        "p2p.data_dir": data_dir,
    }
    try:
        cfg = load_config(config, overrides)
        _check(cfg)
        data_share(cfg)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"Invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    if cfg.p2p.host in _WILDCARDS:
        typer.echo(
            f"warning: p2p.host {cfg.p2p.host!r} is what peers are told to dial; peers on "
            "other machines need --host <this machine's address>",
            err=True,
        )
    try:
        summary = _run_until_signalled(cfg)
    except ConfigError as exc:
        typer.echo(f"Invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:
        typer.echo(f"Cannot listen on {cfg.p2p.host}:{cfg.p2p.local_port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    except NodeError as exc:
        typer.echo(f"gossip failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(summary.line())


def main() -> None:
    """Run ``gossip`` as a stand-alone command (``scripts/run_gossip_node.py``)."""
    typer.run(gossip)

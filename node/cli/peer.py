"""The ``peer`` command: P2P training rounds with the peers given, from ``configs/base.yaml``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from node.addresses import Address, parse_address
from node.errors import ConfigError
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import NodeData, PartitionSpec
from node.p2p.auth import FrameAuth, auth_from_config
from node.p2p.codecs import make_codec
from node.p2p.config import DEFAULT_CONFIG_PATH, PeerConfig, load_config
from node.p2p.peer import PeerTrainer, check_peer_list

__all__ = [
    "build_learner",
    "build_trainer",
    "data_share",
    "parse_peers",
    "peer",
    "run_peer_training",
]

logger = logging.getLogger(__name__)


def parse_peers(text: str) -> list[Address]:
    """``host:port,host:port`` to addresses; an empty string means no peers."""
    return [parse_address(part) for part in text.split(",") if part.strip()]


def data_share(config: PeerConfig) -> NodeData:
    """Share ``data.index`` of ``data.partitions`` of ``data.dataset``: this node's data.

    Raises ``ConfigError`` naming ``data.index`` when it is out of range.
    """
    data = config.data
    if data.index >= data.partitions:
        raise ConfigError(
            f"data.index: {data.index} is out of range for {data.partitions} partitions"
        )
    return PartitionSpec(
        dataset=data.dataset,
        scheme=data.scheme,
        num_partitions=data.partitions,
        samples_per_node=data.samples_per_node,
        seed=data.seed,
    ).share(data.index)


def build_learner(config: PeerConfig) -> Learner:
    """This peer's learner: its share of the data set and the seeded model."""
    data_cfg, train_cfg = config.data, config.training
    return Learner(
        build_model(data_cfg.dataset, train_cfg.seed),
        data_share(config),
        learning_rate=train_cfg.learning_rate,
        batch_size=train_cfg.batch_size,
        epochs=train_cfg.local_epochs,
        seed=train_cfg.seed + data_cfg.index,
    )


def build_trainer(
    config: PeerConfig, peers: list[Address], learner: Learner, auth: FrameAuth | None = None
) -> PeerTrainer:
    """The peer for ``learner`` as the config's p2p and compression sections set it up.

    Frames are signed with ``auth``, else with the config's shared secret; ``ConfigError``
    when there is none.
    """
    codec = make_codec(
        config.compression.mode,
        topk_ratio=config.compression.topk_ratio,
        bits=config.compression.bits,
    )
    return PeerTrainer(
        learner,
        peers,
        codec,
        auth=auth if auth is not None else auth_from_config(config.p2p),
        replay_window_s=config.p2p.replay_window_s,
        node_id=config.node_id,
        host=config.p2p.host,
        port=config.p2p.local_port,
        listen_timeout=config.p2p.listen_timeout_s,
        error_feedback=config.compression.error_feedback,
        max_message_bytes=config.p2p.max_message_bytes,
        down_after_misses=config.p2p.down_after_misses,
        max_example_count=config.p2p.max_example_count,
        aggregation=config.p2p.aggregation,
        trim_fraction=config.p2p.trim_fraction,
    )


async def run_peer_training(
    config: PeerConfig, peers: list[Address], auth: FrameAuth | None = None
) -> dict[str, Any]:
    """Run the configured rounds with ``peers``; return a JSON-ready summary.

    ``refused_by`` maps each peer that refused this peer's frames to its reason;
    ``frames_refused`` counts frames this peer dropped, by reason.
    """
    learner = build_learner(config)
    trainer = build_trainer(config, peers, learner, auth)
    await trainer.start()
    try:
        reports = await trainer.run(config.training.rounds)
    finally:
        await trainer.stop()
    test = learner.evaluate("test")
    digest = hashlib.sha256()
    for array in learner.get_weights():
        digest.update(array.tobytes())
    refused: dict[str, int] = {}
    for report in reports:
        for reason, count in report.refused.items():
            refused[reason] = refused.get(reason, 0) + count
    return {
        "node_id": trainer.node_id,
        "port": trainer.port,
        "codec": trainer.codec.name,
        "aggregation": config.p2p.aggregation,
        "refused": refused,
        "rounds": [r.to_dict() for r in reports],
        "test_accuracy": test.accuracy,
        "bytes_sent": trainer.server.stats.bytes_sent,
        "bytes_received": trainer.server.stats.bytes_received,
        "late_dropped": trainer.late_dropped,
        "refused_by": dict(trainer.refused_by),
        "frames_refused": dict(trainer.server.stats.refused),
        "weights_sha256": digest.hexdigest(),
    }


def peer(
    config: Annotated[
        Path, typer.Option(help="YAML config with data, training, p2p, compression sections.")
    ] = DEFAULT_CONFIG_PATH,
    peers: Annotated[str, typer.Option(help="Comma-separated host:port of the other peers.")] = "",
    host: Annotated[str | None, typer.Option(help="Interface to listen on (p2p.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (p2p.local_port).")] = None,
    listen_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--listen-timeout-s",
            "--listen-timeout",  # the old spelling, for existing scripts
            help="Seconds to wait for a round's updates (p2p.listen_timeout_s).",
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds to run (training.rounds).")] = None,
    node_id: Annotated[str | None, typer.Option(help="This peer's id (default host:port).")] = None,
    index: Annotated[int | None, typer.Option(help="Which data share to train on.")] = None,
    partitions: Annotated[int | None, typer.Option(help="Into how many shares.")] = None,
    compression: Annotated[
        str | None, typer.Option(help="none, gradients_topk or weights_quantize.")
    ] = None,
    topk_ratio: Annotated[float | None, typer.Option(help="Share of values top-k sends.")] = None,
    bits: Annotated[
        int | None, typer.Option(help="Quantization bits: 4, 8 (32: no quant).")
    ] = None,
    shared_secret_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the secret every peer shares; frames are signed with it "
            "(p2p.shared_secret_file)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the JSON summary here (default: stdout).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Train with peers over TCP: each round train, send to every peer, wait, average."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    overrides = {
        "p2p.host": host,
        "p2p.local_port": port,
        "p2p.listen_timeout_s": listen_timeout_s,
        "training.rounds": rounds,
        "node_id": node_id,
        "data.index": index,
        "data.partitions": partitions,
        "compression.mode": compression,
        "compression.topk_ratio": topk_ratio,
        "compression.bits": bits,
        "p2p.shared_secret_file": shared_secret_file,
    }
    try:
        cfg = load_config(config, overrides)
        peer_list = parse_peers(peers)
        port_given = cfg.p2p.local_port
        check_peer_list(peer_list, Address(cfg.p2p.host, port_given) if port_given else None)
        auth = auth_from_config(cfg.p2p)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"Invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        summary = asyncio.run(run_peer_training(cfg, peer_list, auth))
    except ConfigError as exc:
        typer.echo(f"Invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:
        typer.echo(f"Cannot listen on {cfg.p2p.host}:{cfg.p2p.local_port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    text = json.dumps(summary, indent=2)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text)
    dropped: dict[str, int] = summary.get("frames_refused", {})
    if dropped:
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items()))
        typer.echo(f"warning: this peer dropped frames that did not verify ({counts})", err=True)
    refused_by: dict[str, str] = summary.get("refused_by", {})
    if refused_by:
        for address, reason in sorted(refused_by.items()):
            typer.echo(
                f"error: peer {address} refused this peer's frames ({reason}): "
                "do both use the same shared secret?",
                err=True,
            )
        raise typer.Exit(3)


def main() -> None:
    """Run ``peer`` as a stand-alone command (``run_peer_training.py``)."""
    typer.run(peer)

"""Bytes against accuracy: update codecs in P2P rounds, and gossip against FedAvg in a group.

Part 1 runs synchronous P2P rounds (the same pure round arithmetic ``PeerTrainer``
uses: encode the local update with error feedback, average what peers decode) on one
task and seed for each codec, and counts the exact frames a peer would send.
Part 2 compares, inside one group on IID data, Flower FedAvg rounds (every member
downloads and uploads the dense model each round) with gossip learning (each member
sends its model to one Cyclon neighbour per cycle), as accuracy against bytes sent.
Writes ``bench/results/compression.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.federation.inprocess import train_in_memory
from node.federation.strategies import set_flower_log_level
from node.learning.data import load_dataset
from node.learning.learner import Learner
from node.learning.merge import age_weighted_merge
from node.learning.models import build_model
from node.learning.partition import NodeData, partition
from node.p2p.auth import SharedSecretAuth
from node.p2p.codecs import Codec, DenseCodec, ErrorFeedback, QuantizeCodec, TopKCodec
from node.p2p.gossip import Descriptor, answer_shuffle, bootstrap_view, merge_view, start_shuffle
from node.p2p.peer import combine_updates, encode_local_update
from node.p2p.transport import Envelope, encode_frame

RESULTS = Path(__file__).resolve().parent / "results" / "compression.json"
TARGET_RATIO = 20.0
TARGET_LOSS_POINTS = 1.0


def _learners(data: list[NodeData], dataset: str, seed: int, lr: float) -> list[Learner]:
    # One shared initial model, as in P2P training (every peer builds it from the seed).
    return [
        Learner(build_model(dataset, seed), d, learning_rate=lr, seed=seed + i)
        for i, d in enumerate(data)
    ]


def _frame_bytes(payload: bytes, sender: str = "10.0.0.1:5000", rnd: int = 1) -> int:
    envelope = Envelope(sender=sender, kind="update", round=rnd, payload=payload, meta={"n": 300})
    # The bytes on the wire, signature included (HMAC-SHA256: its size is the scheme's).
    return len(encode_frame(envelope, auth=SharedSecretAuth(b"bench-secret-of-16+bytes")))


def _test_accuracy(learners: list[Learner]) -> tuple[float, float]:
    accs = [lrn.evaluate("test").accuracy for lrn in learners]
    return float(np.mean(accs)), float(np.min(accs))


def p2p_run(
    data: list[NodeData], dataset: str, codec: Codec, rounds: int, seed: int, lr: float
) -> dict[str, Any]:
    """P2P rounds among all peers with ``codec``; bytes are exact frame sizes."""
    learners = _learners(data, dataset, seed, lr)
    feedback = [ErrorFeedback() for _ in learners]
    weights = learners[0].get_weights()
    peers = len(learners)
    frames: list[int] = []
    history: list[float] = []
    for rnd in range(1, rounds + 1):
        decoded, counts = [], []
        for i, learner in enumerate(learners):
            learner.set_weights(weights)
            learner.train()
            encoded, own, feedback[i] = encode_local_update(
                codec, weights, learner.get_weights(), feedback[i]
            )
            frames.append(_frame_bytes(encoded.to_bytes(), rnd=rnd))
            decoded.append(own)
            counts.append(float(learner.num_train_examples))
        weights = combine_updates(weights, decoded, counts)
        for learner in learners:
            learner.set_weights(weights)
        history.append(_test_accuracy(learners)[0])
    mean_acc, worst_acc = _test_accuracy(learners)
    message = float(np.mean(frames))
    return {
        "codec": codec.name,
        "message_bytes": message,
        # each peer sends its update to every other peer
        "bytes_per_round": message * peers * (peers - 1),
        "test_accuracy": mean_acc,
        "worst_test_accuracy": worst_acc,
        "accuracy_by_round": history,
    }


def fedavg_curve(
    data: list[NodeData], dataset: str, rounds: int, seed: int, lr: float
) -> list[dict[str, float]]:
    """Accuracy after each FedAvg round against bytes: every member gets and sends the model."""
    learners = _learners(data, dataset, seed, lr)
    weights = learners[0].get_weights()
    dense = _frame_bytes(DenseCodec().encode(weights).to_bytes())
    points, sent = [], 0
    for rnd in range(1, rounds + 1):
        weights = train_in_memory(learners, weights, round_=rnd).weights
        sent += 2 * dense * len(learners)
        points.append({"round": rnd, "bytes": sent, "test_accuracy": _test_accuracy(learners)[0]})
    return points


def gossip_curve(
    data: list[NodeData],
    dataset: str,
    cycles: int,
    seed: int,
    lr: float,
    codec: Codec,
    view_size: int = 4,
    shuffle_length: int = 2,
) -> list[dict[str, float]]:
    """Cycle-driven gossip learning with the node's pure Cyclon and merge functions.

    Each cycle every member shuffles with its oldest neighbour and sends its (encoded)
    model to a random neighbour, which merges it by age and trains one epoch.
    """
    rng = random.Random(seed)
    learners = _learners(data, dataset, seed, lr)
    ids = [f"m{i}" for i in range(len(learners))]
    me = [Descriptor(node_id, f"127.0.0.1:{6000 + i}") for i, node_id in enumerate(ids)]
    views = {
        node_id: bootstrap_view(me, node_id, view_size, random.Random(seed + i))
        for i, node_id in enumerate(ids)
    }
    ages = [0] * len(learners)
    points, sent, exchanges = [], 0, 0
    for cycle in range(1, cycles + 1):
        order = list(range(len(learners)))
        rng.shuffle(order)
        for i in order:
            node_id = ids[i]
            target, offered, rest = start_shuffle(views[node_id], me[i], shuffle_length, rng)
            if target is not None:
                reply, views[target.node_id] = answer_shuffle(
                    views[target.node_id], offered, target.node_id, shuffle_length, view_size, rng
                )
                views[node_id] = merge_view(rest, reply, offered, node_id, view_size)
            peer = rng.choice(views[node_id])
            j = ids.index(peer.node_id)
            encoded = codec.encode(learners[i].get_weights())
            sent += _frame_bytes(encoded.to_bytes())
            merged, age = age_weighted_merge(
                learners[j].get_weights(), ages[j], codec.decode(encoded), ages[i]
            )
            learners[j].set_weights(merged)
            learners[j].train()
            ages[j] = age + 1
            exchanges += 1
        points.append(
            {
                "cycle": cycle,
                "exchanges": exchanges,
                "bytes": sent,
                "test_accuracy": _test_accuracy(learners)[0],
            }
        )
    return points


def _bytes_to_reach(points: list[dict[str, float]], accuracy: float) -> float | None:
    for p in points:
        if p["test_accuracy"] >= accuracy:
            return p["bytes"]
    return None


def main() -> None:
    """Run both parts and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--group", type=int, default=8, help="members in the gossip/FedAvg group")
    parser.add_argument("--fedavg-rounds", type=int, default=10)
    parser.add_argument("--gossip-cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_flower_log_level(logging.WARNING)
    torch.set_num_threads(1)
    started = time.perf_counter()
    dataset = load_dataset(args.dataset)

    data = partition(dataset, args.peers, "iid", seed=args.seed)
    codecs: list[Codec] = [
        DenseCodec(),
        TopKCodec(ratio=0.01),
        TopKCodec(ratio=0.10),
        QuantizeCodec(bits=8),
        QuantizeCodec(bits=4),
        TopKCodec(ratio=0.01, bits=8),
        TopKCodec(ratio=0.02, bits=8),
        TopKCodec(ratio=0.03, bits=8),
        TopKCodec(ratio=0.05, bits=8),
        TopKCodec(ratio=0.10, bits=8),
    ]
    p2p = [p2p_run(data, args.dataset, c, args.rounds, args.seed, args.lr) for c in codecs]
    dense = p2p[0]
    for row in p2p:
        row["ratio_vs_dense"] = dense["bytes_per_round"] / row["bytes_per_round"]
        row["accuracy_loss_points"] = 100 * (dense["test_accuracy"] - row["test_accuracy"])
        row["meets_target"] = (
            row["ratio_vs_dense"] >= TARGET_RATIO
            and row["accuracy_loss_points"] <= TARGET_LOSS_POINTS
        )

    group = partition(dataset, args.group, "iid", seed=args.seed)
    fedavg = fedavg_curve(group, args.dataset, args.fedavg_rounds, args.seed, args.lr)
    gossip = gossip_curve(group, args.dataset, args.gossip_cycles, args.seed, args.lr, DenseCodec())
    gossip_q8 = gossip_curve(
        group, args.dataset, args.gossip_cycles, args.seed, args.lr, QuantizeCodec(bits=8)
    )
    goal = fedavg[-1]["test_accuracy"] - 0.01
    result = {
        "task": {
            "dataset": args.dataset,
            "peers": args.peers,
            "rounds": args.rounds,
            "group": args.group,
            "seed": args.seed,
            "lr": args.lr,
            "epochs_per_round": 1,
        },
        "target": {"ratio": TARGET_RATIO, "max_accuracy_loss_points": TARGET_LOSS_POINTS},
        "p2p": p2p,
        "group": {
            "fedavg": fedavg,
            "gossip": gossip,
            "gossip_q8": gossip_q8,
            "goal_accuracy": goal,
            "bytes_to_goal": {
                "fedavg": _bytes_to_reach(fedavg, goal),
                "gossip": _bytes_to_reach(gossip, goal),
                "gossip_q8": _bytes_to_reach(gossip_q8, goal),
            },
        },
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "seconds": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))

    print(f"P2P rounds: {args.peers} peers, {args.rounds} rounds, {args.dataset}, seed {args.seed}")
    print(
        f"{'codec':<12} {'bytes/msg':>10} {'bytes/round':>12} {'x dense':>8} {'acc':>7} {'loss':>6}"
    )
    for row in p2p:
        print(
            f"{row['codec']:<12} {row['message_bytes']:>10.0f} {row['bytes_per_round']:>12.0f} "
            f"{row['ratio_vs_dense']:>8.1f} {row['test_accuracy']:>7.3f} "
            f"{row['accuracy_loss_points']:>6.1f}{'  <- target met' if row['meets_target'] else ''}"
        )
    print(f"\nGroup of {args.group}, IID: bytes to reach {goal:.3f} test accuracy")
    for name, value in result["group"]["bytes_to_goal"].items():  # type: ignore[union-attr]
        print(f"  {name:<10} {value if value is not None else 'not reached'}")
    print(f"\nWrote {args.output} in {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()

"""Learning commands: train, test, share, aggregate, step, nstep, autonet, exchange, flood."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sim.commands.core import (
    MAX_STEPS,
    Command,
    Session,
    check_arity,
    format_nodes,
    format_table,
    parse_int,
    parse_on_off,
    plural,
    sent_text,
)
from sim.network import Counters
from sim.scope import node_name
from sim.state import StepReport

__all__ = ["COMMANDS"]


def _train(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 2)
    scope: str | None = None
    epochs = s.sim.config.local_epochs
    if len(args) == 2:
        scope, epochs = args[0], parse_int(args[1], "epochs", 0, 1000)
    elif len(args) == 1 and args[0].isdigit():
        epochs = parse_int(args[0], "epochs", 0, 1000)
    elif len(args) == 1:
        scope = args[0]
    ids = s.scope(scope)
    losses = s.sim.train(ids, epochs)
    mean = sum(loss for _, loss in losses) / len(losses)
    s.out(f"trained {plural(len(ids), 'node')} for {plural(epochs, 'epoch')}: mean loss {mean:.4f}")


def _test(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    rows = s.sim.test(s.scope(args[0] if args else None))
    lines = format_table(
        ("node", "group", "loss", "accuracy", "examples"),
        [
            (node_name(r.node), r.group or "-", f"{r.loss:.4f}", f"{r.accuracy:.4f}", r.examples)
            for r in rows
        ],
    )
    for line in lines:
        s.out(line)
    mean_acc = sum(r.accuracy for r in rows) / len(rows)
    worst = min(r.accuracy for r in rows)
    s.out(f"mean accuracy {mean_acc:.4f}, worst {worst:.4f} ({plural(len(rows), 'node')})")


def _share(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    ids = s.scope(args[0] if args else None)
    before = replace(s.sim.network.counters)
    sent = s.sim.share(ids)
    s.out(f"{plural(len(ids), 'node')} sent {sent_text(s, sent, before)}")


def _aggregate(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    merged = s.sim.aggregate(s.scope(args[0] if args else None))
    models = sum(n for _, n in merged)
    idle = sum(1 for _, n in merged if n == 0)
    s.out(
        f"aggregated {plural(len(merged) - idle, 'node')}: {plural(models, 'model')} merged in"
        + (f"; {plural(idle, 'node')} had received nothing" if idle else "")
    )


def _step_line(s: Session, first: int, reports: Sequence[StepReport], before: Counters) -> str:
    last = reports[-1].step
    when = f"step {last}" if first == last else f"steps {first}-{last}"
    net = s.sim.network
    now = net.counters
    text = (
        f"{when} ({net.now_ms:g} ms): delivered {now.delivered - before.delivered}, "
        f"dropped {now.dropped - before.dropped}, in flight {net.in_flight}"
    )
    trained = sum(r.trained for r in reports)
    if trained:
        text += f"; autonet trained {trained}, sent {sum(r.sent for r in reports)}"
    left = [n for r in reports for n in r.left]
    joined = [n for r in reports for n in r.joined]
    if left or joined:
        text += f"; churn: left {format_nodes(left)}, joined {format_nodes(joined)}"
    moves = [m for r in reports for m in r.moves]
    if moves:
        text += f"; {plural(len(moves), 'node')} moved"
    return text


def _run_steps(s: Session, count: int, ids: list[int] | None) -> None:
    first = s.sim.network.step + 1
    before = replace(s.sim.network.counters)
    reports = []
    for _ in range(count):
        reports.append(s.sim.step(ids))
        if s.stats_log:
            s.stats_log.write(s.sim.stats())
    s.out(_step_line(s, first, reports, before))
    if count == 1:
        for node, old, new in reports[0].moves:
            s.out(f"  {node_name(node)} moved from area {old} to area {new}")


def _step(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    ids = s.scope(args[0]) if args else None
    _run_steps(s, 1, ids)


def _nstep(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 2)
    count = 1  # DEL-Step's `nstep` and `nstep NODE`: one network step
    if args and (args[0].lstrip("-").isdigit() or len(args) == 2):
        count = parse_int(args.pop(0), "N", 1, MAX_STEPS)
    ids = s.scope(args[0]) if args else None
    _run_steps(s, count, ids)


def _autonet(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    if args:
        s.sim.schedules.autonet = parse_on_off(args[0])
    s.out(f"autonet {'on' if s.sim.schedules.autonet else 'off'}")


def _exchange(s: Session, args: list[str]) -> None:
    check_arity(args, 2, 2)
    a, b = s.two_nodes(args[0], args[1], "exchange needs two different nodes")
    before = replace(s.sim.network.counters)
    sent = s.sim.exchange(a, b)
    s.out(f"{node_name(a)} <-> {node_name(b)}: sent {sent_text(s, sent, before)}")


def _flood(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    ids = s.scope(args[0] if args else None)
    before = replace(s.sim.network.counters)
    sent = s.sim.flood(ids)
    s.out(
        f"{plural(len(ids), 'node')} flooded: sent {sent_text(s, sent, before)}; "
        "each receiver forwards on first sight"
    )


COMMANDS: list[Command] = [
    Command(
        "train",
        "train [scope] [epochs]",
        "train nodes on their own data",
        _train,
        "Local SGD for `epochs` (default: --local-epochs). `train 3` means 3 epochs for "
        "every node; write `train n3` for node n3. DEL-Step's group `train` is "
        "`group train NAME` (a Flower round; this name was taken).",
    ),
    Command(
        "test", "test [scope]", "loss and accuracy of each node's model on its test split", _test
    ),
    Command(
        "share",
        "share [scope]",
        "send models to neighbours and group mates",
        _share,
        "Each node sends its model to every node it reaches directly and to its group's "
        "members; messages travel through the network model (latency, loss, bandwidth). "
        "DEL-Step's group `share` is `group share NAME` (this name was taken).",
    ),
    Command(
        "aggregate",
        "aggregate [scope]",
        "average own model with the received ones",
        _aggregate,
        "node.learning.merge.weighted_mean over the node's model and the latest model from "
        "each sender, weighted by training examples; the inbox is emptied.",
    ),
    Command(
        "step",
        "step [scope]",
        "one tick: deliver due messages, then automatic behaviour",
        _step,
        "Advances the clock one step: delivers due messages, applies churn and mobility, "
        "then (with autonet on) the scope's nodes train, share and aggregate.",
    ),
    Command(
        "nstep",
        "nstep [N] [scope]",
        "N steps (default 1)",
        _nstep,
        "`nstep 5 @g` runs five steps with autonet acting on @g only; `nstep n3` (as in "
        "DEL-Step) is one step.",
    ),
    Command(
        "autonet",
        "autonet [on|off]",
        "every step trains, shares and aggregates by itself",
        _autonet,
        words=("on", "off"),
    ),
    Command("exchange", "exchange A B", "two nodes send each other their models", _exchange),
    Command(
        "flood",
        "flood [scope]",
        "a node's model to everyone it can reach",
        _flood,
        "Sends to the neighbours; each node forwards a flood the first time it sees it.",
    ),
]

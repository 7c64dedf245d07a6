"""Node commands: `node add|remove|list` by hand, `churn` by chance every step."""

from __future__ import annotations

from sim.commands.core import (
    Command,
    Session,
    UsageError,
    check_arity,
    format_nodes,
    parse_float,
    parse_int,
)

__all__ = ["COMMANDS", "MAX_NEW_NODES"]

MAX_NEW_NODES = 10_000


def _node(s: Session, args: list[str]) -> None:
    if not args:
        raise UsageError("add or remove?")
    sub, rest = args[0].lower(), args[1:]
    if sub == "add":
        check_arity(rest, 0, 1)
        count = parse_int(rest[0], "n", 1, MAX_NEW_NODES) if rest else 1
        added = s.sim.add_nodes(count)
        s.out(f"added {format_nodes(added)} ({len(s.sim.nodes)} nodes now)")
    elif sub == "remove":
        check_arity(rest, 1, 1)
        ids = s.scope(rest[0])
        removed = s.sim.remove_nodes(ids)
        s.out(f"removed {format_nodes(removed)} ({len(s.sim.nodes)} nodes now)")
    elif sub == "list":
        check_arity(rest, 0, 0)
        s.out(f"{len(s.sim.nodes)} nodes: {format_nodes(s.sim.alive)}")
    else:
        raise UsageError(f"unknown node command {sub!r}")


def _churn(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    if args:
        off = args[0].lower() == "off"
        s.sim.schedules.churn_rate = 0.0 if off else parse_float(args[0], "RATE", 0.0, 1.0)
    rate = s.sim.schedules.churn_rate
    s.out(
        f"churn: each node leaves with probability {rate:g} per step and a new node joins"
        if rate
        else "churn off"
    )


COMMANDS: list[Command] = [
    Command(
        "node",
        "node add [n] | node remove scope | node list",
        "start or stop nodes",
        _node,
        words=("add", "remove", "list"),
    ),
    Command(
        "churn",
        "churn RATE | churn off",
        "each step nodes leave and new ones join",
        _churn,
        "Each node leaves with probability RATE per step; as many new nodes join.",
        words=("off",),
    ),
]

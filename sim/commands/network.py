"""Network commands: who reaches whom (neighborhood, link, unlink) and how (net, mobility)."""

from __future__ import annotations

from sim.commands.core import (
    MAX_STEPS,
    Command,
    Session,
    UsageError,
    check_arity,
    format_nodes,
    format_table,
    parse_float,
    parse_int,
    plural,
)
from sim.network import Conditions, ConditionsOverride
from sim.scope import node_name

__all__ = ["CONDITION_COMMANDS", "TOPOLOGY_COMMANDS"]


def _neighborhood(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    rows = s.sim.neighbourhood(s.scope(args[0] if args else None))
    for line in format_table(
        ("node", "area", "reach", "neighbours"),
        [(node_name(r.node), r.area, r.reachable, format_nodes(r.neighbours)) for r in rows],
    ):
        s.out(line)


def _link(s: Session, args: list[str]) -> None:
    check_arity(args, 2, 2)
    a, b = s.two_nodes(args[0], args[1], "a node cannot link to itself")
    s.sim.link(a, b)
    s.out(f"linked {node_name(a)} - {node_name(b)}")


def _unlink(s: Session, args: list[str]) -> None:
    check_arity(args, 2, 2)
    a, b = s.two_nodes(args[0], args[1], "a node cannot unlink from itself")
    s.sim.unlink(a, b)
    s.out(f"unlinked {node_name(a)} - {node_name(b)}")


def _conditions_text(c: Conditions) -> str:
    bw = "unlimited" if c.bandwidth_kbps <= 0 else f"{c.bandwidth_kbps:g} kbit/s"
    return (
        f"latency {c.latency_ms:g} ms, jitter {c.jitter_ms:g} ms, loss {c.loss:g}, bandwidth {bw}"
    )


def _link_suffix(s: Session, rest: list[str]) -> tuple[list[str], tuple[int, int] | None]:
    if "link" in (w.lower() for w in rest):
        at = [w.lower() for w in rest].index("link")
        tail = rest[at + 1 :]
        if len(tail) != 2:
            raise UsageError("expected `link A B`")
        return rest[:at], s.two_nodes(tail[0], tail[1], "a link needs two different nodes")
    return rest, None


def _net(s: Session, args: list[str]) -> None:
    if not args:
        raise UsageError("which network setting?")
    sub, rest = args[0].lower(), args[1:]
    net = s.sim.network
    if sub == "show":
        check_arity(rest, 0, 0)
        s.out(f"global: {_conditions_text(net.conditions)}; step {net.step_ms:g} ms")
        for (a, b), _ in sorted(net.link_conditions.items()):
            s.out(
                f"link {node_name(a)}-{node_name(b)}: "
                f"{_conditions_text(net.conditions_between(a, b))}"
            )
        return
    rest, link = _link_suffix(s, rest)
    if sub == "reset":
        check_arity(rest, 0, 0)
        if link is None:
            net.conditions = Conditions()
            net.link_conditions.clear()
            s.out("network conditions reset (global and every link)")
        else:
            net.link_conditions.pop((min(link), max(link)), None)
            s.out(f"link {node_name(link[0])}-{node_name(link[1])} follows the global conditions")
        return
    if sub == "latency":
        if len(rest) not in (1, 3) or (len(rest) == 3 and rest[1].lower() != "jitter"):
            raise UsageError("expected MS [jitter MS]")
        latency = parse_float(rest[0], "latency")
        jitter = parse_float(rest[2], "jitter") if len(rest) == 3 else None
        override = ConditionsOverride(latency_ms=latency, jitter_ms=jitter)
    elif sub == "loss":
        check_arity(rest, 1, 1)
        override = ConditionsOverride(loss=parse_float(rest[0], "P", 0.0, 1.0))
    elif sub == "bandwidth":
        check_arity(rest, 1, 1)
        override = ConditionsOverride(bandwidth_kbps=parse_float(rest[0], "KBPS"))
    else:
        raise UsageError(f"unknown network setting {sub!r}")
    s.sim.set_conditions(override, link)
    if link is None:
        s.out(f"global: {_conditions_text(net.conditions)}")
    else:
        s.out(
            f"link {node_name(link[0])}-{node_name(link[1])}: "
            f"{_conditions_text(net.conditions_between(*link))}"
        )


def _mobility(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 3)
    sched = s.sim.schedules
    if args and args[0].lower() == "off":
        check_arity(args, 1, 1)
        sched.mobility_every = 0
    elif args:
        every = parse_int(args[0], "EVERY", 1, MAX_STEPS)
        fraction = sched.mobility_fraction
        if len(args) > 1:
            if len(args) != 3 or args[1].lower() != "fraction":
                raise UsageError("expected `fraction F` after EVERY")
            fraction = parse_float(args[2], "F", 0.0, 1.0)
        sched.mobility_every, sched.mobility_fraction = every, fraction
    if not sched.mobility_every:
        s.out("mobility off")
        return
    s.out(
        f"mobility: every {plural(sched.mobility_every, 'step')} a fraction "
        f"{sched.mobility_fraction:g} of nodes moves to another of "
        f"{s.sim.network.topology.areas} areas"
    )
    if s.sim.network.topology.areas < 2:
        s.out("  (there is only one area: nobody can move; start with --areas 2 or more)")


# `help` lists these two apart: groups and nodes come between them.
TOPOLOGY_COMMANDS: list[Command] = [
    Command(
        "neighborhood",
        "neighborhood [scope]",
        "who reaches whom",
        _neighborhood,
        "area = neighbourhood; reach = nodes reachable over any number of hops. "
        "DEL-Step's `guestbook NODE` is an alias.",
        aliases=("neighbourhood", "guestbook"),
    ),
    Command("link", "link A B", "let two nodes reach each other", _link),
    Command("unlink", "unlink A B", "keep two nodes apart", _unlink),
]

CONDITION_COMMANDS: list[Command] = [
    Command(
        "net",
        "net latency MS [jitter MS] [link A B] | net loss P [link A B] | "
        "net bandwidth KBPS [link A B] | net show | net reset [link A B]",
        "network conditions, global or per link",
        _net,
        "Delivery time = latency + uniform(0, jitter) + size / bandwidth, rounded up to "
        "whole steps (at least one). Bandwidth in kbit/s, 0 = unlimited. Loss drops whole "
        "messages.",
        words=("latency", "loss", "bandwidth", "show", "reset", "jitter", "link"),
    ),
    Command(
        "mobility",
        "mobility EVERY [fraction F] | mobility off",
        "move nodes between neighbourhoods every EVERY steps",
        _mobility,
        "Every EVERY steps a fraction F (default 0.1, at least one node) moves to a random "
        "other area.",
        words=("off", "fraction"),
    ),
]

"""Pre-configured networks: `topology` rewires the network, `scenario` runs a shipped script.

Scenario scripts live in ``sim/scenarios/NAME.sim`` (package data). Each starts with a
``# NAME: one line`` comment, which `scenario` lists, and uses only simulator commands,
so the same script runs whatever the backend and the node count.
"""

from __future__ import annotations

from importlib import resources

from sim.commands.core import (
    Command,
    Session,
    UsageError,
    check_arity,
    format_nodes,
    parse_float,
    parse_int,
    plural,
    split_line_or_keep,
)
from sim.graphs import GRAPHS
from sim.network import ConditionsOverride
from sim.scope import node_name

__all__ = ["COMMANDS", "scenario_lines", "scenario_names", "scenario_summary"]

_PACKAGE = "sim.scenarios"
_SUFFIX = ".sim"


def scenario_names() -> list[str]:
    """Names of the shipped scenarios, sorted."""
    files = resources.files(_PACKAGE).iterdir()
    return sorted(f.name[: -len(_SUFFIX)] for f in files if f.name.endswith(_SUFFIX))


def _text(name: str) -> str:
    known = scenario_names()
    if name not in known:
        raise UsageError(f"no scenario {name!r}; known: {', '.join(known)}")
    return resources.files(_PACKAGE).joinpath(name + _SUFFIX).read_text(encoding="utf-8")


def scenario_summary(name: str) -> str:
    """The one-line description: the first comment line, without ``# NAME:``."""
    first = _text(name).splitlines()[0].lstrip("#").strip()
    return first.split(":", 1)[1].strip() if ":" in first else first


def scenario_lines(name: str) -> list[str]:
    """The command lines of scenario ``name``; UsageError naming the known ones if unknown."""
    return [ln for ln in _text(name).splitlines() if split_line_or_keep(ln)]


def _scenario(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    if not args:
        names = scenario_names()
        width = max(len(n) for n in names)
        for name in names:
            s.out(f"{name.ljust(width)}  {scenario_summary(name)}")
        return
    name = args[0].lower()
    lines = scenario_lines(name)
    s.queue.extendleft(reversed(lines))
    s.out(f"scenario {name}: queued {plural(len(lines), 'line')}")


def _options(rest: list[str], allowed: dict[str, tuple[float, float]]) -> dict[str, float]:
    """``key value`` pairs, each key once, each value within its bounds."""
    if len(rest) % 2:
        raise UsageError(f"expected pairs of {' | '.join(allowed)} VALUE")
    found: dict[str, float] = {}
    for key, value in zip(rest[::2], rest[1::2], strict=True):
        key = key.lower()
        if key not in allowed or key in found:
            raise UsageError(f"unexpected {key!r}; expected {' | '.join(allowed)}")
        low, high = allowed[key]
        found[key] = parse_float(value, key, low, high)
    return found


# Each graph's options and their bounds.
_GRAPH_OPTIONS: dict[str, dict[str, tuple[float, float]]] = {
    "geometric": {"radius": (0.01, 1.414)},
    "smallworld": {"k": (2, 1000), "p": (0.0, 1.0)},
}


def _topology(s: Session, args: list[str]) -> None:
    if not args:
        raise UsageError("which topology?")
    kind, rest = args[0].lower(), args[1:]
    sim = s.sim
    if kind in GRAPHS:
        opts = _options(rest, _GRAPH_OPTIONS.get(kind, {}))
        k = opts.get("k", 4.0)
        if k != int(k) or int(k) % 2:
            raise UsageError(f"k must be an even whole number, got {k:g}")
        edges = sim.wire(kind, radius=opts.get("radius", 0.5), k=int(k), p=opts.get("p", 0.1))
        degrees = [len(sim.network.topology.neighbours(i)) for i in sim.alive]
        s.out(
            f"{kind}: {plural(len(sim.alive), 'node')}, {plural(len(edges), 'link')}, "
            f"degree {min(degrees)}-{max(degrees)}"
        )
    elif kind == "areas":
        check_arity(rest, 1, 1)
        areas = parse_int(rest[0], "N", 1, max(1, len(sim.alive)))
        sim.use_areas(areas)
        topo = sim.network.topology
        s.out(
            f"{plural(areas, 'area')}: "
            + "; ".join(f"{a}: {format_nodes(topo.members(a))}" for a in range(areas))
        )
    elif kind == "bridge":
        if len(rest) < 2:
            raise UsageError("expected `bridge A B` (two area numbers)")
        first = parse_int(rest[0], "A", 0)
        second = parse_int(rest[1], "B", 0)
        opts = _options(rest[2:], {"loss": (0.0, 1.0), "latency": (0.0, 1e9)})
        if first == second:
            raise UsageError("a bridge joins two different areas")
        a, b = sim.bridge(first, second)
        if opts:
            sim.set_conditions(
                ConditionsOverride(latency_ms=opts.get("latency"), loss=opts.get("loss")), (a, b)
            )
        c = sim.network.conditions_between(a, b)
        s.out(
            f"bridge {node_name(a)} - {node_name(b)} (areas {first}-{second}): "
            f"loss {c.loss:g}, latency {c.latency_ms:g} ms"
        )
    elif kind == "partition":
        check_arity(rest, 0, 1)
        sides = parse_int(rest[0], "N", 2) if rest else 2
        parts = sim.partition(sides)
        s.out("partition: " + " | ".join(format_nodes(p) for p in parts))
    elif kind == "heal":
        check_arity(rest, 0, 0)
        s.out(f"healed: {plural(sim.heal(), 'node pair')} can reach each other again")
    else:
        raise UsageError(
            f"unknown topology {kind!r}; known: {', '.join(GRAPHS)}, areas, bridge, partition, heal"
        )


COMMANDS: list[Command] = [
    Command(
        "topology",
        "topology ring | star | grid | geometric [radius R] | smallworld [k K] [p P] | "
        "areas N | bridge A B [loss P] [latency MS] | partition [N] | heal",
        "rewire the network: a graph, areas, a bridge, a partition",
        _topology,
        "ring/star/grid/geometric/smallworld replace every link by that graph over the "
        "live nodes (geometric: points in the unit square linked within R, default 0.5; "
        "smallworld: Watts-Strogatz, K nearest (default 4) rewired with probability P "
        "(default 0.1)); random graphs draw from the seeded network stream. Nodes added "
        "later start unlinked. `areas N` splits the nodes in id order into N areas that "
        "link inside (forgetting links and graphs). `bridge A B` links the last node of "
        "area A with the first of area B, with its own loss/latency. `partition N` keeps "
        "N contiguous sides apart over any link (in-flight messages across the cut are "
        "lost) until `heal`.",
        words=(
            "ring",
            "star",
            "grid",
            "geometric",
            "smallworld",
            "areas",
            "bridge",
            "partition",
            "heal",
        ),
    ),
    Command(
        "scenario",
        "scenario [NAME]",
        "run a pre-configured network (no NAME: list them)",
        _scenario,
        "A scenario is a shipped script (sim/scenarios/NAME.sim) of ordinary commands, "
        "queued like `load`; it works with any --nodes.",
        words=tuple(scenario_names()),
    ),
]

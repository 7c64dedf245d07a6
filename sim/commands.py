"""The command table: name -> handler, usage and help; parsing, checking and the printed reports.

Every handler parses and checks all of its arguments before it touches the
simulation, so a malformed command prints its usage line and changes nothing.
Handlers write through ``Session.out``; nothing else here prints. Reports show
simulated time only, so the same seed and script print the same text.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import shlex
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from sim.network import Conditions, ConditionsOverride, Counters
from sim.persist import restore_simulation, save_simulation
from sim.scope import (
    ScopeError,
    node_name,
    parse_node,
    parse_scope,
    resolve_scope,
)
from sim.state import Mirror, Simulation, StatsRow, StepReport

__all__ = [
    "COMMANDS",
    "Command",
    "Session",
    "StatsLog",
    "UsageError",
    "complete",
    "format_nodes",
    "format_table",
    "split_line",
]

log = logging.getLogger(__name__)

MAX_STEPS = 1_000_000
MAX_NEW_NODES = 10_000
STATS_HEADERS = (
    "step",
    "time_ms",
    "nodes",
    "groups",
    "sent",
    "dropped",
    "delivered",
    "in_flight",
    "bytes",
    "mean_acc",
    "worst_acc",
)


class UsageError(ValueError):
    """A command that does not parse or cannot apply; the simulation is unchanged."""


# --- formatting ------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Plain fixed-width columns: text left-aligned, numbers right-aligned."""
    body = [[str(c) for c in row] for row in rows]
    numeric = [all(_is_number(r[i]) for r in body) and bool(body) for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return [line(list(headers))] + [line(r) for r in body]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_nodes(ids: Iterable[int]) -> str:
    """``n000-n003, n007``: consecutive ids as ranges; ``-`` when empty."""
    ordered = sorted(ids)
    if not ordered:
        return "-"
    parts: list[str] = []
    start = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(node_name(start) if start == prev else f"{node_name(start)}-{node_name(prev)}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _conditions_text(c: Conditions) -> str:
    bw = "unlimited" if c.bandwidth_kbps <= 0 else f"{c.bandwidth_kbps:g} kbit/s"
    return (
        f"latency {c.latency_ms:g} ms, jitter {c.jitter_ms:g} ms, loss {c.loss:g}, bandwidth {bw}"
    )


def stats_cells(row: StatsRow) -> list[str]:
    """One stats row as printed."""
    return [
        str(row.step),
        f"{row.time_ms:g}",
        str(row.nodes),
        str(row.groups),
        str(row.sent),
        str(row.dropped),
        str(row.delivered),
        str(row.in_flight),
        str(row.bytes_sent),
        f"{row.mean_accuracy:.4f}",
        f"{row.worst_accuracy:.4f}",
    ]


# --- the session -----------------------------------------------------------------------


class StatsLog:
    """Appends one stats row per step to a CSV file or a JSON Lines file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._fh: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh) if fmt == "csv" else None
        if self._csv:
            self._csv.writerow(STATS_HEADERS)

    def write(self, row: StatsRow) -> None:
        """Append one row and flush, so the file is readable while the simulation runs."""
        if self._csv:
            self._csv.writerow(stats_cells(row))
        else:
            self._fh.write(json.dumps(row.as_dict()) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


@dataclass
class Session:
    """What the commands act on: the simulation, the output, queued lines, the stats log."""

    sim: Simulation
    out: Callable[[str], None]
    mirror: Mirror | None = None
    queue: deque[str] = field(default_factory=deque)
    stats_log: StatsLog | None = None
    errors: int = 0
    done: bool = False

    def execute(self, line: str) -> None:
        """Run one line; errors are printed with the usage line, never raised."""
        try:
            words = split_line(line)
        except UsageError as exc:
            self.errors += 1
            self.out(f"error: {exc}")
            return
        if not words:
            return
        name, args = words[0].lower(), words[1:]
        command = COMMANDS.get(ALIASES.get(name, name))
        if command is None:
            self.errors += 1
            self.out(f"unknown command: {name} (type `help` for the list)")
            return
        try:
            command.handler(self, args)
        except (UsageError, ScopeError, ValueError, OSError) as exc:
            self.errors += 1
            self.out(f"error: {exc}")
            self.out(f"usage: {command.usage}")
        except KeyboardInterrupt:
            self.errors += 1
            dropped = len(self.queue)
            self.queue.clear()  # Ctrl-C stops a loaded script too
            self.out(
                f"interrupted at step {self.sim.network.step}"
                + (f"; {_plural(dropped, 'queued line')} dropped" if dropped else "")
            )
        except Exception as exc:  # nothing a user types may crash the simulator
            log.exception("command %r failed", line)
            self.errors += 1
            self.out(f"error: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Close the stats log."""
        if self.stats_log:
            self.stats_log.close()
            self.stats_log = None

    # --- argument helpers ------------------------------------------------------------

    def scope(self, token: str | None) -> list[int]:
        """The live nodes a scope token names (all when None); refuses empty results."""
        if token is None:
            ids = self.sim.alive
        else:
            ids = resolve_scope(parse_scope(token), self.sim.nodes.keys(), self.sim.groups)
        if not ids:
            raise UsageError("the scope holds no live node")
        return ids

    def node(self, token: str) -> int:
        """One live node."""
        index = parse_node(token)
        if index not in self.sim.nodes:
            raise UsageError(f"no such node: {node_name(index)}")
        return index


def split_line(line: str) -> list[str]:
    """Words of a command line; ``#`` starts a comment."""
    try:
        lexer = shlex.shlex(line, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        return list(lexer)
    except ValueError as exc:
        raise UsageError(f"cannot parse {line!r}: {exc}") from exc


def _int(token: str, what: str, low: int | None = None, high: int | None = None) -> int:
    try:
        value = int(token)
    except ValueError as exc:
        raise UsageError(f"{what} must be a whole number, got {token!r}") from exc
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
        raise UsageError(f"{what} must be in {bounds}, got {value}")
    return value


def _float(token: str, what: str, low: float = 0.0, high: float | None = None) -> float:
    try:
        value = float(token)
    except ValueError as exc:
        raise UsageError(f"{what} must be a number, got {token!r}") from exc
    if value != value or value < low or (high is not None and value > high):
        bounds = f"{low:g}..{high:g}" if high is not None else f"at least {low:g}"
        raise UsageError(f"{what} must be {bounds}, got {token}")
    return value


def _arity(args: Sequence[str], low: int, high: int) -> None:
    if not low <= len(args) <= high:
        raise UsageError(
            f"expected {low}-{high} arguments, got {len(args)}"
            if low != high
            else f"expected {_plural(low, 'argument')}, got {len(args)}"
        )


def _on_off(token: str) -> bool:
    if token.lower() not in ("on", "off"):
        raise UsageError(f"expected on or off, got {token!r}")
    return token.lower() == "on"


# --- handlers: learning ------------------------------------------------------------------


def _train(s: Session, args: list[str]) -> None:
    _arity(args, 0, 2)
    scope: str | None = None
    epochs = s.sim.config.local_epochs
    if len(args) == 2:
        scope, epochs = args[0], _int(args[1], "epochs", 0, 1000)
    elif len(args) == 1 and args[0].isdigit():
        epochs = _int(args[0], "epochs", 0, 1000)
    elif len(args) == 1:
        scope = args[0]
    ids = s.scope(scope)
    losses = s.sim.train(ids, epochs)
    mean = sum(loss for _, loss in losses) / len(losses)
    s.out(
        f"trained {_plural(len(ids), 'node')} for {_plural(epochs, 'epoch')}: mean loss {mean:.4f}"
    )


def _test(s: Session, args: list[str]) -> None:
    _arity(args, 0, 1)
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
    s.out(f"mean accuracy {mean_acc:.4f}, worst {worst:.4f} ({_plural(len(rows), 'node')})")


def _sent(s: Session, sent: int, before: Counters) -> str:
    """``12 messages (232308 bytes)``, and how many loss dropped at once."""
    now = s.sim.network.counters
    text = f"{_plural(sent, 'message')} ({now.bytes_sent - before.bytes_sent} bytes)"
    lost = now.dropped - before.dropped
    return text + (f", {lost} lost" if lost else "")


def _share(s: Session, args: list[str]) -> None:
    _arity(args, 0, 1)
    ids = s.scope(args[0] if args else None)
    before = replace(s.sim.network.counters)
    sent = s.sim.share(ids)
    s.out(f"{_plural(len(ids), 'node')} sent {_sent(s, sent, before)}")


def _aggregate(s: Session, args: list[str]) -> None:
    _arity(args, 0, 1)
    merged = s.sim.aggregate(s.scope(args[0] if args else None))
    models = sum(n for _, n in merged)
    idle = sum(1 for _, n in merged if n == 0)
    s.out(
        f"aggregated {_plural(len(merged) - idle, 'node')}: {_plural(models, 'model')} merged in"
        + (f"; {_plural(idle, 'node')} had received nothing" if idle else "")
    )


# --- handlers: time ------------------------------------------------------------------------


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
        text += f"; {_plural(len(moves), 'node')} moved"
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
    _arity(args, 0, 1)
    ids = s.scope(args[0]) if args else None
    _run_steps(s, 1, ids)


def _nstep(s: Session, args: list[str]) -> None:
    _arity(args, 1, 2)
    count = _int(args[0], "N", 1, MAX_STEPS)
    ids = s.scope(args[1]) if len(args) == 2 else None
    _run_steps(s, count, ids)


def _autonet(s: Session, args: list[str]) -> None:
    _arity(args, 0, 1)
    if args:
        s.sim.schedules.autonet = _on_off(args[0])
    s.out(f"autonet {'on' if s.sim.schedules.autonet else 'off'}")


# --- handlers: communication -----------------------------------------------------------


def _exchange(s: Session, args: list[str]) -> None:
    _arity(args, 2, 2)
    a, b = s.node(args[0]), s.node(args[1])
    if a == b:
        raise UsageError("exchange needs two different nodes")
    before = replace(s.sim.network.counters)
    sent = s.sim.exchange(a, b)
    s.out(f"{node_name(a)} <-> {node_name(b)}: sent {_sent(s, sent, before)}")


def _flood(s: Session, args: list[str]) -> None:
    _arity(args, 0, 1)
    ids = s.scope(args[0] if args else None)
    before = replace(s.sim.network.counters)
    sent = s.sim.flood(ids)
    s.out(
        f"{_plural(len(ids), 'node')} flooded: sent {_sent(s, sent, before)}; "
        "each receiver forwards on first sight"
    )


# --- handlers: topology ------------------------------------------------------------------


def _neighborhood(s: Session, args: list[str]) -> None:
    _arity(args, 0, 1)
    rows = s.sim.neighbourhood(s.scope(args[0] if args else None))
    for line in format_table(
        ("node", "area", "reach", "neighbours"),
        [(node_name(r.node), r.area, r.reachable, format_nodes(r.neighbours)) for r in rows],
    ):
        s.out(line)


def _link(s: Session, args: list[str]) -> None:
    _arity(args, 2, 2)
    a, b = s.node(args[0]), s.node(args[1])
    if a == b:
        raise UsageError("a node cannot link to itself")
    s.sim.link(a, b)
    s.out(f"linked {node_name(a)} - {node_name(b)}")


def _unlink(s: Session, args: list[str]) -> None:
    _arity(args, 2, 2)
    a, b = s.node(args[0]), s.node(args[1])
    if a == b:
        raise UsageError("a node cannot unlink from itself")
    s.sim.unlink(a, b)
    s.out(f"unlinked {node_name(a)} - {node_name(b)}")


# --- handlers: groups ----------------------------------------------------------------------


def _group_name(s: Session, token: str, *, exists: bool = True) -> str:
    name = token[1:] if token.startswith("@") else token
    if exists and name not in s.sim.groups:
        raise UsageError(f"no such group: {name}")
    return name


def _group(s: Session, args: list[str]) -> None:
    if not args:
        raise UsageError("which group command?")
    sub, rest = args[0].lower(), args[1:]
    sim = s.sim
    if sub == "list":
        _arity(rest, 0, 0)
        if not sim.groups:
            s.out("no groups")
            return
        for line in format_table(
            ("group", "members", "rounds", "nodes"),
            [
                (name, len(m), sim.group_rounds[name], format_nodes(m))
                for name, m in sim.groups.items()
            ],
        ):
            s.out(line)
    elif sub == "roster":
        _arity(rest, 1, 1)
        name = _group_name(s, rest[0])
        members = sim.roster(name)
        s.out(f"{name} ({_plural(len(members), 'member')}): {format_nodes(members)}")
    elif sub == "create":
        _arity(rest, 1, 1)
        name = _group_name(s, rest[0], exists=False)
        sim.create_group(name)
        s.out(f"created group {name}")
    elif sub in ("add", "remove"):
        _arity(rest, 2, 2)
        name = _group_name(s, rest[0])
        ids = s.scope(rest[1])
        if sub == "add":
            moved = sim.group_add(name, ids)
            s.out(f"{name}: added {format_nodes(moved)} ({_plural(len(moved), 'node')})")
        else:
            gone = sim.group_remove(name, ids)
            s.out(f"{name}: removed {format_nodes(gone)} ({_plural(len(gone), 'node')})")
    elif sub == "membership":
        _arity(rest, 0, 1)
        ids = s.scope(rest[0] if rest else None)
        for line in format_table(
            ("node", "group"), [(node_name(i), sim.nodes[i].group or "-") for i in ids]
        ):
            s.out(line)
    elif sub == "share":
        _arity(rest, 1, 1)
        name = _group_name(s, rest[0])
        before = replace(sim.network.counters)
        sent = sim.group_share(name)
        s.out(f"{name}: sent {_sent(s, sent, before)} among {len(sim.groups[name])} members")
    elif sub == "train":
        _arity(rest, 1, 2)
        name = _group_name(s, rest[0])
        epochs = _int(rest[1], "epochs", 0, 1000) if len(rest) == 2 else None
        if not sim.groups[name]:
            raise UsageError(f"group {name} has no members")
        from node.federation.inprocess import set_flower_log_level  # Flower loads on first use

        set_flower_log_level(logging.WARNING)
        result = sim.group_train(name, epochs)
        s.out(
            f"{name} round {result.round} ({_plural(len(result.members), 'member')}, "
            f"{sim.config.strategy}): val accuracy {result.val_accuracy:.4f}, "
            f"train loss {result.train_loss:.4f}"
        )
    else:
        raise UsageError(f"unknown group command {sub!r}")


# --- handlers: nodes -----------------------------------------------------------------------


def _node(s: Session, args: list[str]) -> None:
    if not args:
        raise UsageError("add or remove?")
    sub, rest = args[0].lower(), args[1:]
    if sub == "add":
        _arity(rest, 0, 1)
        count = _int(rest[0], "n", 1, MAX_NEW_NODES) if rest else 1
        added = s.sim.add_nodes(count)
        s.out(f"added {format_nodes(added)} ({len(s.sim.nodes)} nodes now)")
    elif sub == "remove":
        _arity(rest, 1, 1)
        ids = s.scope(rest[0])
        removed = s.sim.remove_nodes(ids)
        s.out(f"removed {format_nodes(removed)} ({len(s.sim.nodes)} nodes now)")
    elif sub == "list":
        _arity(rest, 0, 0)
        s.out(f"{len(s.sim.nodes)} nodes: {format_nodes(s.sim.alive)}")
    else:
        raise UsageError(f"unknown node command {sub!r}")


def _churn(s: Session, args: list[str]) -> None:
    _arity(args, 0, 1)
    if args:
        off = args[0].lower() == "off"
        s.sim.schedules.churn_rate = 0.0 if off else _float(args[0], "RATE", 0.0, 1.0)
    rate = s.sim.schedules.churn_rate
    s.out(
        f"churn: each node leaves with probability {rate:g} per step and a new node joins"
        if rate
        else "churn off"
    )


def _mobility(s: Session, args: list[str]) -> None:
    _arity(args, 0, 3)
    sched = s.sim.schedules
    if args and args[0].lower() == "off":
        _arity(args, 1, 1)
        sched.mobility_every = 0
    elif args:
        every = _int(args[0], "EVERY", 1, MAX_STEPS)
        fraction = sched.mobility_fraction
        if len(args) > 1:
            if len(args) != 3 or args[1].lower() != "fraction":
                raise UsageError("expected `fraction F` after EVERY")
            fraction = _float(args[2], "F", 0.0, 1.0)
        sched.mobility_every, sched.mobility_fraction = every, fraction
    if not sched.mobility_every:
        s.out("mobility off")
        return
    s.out(
        f"mobility: every {_plural(sched.mobility_every, 'step')} a fraction "
        f"{sched.mobility_fraction:g} of nodes moves to another of "
        f"{s.sim.network.topology.areas} areas"
    )
    if s.sim.network.topology.areas < 2:
        s.out("  (there is only one area: nobody can move; start with --areas 2 or more)")


# --- handlers: network conditions ------------------------------------------------------


def _link_suffix(s: Session, rest: list[str]) -> tuple[list[str], tuple[int, int] | None]:
    if "link" in (w.lower() for w in rest):
        at = [w.lower() for w in rest].index("link")
        tail = rest[at + 1 :]
        if len(tail) != 2:
            raise UsageError("expected `link A B`")
        a, b = s.node(tail[0]), s.node(tail[1])
        if a == b:
            raise UsageError("a link needs two different nodes")
        return rest[:at], (a, b)
    return rest, None


def _net(s: Session, args: list[str]) -> None:
    if not args:
        raise UsageError("which network setting?")
    sub, rest = args[0].lower(), args[1:]
    net = s.sim.network
    if sub == "show":
        _arity(rest, 0, 0)
        s.out(f"global: {_conditions_text(net.conditions)}; step {net.step_ms:g} ms")
        for (a, b), _ in sorted(net.link_conditions.items()):
            s.out(
                f"link {node_name(a)}-{node_name(b)}: "
                f"{_conditions_text(net.conditions_between(a, b))}"
            )
        return
    rest, link = _link_suffix(s, rest)
    if sub == "reset":
        _arity(rest, 0, 0)
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
        latency = _float(rest[0], "latency")
        jitter = _float(rest[2], "jitter") if len(rest) == 3 else None
        override = ConditionsOverride(latency_ms=latency, jitter_ms=jitter)
    elif sub == "loss":
        _arity(rest, 1, 1)
        override = ConditionsOverride(loss=_float(rest[0], "P", 0.0, 1.0))
    elif sub == "bandwidth":
        _arity(rest, 1, 1)
        override = ConditionsOverride(bandwidth_kbps=_float(rest[0], "KBPS"))
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


# --- handlers: records -------------------------------------------------------------------


def _stats(s: Session, args: list[str]) -> None:
    _arity(args, 0, 0)
    for line in format_table(STATS_HEADERS, [stats_cells(s.sim.stats())]):
        s.out(line)


def _log(s: Session, args: list[str]) -> None:
    _arity(args, 1, 2)
    fmt = args[0].lower()
    if fmt == "off":
        _arity(args, 1, 1)
        s.close()
        s.out("stats log off")
        return
    if fmt not in ("csv", "json"):
        raise UsageError(f"expected csv, json or off, got {args[0]!r}")
    _arity(args, 2, 2)
    new_log = StatsLog(Path(args[1]), fmt)
    s.close()
    s.stats_log = new_log
    new_log.write(s.sim.stats())
    s.out(f"logging stats to {args[1]} ({fmt}) now and after every step")


def _save(s: Session, args: list[str]) -> None:
    _arity(args, 1, 1)
    save_simulation(s.sim, Path(args[0]))
    s.out(f"saved step {s.sim.network.step} ({_plural(len(s.sim.nodes), 'node')}) to {args[0]}")


def _restore(s: Session, args: list[str]) -> None:
    _arity(args, 1, 1)
    path = Path(args[0])
    if not path.is_file():
        raise UsageError(f"no such file: {args[0]}")
    restored = restore_simulation(path, s.mirror)
    if s.mirror:
        for index in set(s.sim.nodes) - set(restored.nodes):
            s.mirror.remove_node(index)
    s.sim = restored
    s.out(
        f"restored {args[0]}: step {s.sim.network.step}, "
        f"{_plural(len(s.sim.nodes), 'node')}, {_plural(len(s.sim.groups), 'group')}"
    )


def _seed(s: Session, args: list[str]) -> None:
    _arity(args, 1, 1)
    seed = _int(args[0], "N", 0, 2**63 - 1)
    s.sim.reseed(seed)
    s.out(f"network random stream reseeded with {seed}")


def _load(s: Session, args: list[str]) -> None:
    _arity(args, 1, 1)
    path = Path(args[0])
    if not path.is_file():
        raise UsageError(f"no such file: {args[0]}")
    lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    kept = [ln for ln in lines if split_line_or_keep(ln)]
    s.queue.extendleft(reversed(kept))
    s.out(f"queued {_plural(len(kept), 'line')} from {args[0]}")


def split_line_or_keep(line: str) -> bool:
    """Whether a script line holds a command (comments and blank lines do not)."""
    try:
        return bool(split_line(line))
    except UsageError:
        return True  # let it run, so its error is reported where it stands


def _help(s: Session, args: list[str]) -> None:
    _arity(args, 0, 1)
    if args:
        name = ALIASES.get(args[0].lower(), args[0].lower())
        command = COMMANDS.get(name)
        if command is None:
            raise UsageError(f"no command {args[0]!r}")
        s.out(f"usage: {command.usage}")
        for line in command.help.strip().splitlines():
            s.out(f"  {line.strip()}")
        return
    width = max(len(c.name) for c in COMMANDS.values())
    for command in COMMANDS.values():
        s.out(f"{command.name.ljust(width)}  {command.summary}")
    s.out("scopes: all (default), n3, n0-n4, n1,n5, @group, or a mix: n0-n2,@g1")


def _quit(s: Session, args: list[str]) -> None:
    _arity(args, 0, 0)
    s.done = True


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command: how to call it, what it does, who handles it."""

    name: str
    usage: str
    summary: str
    handler: Callable[[Session, list[str]], None]
    help: str = ""
    words: tuple[str, ...] = ()


_TABLE = [
    Command(
        "train",
        "train [scope] [epochs]",
        "train nodes on their own data",
        _train,
        "Local SGD for `epochs` (default: --local-epochs). `train 3` means 3 epochs for "
        "every node; write `train n3` for node n3.",
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
        "members; messages travel through the network model (latency, loss, bandwidth).",
    ),
    Command(
        "aggregate",
        "aggregate [scope]",
        "average own model with the received ones",
        _aggregate,
        "node.learning.merge.average over the node's model and the latest model from each sender, "
        "weighted by training examples; the inbox is emptied.",
    ),
    Command(
        "step",
        "step [scope]",
        "one tick: deliver due messages, then automatic behaviour",
        _step,
        "Advances the clock one step: delivers due messages, applies churn and mobility, "
        "then (with autonet on) the scope's nodes train, share and aggregate.",
    ),
    Command("nstep", "nstep N [scope]", "N steps", _nstep),
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
    Command(
        "neighborhood",
        "neighborhood [scope]",
        "who reaches whom",
        _neighborhood,
        "area = neighbourhood; reach = nodes reachable over any number of hops.",
    ),
    Command("link", "link A B", "let two nodes reach each other", _link),
    Command("unlink", "unlink A B", "keep two nodes apart", _unlink),
    Command(
        "group",
        "group list | roster NAME | create NAME | add NAME scope | "
        "remove NAME scope | membership [scope] | share NAME | train NAME [epochs]",
        "groups (mirrored in the registry)",
        _group,
        "A node is in at most one group: `group add` moves it from its old one. "
        "`group train` runs a Flower round among the members (node.federation.inprocess); "
        "`group share` sends every member's model to every other member.",
        words=("list", "roster", "create", "add", "remove", "membership", "share", "train"),
    ),
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
    Command("stats", "stats", "step, groups, messages, bytes, mean/worst accuracy", _stats),
    Command(
        "log",
        "log csv|json FILE | log off",
        "write a stats row to FILE after every step",
        _log,
        "json writes JSON Lines (one object per step).",
        words=("csv", "json", "off"),
    ),
    Command("save", "save FILE", "save the whole simulation", _save),
    Command("restore", "restore FILE", "continue a saved simulation", _restore),
    Command(
        "seed",
        "seed N",
        "reseed the network's random stream",
        _seed,
        "Loss, jitter, churn and mobility draw from this stream.",
    ),
    Command("load", "load FILE", "run a script's lines as if typed", _load),
    Command("help", "help [command]", "this list, or one command's help", _help),
    Command("quit", "quit", "leave (also: exit, Ctrl-D)", _quit),
]
COMMANDS: dict[str, Command] = {c.name: c for c in _TABLE}
ALIASES = {"neighbourhood": "neighborhood", "exit": "quit", "?": "help"}
_FILE_ARGS = {"save", "restore", "load"}
_GROUP_NAME_WORDS = {"roster", "add", "remove", "share", "train"}


# --- completion ----------------------------------------------------------------------------


def complete(session: Session, line: str, text: str) -> list[str]:
    """Completions for the word ``text`` at the end of ``line`` (what readline asks).

    Each ends as readline should leave it: a word with a space after it, a folder
    with a slash (Python's readline appends nothing itself).
    """
    before = line[: len(line) - len(text)].split()
    if not before:
        return _words([*COMMANDS, *ALIASES], text)
    name = ALIASES.get(before[0].lower(), before[0].lower())
    command = COMMANDS.get(name)
    if command is None:
        return []
    if name == "help":
        return _words(COMMANDS, text)
    if name in _FILE_ARGS or (name == "log" and len(before) == 2):
        paths = sorted(glob.glob(glob.escape(text) + "*"))
        return [p + "/" if Path(p).is_dir() else p + " " for p in paths]
    options: list[str] = []
    if len(before) == 1 or (name == "net" and len(before) >= 2):
        options.extend(command.words)
    if name == "group" and len(before) == 2 and before[1] in _GROUP_NAME_WORDS:
        return _words(session.sim.groups, text)
    if text.startswith("@"):
        options.extend(f"@{g}" for g in session.sim.groups)
    elif text.startswith("n") or text == "":
        options.append("all")
        options.extend(node_name(i) for i in session.sim.alive)
    return _words(options, text)


def _words(options: Iterable[str], text: str) -> list[str]:
    return [o + " " for o in sorted({o for o in options if o.startswith(text)})]

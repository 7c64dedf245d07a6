"""What every command shares: the session, the command record, argument parsing, formatting."""

from __future__ import annotations

import logging
import math
import shlex
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sim.network import Counters
from sim.scope import (
    ScopeError,
    node_name,
    parse_node,
    parse_scope,
    resolve_scope,
)
from sim.state import Mirror, Simulation

if TYPE_CHECKING:  # stats imports this module; the session only holds a log
    from sim.commands.stats import StatsLog

__all__ = [
    "MAX_STEPS",
    "Command",
    "Session",
    "UsageError",
    "check_arity",
    "format_nodes",
    "format_table",
    "parse_float",
    "parse_int",
    "parse_on_off",
    "plural",
    "sent_text",
    "split_line",
    "split_line_or_keep",
]

log = logging.getLogger(__name__)

MAX_STEPS = 1_000_000


class UsageError(ValueError):
    """A command that does not parse or cannot apply; the simulation is unchanged."""


@dataclass(frozen=True)
class Command:
    """One command: how to call it, what it does, who handles it.

    The handler parses and checks all of its arguments before it touches the
    simulation, so a malformed command prints its usage line and changes nothing
    (raise UsageError). It writes through ``Session.out`` only, and reports
    simulated time only, so the same seed and script print the same text.
    ``words`` are what tab completion offers after the name; ``aliases`` are other
    names it answers to.
    """

    name: str
    usage: str
    summary: str
    handler: Callable[[Session, list[str]], None]
    help: str = ""
    words: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


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
        from sim.commands.table import find  # not at the top: the handlers import this module

        try:
            words = split_line(line)
        except UsageError as exc:
            self.errors += 1
            self.out(f"error: {exc}")
            return
        if not words:
            return
        name, args = words[0].lower(), words[1:]
        command = find(name)
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
                + (f"; {plural(dropped, 'queued line')} dropped" if dropped else "")
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

    def two_nodes(self, first: str, second: str, same: str) -> tuple[int, int]:
        """Two different live nodes; ``same`` is the error when they are one node."""
        a, b = self.node(first), self.node(second)
        if a == b:
            raise UsageError(same)
        return a, b


def split_line(line: str) -> list[str]:
    """Words of a command line; ``#`` starts a comment."""
    try:
        lexer = shlex.shlex(line, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        return list(lexer)
    except ValueError as exc:
        raise UsageError(f"cannot parse {line!r}: {exc}") from exc


def split_line_or_keep(line: str) -> bool:
    """Whether a script line holds a command (comments and blank lines do not)."""
    try:
        return bool(split_line(line))
    except UsageError:
        return True  # let it run, so its error is reported where it stands


def parse_int(token: str, what: str, low: int | None = None, high: int | None = None) -> int:
    """``token`` as a whole number within ``low..high`` (either end open when None).

    Raises UsageError, naming the argument ``what``, when it is not one or out of bounds.
    """
    try:
        value = int(token)
    except ValueError as exc:
        raise UsageError(f"{what} must be a whole number, got {token!r}") from exc
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
        raise UsageError(f"{what} must be in {bounds}, got {value}")
    return value


def parse_float(token: str, what: str, low: float = 0.0, high: float | None = None) -> float:
    """``token`` as a number within ``low..high`` (no upper bound when None).

    Raises UsageError, naming the argument ``what``, when it is not a finite number or is
    out of bounds.
    """
    try:
        value = float(token)
    except ValueError as exc:
        raise UsageError(f"{what} must be a number, got {token!r}") from exc
    if not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number, got {token}")
    if value < low or (high is not None and value > high):
        bounds = f"{low:g}..{high:g}" if high is not None else f"at least {low:g}"
        raise UsageError(f"{what} must be {bounds}, got {token}")
    return value


def parse_on_off(token: str) -> bool:
    """``on`` -> True, ``off`` -> False, any case; UsageError for anything else."""
    if token.lower() not in ("on", "off"):
        raise UsageError(f"expected on or off, got {token!r}")
    return token.lower() == "on"


def check_arity(args: Sequence[str], low: int, high: int) -> None:
    """Raise UsageError unless there are ``low`` to ``high`` arguments."""
    if not low <= len(args) <= high:
        raise UsageError(
            f"expected {low}-{high} arguments, got {len(args)}"
            if low != high
            else f"expected {plural(low, 'argument')}, got {len(args)}"
        )


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


def plural(n: int, word: str) -> str:
    """``1 node``, ``2 nodes``: ``n`` and ``word``, with an ``s`` unless ``n`` is 1."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def sent_text(s: Session, sent: int, before: Counters) -> str:
    """``12 messages (232308 bytes)``, and how many loss dropped at once."""
    now = s.sim.network.counters
    text = f"{plural(sent, 'message')} ({now.bytes_sent - before.bytes_sent} bytes)"
    lost = now.dropped - before.dropped
    return text + (f", {lost} lost" if lost else "")

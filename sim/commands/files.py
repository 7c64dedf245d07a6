"""Commands that keep or replay a run: log, save, restore, seed, load."""

from __future__ import annotations

from pathlib import Path

from sim.commands.core import (
    Command,
    Session,
    UsageError,
    check_arity,
    parse_int,
    plural,
    split_line_or_keep,
)
from sim.commands.stats import StatsLog
from sim.persist import restore_simulation, save_simulation

__all__ = ["COMMANDS"]


def _log(s: Session, args: list[str]) -> None:
    check_arity(args, 1, 2)
    fmt = args[0].lower()
    if fmt == "off":
        check_arity(args, 1, 1)
        s.close()
        s.out("stats log off")
        return
    if fmt not in ("csv", "json"):
        raise UsageError(f"expected csv, json or off, got {args[0]!r}")
    check_arity(args, 2, 2)
    new_log = StatsLog(Path(args[1]), fmt)
    s.close()
    s.stats_log = new_log
    new_log.write(s.sim.stats())
    s.out(f"logging stats to {args[1]} ({fmt}) now and after every step")


def _save(s: Session, args: list[str]) -> None:
    check_arity(args, 1, 1)
    save_simulation(s.sim, Path(args[0]))
    s.out(f"saved step {s.sim.network.step} ({plural(len(s.sim.nodes), 'node')}) to {args[0]}")


def _restore(s: Session, args: list[str]) -> None:
    check_arity(args, 1, 1)
    if s.sim.network.backend != "deterministic":
        raise UsageError(f"the {s.sim.network.backend} backend does not support restore yet")
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
        f"{plural(len(s.sim.nodes), 'node')}, {plural(len(s.sim.groups), 'group')}"
    )


def _seed(s: Session, args: list[str]) -> None:
    check_arity(args, 1, 1)
    seed = parse_int(args[0], "N", 0, 2**63 - 1)
    s.sim.reseed(seed)
    s.out(f"network random stream reseeded with {seed}")


def _load(s: Session, args: list[str]) -> None:
    check_arity(args, 1, 1)
    path = Path(args[0])
    if not path.is_file():
        raise UsageError(f"no such file: {args[0]}")
    lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    kept = [ln for ln in lines if split_line_or_keep(ln)]
    s.queue.extendleft(reversed(kept))
    s.out(f"queued {plural(len(kept), 'line')} from {args[0]}")


COMMANDS: list[Command] = [
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
]

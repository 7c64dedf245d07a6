"""The command table: each family's commands in the order `help` lists them, and `help`, `quit`."""

from __future__ import annotations

from sim.commands import files, groups, learning, network, nodes, scenarios, stats
from sim.commands.core import Command, Session, UsageError, check_arity

__all__ = ["ALIASES", "COMMANDS", "find"]


def _help(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 1)
    if args:
        command = find(args[0].lower())
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
    check_arity(args, 0, 0)
    s.done = True


_SESSION_COMMANDS: list[Command] = [
    Command("help", "help [command]", "this list, or one command's help", _help, aliases=("?",)),
    Command("quit", "quit", "leave (also: exit, Ctrl-D)", _quit, aliases=("exit",)),
]

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        *learning.COMMANDS,
        *network.TOPOLOGY_COMMANDS,
        *groups.COMMANDS,
        *nodes.COMMANDS,
        *network.CONDITION_COMMANDS,
        *scenarios.COMMANDS,
        *stats.COMMANDS,
        *files.COMMANDS,
        *_SESSION_COMMANDS,
    ]
}
"""Every command by name, family by family, in the order `help` lists them."""

ALIASES: dict[str, str] = {alias: c.name for c in COMMANDS.values() for alias in c.aliases}
"""Other names a command answers to (``exit``, ``?``, ``neighbourhood``) -> its name."""


def find(name: str) -> Command | None:
    """The command called ``name`` (lower-case) or aliased so; None when there is none."""
    return COMMANDS.get(ALIASES.get(name, name))

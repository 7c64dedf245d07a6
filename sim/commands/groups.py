"""The `group` command: list, roster, create, add, remove, membership, share, train.

DEL-Step's spellings work too: `group G add N...` (group first, nodes as separate
words), and top-level aliases where the name is free: `list`, `roster`, `membership`,
`create`, `add`, `remove`. `share` and `train` are node commands at top level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from sim.commands.core import (
    Command,
    Session,
    UsageError,
    check_arity,
    format_nodes,
    format_table,
    parse_int,
    plural,
    sent_text,
)
from sim.scope import node_name

__all__ = ["COMMANDS"]


def _group_name(s: Session, token: str, *, exists: bool = True) -> str:
    name = token[1:] if token.startswith("@") else token
    if exists and name not in s.sim.groups:
        raise UsageError(f"no such group: {name}")
    return name


_SUBCOMMANDS = ("list", "roster", "create", "add", "remove", "membership", "share", "train")
# DEL-Step writes the group first: `group G add N...`, `group G share`, `group G train`.
_GROUP_FIRST = ("add", "remove", "share", "train", "roster")


def _group(s: Session, args: list[str]) -> None:
    if not args:
        raise UsageError("which group command?")
    sub, rest = args[0].lower(), args[1:]
    if sub not in _SUBCOMMANDS and rest and rest[0].lower() in _GROUP_FIRST:
        sub, rest = rest[0].lower(), [args[0], *rest[1:]]
    _run(s, sub, rest)


def _run(s: Session, sub: str, rest: list[str]) -> None:
    sim = s.sim
    if sub == "list":
        check_arity(rest, 0, 0)
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
        check_arity(rest, 1, 1)
        name = _group_name(s, rest[0])
        members = sim.roster(name)
        s.out(f"{name} ({plural(len(members), 'member')}): {format_nodes(members)}")
    elif sub == "create":
        check_arity(rest, 1, 1)
        name = _group_name(s, rest[0], exists=False)
        sim.create_group(name)
        s.out(f"created group {name}")
    elif sub in ("add", "remove"):
        if len(rest) < 2:
            raise UsageError(f"expected a group and nodes, got {len(rest)} arguments")
        name = _group_name(s, rest[0])
        ids = s.scope(",".join(rest[1:]))  # DEL-Step lists nodes as separate words
        if sub == "add":
            moved = sim.group_add(name, ids)
            s.out(f"{name}: added {format_nodes(moved)} ({plural(len(moved), 'node')})")
        else:
            gone = sim.group_remove(name, ids)
            s.out(f"{name}: removed {format_nodes(gone)} ({plural(len(gone), 'node')})")
    elif sub == "membership":
        check_arity(rest, 0, 1)
        ids = s.scope(rest[0] if rest else None)
        for line in format_table(
            ("node", "group"), [(node_name(i), sim.nodes[i].group or "-") for i in ids]
        ):
            s.out(line)
    elif sub == "share":
        check_arity(rest, 1, 1)
        name = _group_name(s, rest[0])
        before = replace(sim.network.counters)
        sent = sim.group_share(name)
        s.out(f"{name}: sent {sent_text(s, sent, before)} among {len(sim.groups[name])} members")
    elif sub == "train":
        check_arity(rest, 1, 2)
        name = _group_name(s, rest[0])
        epochs = parse_int(rest[1], "epochs", 0, 1000) if len(rest) == 2 else None
        if not sim.groups[name]:
            raise UsageError(f"group {name} has no members")
        from node.federation.strategies import set_flower_log_level  # Flower loads on first use

        set_flower_log_level(logging.WARNING)
        result = sim.group_train(name, epochs)
        s.out(
            f"{name} round {result.round} ({plural(len(result.members), 'member')}, "
            f"{sim.config.strategy}): val accuracy {result.val_accuracy:.4f}, "
            f"train loss {result.train_loss:.4f}"
        )
    else:
        raise UsageError(f"unknown group command {sub!r}")


def _alias(sub: str) -> Callable[[Session, list[str]], None]:
    def handler(s: Session, args: list[str]) -> None:
        _run(s, sub, args)

    return handler


_GROUP_HELP = (
    "A node is in at most one group: `group add` moves it from its old one. "
    "`group train` runs a Flower round among the members (node.federation.round); "
    "`group share` sends every member's model to every other member. DEL-Step's order "
    "works too: `group G add n1 n2`, `group G share`, `group G train`. Top-level "
    "aliases: list, roster, membership, create, add, remove; `share` and `train` are "
    "taken by the node commands, so write `group share G`, `group train G`."
)

# (name, usage, summary): DEL-Step's group commands where the top-level name is free.
_ALIASES = (
    ("list", "list", "the groups (alias of `group list`)"),
    ("roster", "roster NAME", "a group's members (alias of `group roster`)"),
    ("membership", "membership [scope]", "each node's group (alias of `group membership`)"),
    ("create", "create NAME", "a new group (alias of `group create`)"),
    ("add", "add NAME scope...", "put nodes in a group (alias of `group add`)"),
    ("remove", "remove NAME scope...", "take nodes out of a group (alias of `group remove`)"),
)

COMMANDS: list[Command] = [
    Command(
        "group",
        "group list | roster NAME | create NAME | add NAME scope... | "
        "remove NAME scope... | membership [scope] | share NAME | train NAME [epochs]",
        "groups (mirrored in the registry)",
        _group,
        _GROUP_HELP,
        words=_SUBCOMMANDS,
    ),
    *(
        Command(name, usage, summary, _alias(name), _GROUP_HELP)
        for name, usage, summary in _ALIASES
    ),
]

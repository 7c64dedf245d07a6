"""Tab completion of command lines: command names, subcommands, scopes, groups, paths."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from sim.commands.core import Session
from sim.commands.table import ALIASES, COMMANDS, find
from sim.scope import node_name

__all__ = ["complete"]

_FILE_ARGS = {"save", "restore", "load"}
_GROUP_NAME_WORDS = {"roster", "add", "remove", "share", "train"}
_GROUP_ALIASES = {"roster", "add", "remove"}  # top-level aliases whose first word is a group
_WORDS_ONLY = {"scenario", "topology"}  # their first word is a name, never a scope


def complete(session: Session, line: str, text: str) -> list[str]:
    """Completions for the word ``text`` at the end of ``line`` (what readline asks).

    Each ends as readline should leave it: a word with a space after it, a folder
    with a slash (Python's readline appends nothing itself).
    """
    before = line[: len(line) - len(text)].split()
    if not before:
        return _words([*COMMANDS, *ALIASES], text)
    command = find(before[0].lower())
    if command is None:
        return []
    name = command.name
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
    if name in _GROUP_ALIASES and len(before) == 1:
        return _words(session.sim.groups, text)
    if name in _WORDS_ONLY and len(before) == 1:
        return _words(command.words, text)
    if text.startswith("@"):
        options.extend(f"@{g}" for g in session.sim.groups)
    elif text.startswith("n") or text == "":
        options.append("all")
        options.extend(node_name(i) for i in session.sim.alive)
    return _words(options, text)


def _words(options: Iterable[str], text: str) -> list[str]:
    return [o + " " for o in sorted({o for o in options if o.startswith(text)})]

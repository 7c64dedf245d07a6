"""Argument types the benchmarks share: an integer with a lower bound, a comma list of
choices."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: ``text`` as an integer of at least ``minimum``, else an error
    naming it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive = at_least(1)
"""``text`` as an integer of at least 1, else an argparse error naming it."""


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type for a comma list of ``choices`` (named ``what`` in errors)."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(choices)}"
            )
        return names

    return parse


def check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Make ``out``'s folder and check that ``out`` is a file this user can write, before
    hours of runs rather than after them; else exit 2 through ``parser.error``."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {out}: cannot make its folder: {exc.strerror or exc}")
    if out.is_dir() or not os.access(out.parent, os.W_OK):
        parser.error(f"--out {out}: not a file this user can write")

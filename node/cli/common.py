"""What every command line shares: checking a flag's value against its choices."""

from __future__ import annotations

from collections.abc import Sequence

import typer

__all__ = ["one_of"]


def one_of(value: str, allowed: Sequence[str], flag: str) -> str:
    """``value`` when it is one of ``allowed``.

    Otherwise raises ``typer.BadParameter`` naming ``flag`` and the choices: the command
    exits with status 2 and ``Invalid value for '--flag': 'x' is not one of: a, b``.
    """
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of: {', '.join(allowed)}", param_hint=flag)
    return value

"""The interactive loop: a readline prompt with tab completion and history; scripts; `load`.

Lines queued by ``load`` (or a ``--script``) run before the prompt comes back; each
is echoed after the prompt, so a transcript reads the same typed or scripted.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from types import ModuleType

from sim.commands import Session, complete, split_line_or_keep

__all__ = ["HISTORY_FILE", "PROMPT", "run_repl", "run_script"]

log = logging.getLogger(__name__)

PROMPT = "sim> "
HISTORY_FILE = Path("~/.mycelium_sim_history")
HISTORY_LENGTH = 1000


def _drain(session: Session) -> None:
    """Run queued lines (from ``load`` or a script) until the queue is empty."""
    while session.queue and not session.done:
        line = session.queue.popleft()
        session.out(f"{PROMPT}{line}")
        session.execute(line)


def run_script(session: Session, path: Path | None = None) -> int:
    """Run a script's lines after what is queued already (``path`` None: only that);
    return 0, or 1 when any line failed."""
    lines: list[str] = []
    try:
        if path is not None:
            lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        session.out(f"error: cannot read script {path}: {exc}")
        return 1
    session.queue.extend(line for line in lines if split_line_or_keep(line))
    _drain(session)
    return 1 if session.errors else 0


def _setup_readline(session: Session, history: Path | None) -> ModuleType | None:
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:  # some platforms have none: plain input() still works
        return None
    matches: list[str] = []

    def completer(text: str, state: int) -> str | None:
        if state == 0:
            line = readline.get_line_buffer()[: readline.get_endidx()]
            matches[:] = complete(session, line, text)
        return matches[state] if state < len(matches) else None

    readline.set_completer(completer)
    readline.set_completer_delims(" \t\n")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    if history is not None:
        readline.set_history_length(HISTORY_LENGTH)
        with contextlib.suppress(OSError):  # no history yet
            readline.read_history_file(history)
    return readline


def run_repl(session: Session, history: Path | None = HISTORY_FILE) -> int:
    """Prompt, run, repeat until ``quit`` or end of input; returns 0."""
    history = history.expanduser() if history is not None else None
    readline = _setup_readline(session, history)
    try:
        while not session.done:
            if session.queue:
                _drain(session)
                continue
            try:
                line = input(PROMPT)
            except EOFError:
                session.out("")
                break
            except KeyboardInterrupt:
                session.out("^C")
                continue
            session.execute(line)
    finally:
        if readline is not None and history is not None:
            try:
                readline.write_history_file(history)
            except OSError as exc:
                log.warning("could not write the history to %s: %s", history, exc)
    return 0

"""The processes a process spawned with ``multiprocessing``'s spawn method, from /proc."""

from __future__ import annotations

import os
import select
from pathlib import Path


def spawned_children(pid: int) -> list[int]:
    """Children of ``pid`` (any of its threads) started by ``multiprocessing.spawn``
    (not its resource tracker)."""
    pids = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    pids.append(int(child))
            except OSError:
                continue  # gone meanwhile
    return pids


def wait_for_exit(pid: int, timeout: float = 120.0) -> bool:
    """Whether process ``pid`` (not a child of this one) ended within ``timeout`` s,
    waiting on its pidfd (an event, not polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)

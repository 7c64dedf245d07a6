"""Waiting for a process that is not this one's child to end."""

from __future__ import annotations

import os
import select


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

"""Push: follow the registry's event stream of one domain and wake a node's re-evaluation.

A node re-evaluates its group on a timer (polling). With the stream it also re-evaluates
as soon as something that could change its choice happens in its domain: another group's
new snapshot or performance, a membership change, a group created or archived. The timer
stays as the fallback: while the stream is down (reconnecting with backoff, resuming
after the last event seen), and for good when the registry cannot filter the stream
(an older registry: 4xx to ``domain=``/``types=``, or events without a domain).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from node.errors import RegistryRequestError, RegistryUnavailableError
from node.registry_client import EventPublic, RegistryClient

__all__ = ["WAKE_TYPES", "EventFollower", "wakes"]

log = logging.getLogger(__name__)

MEMBERSHIP_TYPES = frozenset(
    {"joined", "left", "migrated", "expired", "group_created", "group_archived"}
)
GROUP_STATE_TYPES = frozenset({"model_uploaded", "performance_reported"})
# The event types a node follows: those that can change which group is best for it.
WAKE_TYPES = MEMBERSHIP_TYPES | GROUP_STATE_TYPES


def wakes(event: EventPublic, *, node_id: str, group_id: int | None) -> bool:
    """Whether ``event`` should make node ``node_id`` (in group ``group_id``, or None)
    re-evaluate now: a membership change by another node anywhere in its domain, or a new
    snapshot or performance of another group. Its own moves and its own group's rounds
    (which it takes part in) do not."""
    if event.node_id == node_id:
        return False
    if event.type in MEMBERSHIP_TYPES:
        return True
    return event.type in GROUP_STATE_TYPES and event.group_id != group_id


class EventFollower:
    """Follows ``/events/stream?domain=<domain>&types=<WAKE_TYPES>`` and calls ``wake``
    with each event that ``wakes`` the node. ``run(stop)`` is a thread's body; it returns
    when ``stop`` is set or the registry cannot filter (polling alone from then on).

    ``retry_s`` is the first wait before reconnecting, doubled up to ``max_retry_s``.
    ``events`` counts the events received.
    """

    def __init__(
        self,
        client: RegistryClient,
        *,
        domain: str,
        node_id: str,
        group_id: Callable[[], int | None],
        wake: Callable[[EventPublic], None],
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        self.client, self.domain, self.node_id = client, domain, node_id
        self._group_id, self._wake = group_id, wake
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.events = 0
        self._down = False
        self.last_id: int | None = None  # the newest event seen; a reconnect resumes after it

    def run(self, stop: threading.Event) -> None:
        """Follow the stream until ``stop`` is set; reconnect after a drop."""
        wait = self.retry_s
        while not stop.is_set():
            try:
                if self.last_id is None:
                    self.last_id = self.client.events(latest=True, limit=1).last_id
                self._follow(stop)
                wait = self.retry_s  # a stream that ended cleanly: reconnect at once
                continue
            except RegistryRequestError as exc:
                log.warning(
                    "%s: the registry refuses to filter its event stream (%s); "
                    "re-evaluating on the timer only",
                    self.node_id, exc,
                )  # fmt: skip
                return
            except _Unfiltered:
                log.warning(
                    "%s: the registry's event stream ignores domain=; "
                    "re-evaluating on the timer only",
                    self.node_id,
                )
                return
            except RegistryUnavailableError as exc:
                if not self._down:
                    log.info("%s: event stream down (%s); polling meanwhile", self.node_id, exc)
                self._down = True
            except Exception:
                if stop.is_set():  # the client was closed under the stream at shutdown
                    return
                raise
            if stop.wait(wait):
                return
            wait = min(wait * 2, self.max_retry_s)

    def _follow(self, stop: threading.Event) -> None:
        stream = self.client.follow_events(
            after_id=self.last_id or 0, domain=self.domain, types=WAKE_TYPES
        )
        try:
            for event in stream:
                if stop.is_set():
                    return
                if event.domain != self.domain:
                    raise _Unfiltered
                if self._down:
                    log.info("%s: event stream back", self.node_id)
                    self._down = False
                self.last_id = event.id
                self.events += 1
                if wakes(event, node_id=self.node_id, group_id=self._group_id()):
                    self._wake(event)
        finally:
            stream.close()


class _Unfiltered(Exception):
    """The registry sent an event of another (or no) domain: it ignores the filter."""

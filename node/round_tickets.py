"""A host's check of its members' round tickets: who may join its group's Flower rounds.

The registry gives the group's current host the round key of its host epoch and each
current member a ticket (``registry.schemas.RoundTicket``). ``TicketGate`` admits a Flower
client whose ticket carries that key's MAC, names this group and epoch, has not expired,
and names a node in the group's membership as the host last fetched it (fetched again,
at most once a second, when a ticket names a node it does not know).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable, Collection

from node.errors import ConfigError, RegistryClientError, TicketRefused
from registry.schemas import RoundKey, open_round_ticket

__all__ = ["TicketGate"]

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 1.0


class TicketGate:
    """Admits the holders of valid round tickets of group ``group_id`` under ``key``.

    ``members()`` returns the group's current member ids (it may raise
    ``RegistryClientError``: the last known membership is kept). Thread-safe: gRPC calls
    ``admit`` from its own threads.
    """

    def __init__(
        self,
        key: RoundKey,
        members: Callable[[], Collection[str]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            self._key = base64.urlsafe_b64decode(key.key)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"group {key.group_id}'s round key is not base64: {exc}") from exc
        self.group_id = key.group_id
        self.host_epoch = key.host_epoch
        self._members_of = members
        self._clock = clock
        self._lock = threading.Lock()
        self._members: frozenset[str] = frozenset()
        self._fetched = float("-inf")  # monotonic time of the last fetch

    def set_members(self, members: Collection[str]) -> frozenset[str]:
        """Take ``members`` as the group's membership, as fetched just now."""
        known = frozenset(members)
        with self._lock:
            self._members, self._fetched = known, time.monotonic()
        return known

    def refresh(self) -> frozenset[str]:
        """Fetch the group's membership now; the known one if the registry cannot say."""
        try:
            return self.set_members(self._members_of())
        except RegistryClientError as exc:
            log.warning("group %s: membership unknown (%s); keeping the last", self.group_id, exc)
            return self.set_members(self._members)

    def admit(self, ticket: str | None) -> str:
        """The node id ``ticket`` admits; ``TicketRefused`` saying why when none."""
        if not ticket:
            raise TicketRefused(
                "no round ticket (ask the registry: POST /groups/{id}/round-ticket)"
            )
        try:
            claims = open_round_ticket(ticket, self._key)
        except ValueError as exc:
            raise TicketRefused(f"round ticket refused: {exc}") from exc
        who = f"node {claims.node_id!r}"
        if claims.group_id != self.group_id:
            raise TicketRefused(f"{who}'s ticket is for group {claims.group_id}")
        if claims.host_epoch != self.host_epoch:
            raise TicketRefused(
                f"{who}'s ticket is for host epoch {claims.host_epoch}, not {self.host_epoch}"
            )
        if claims.expires_at < self._clock():
            raise TicketRefused(f"{who}'s ticket has expired")
        with self._lock:
            members, fetched = self._members, self._fetched
        if claims.node_id not in members and time.monotonic() - fetched >= REFRESH_EVERY_S:
            members = self.refresh()  # it may have joined since the last fetch
        if claims.node_id not in members:
            raise TicketRefused(
                f"{who} is not a member of group {self.group_id}", authenticated=True
            )
        return claims.node_id

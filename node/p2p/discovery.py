"""Discovery by domain: find (or found) the domain's gossip group at the registry.

A gossip node needs only its domain. ``gossip_group_for`` asks the registry for the
domain's live groups whose ``mode`` is ``gossip`` (the registry's ``groups.mode``
field, set when a group is created), joins the oldest one with room, and when there is
none (or all are full) creates the next one, ``gossip-<domain>-<k>``, joining it in
the same request.

Races are settled by the registry. Two nodes that find no group both try to create the
same first free name; the registry keeps group names unique, so one gets the group and
the other a 409, looks again, and joins it. A join refused because the group filled up
meanwhile (409) moves on to the next group, or to creating one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from node.errors import ConflictError, RegistryClientError

__all__ = ["DEFAULT_GOSSIP_CAPACITY", "GOSSIP_MODE", "gossip_group_for", "gossip_group_name"]

GOSSIP_MODE = "gossip"
DEFAULT_GOSSIP_CAPACITY = 100
# Group names are at most 64 characters: "gossip-" + domain + "-" + k.
_MAX_DOMAIN_IN_NAME = 48


class _GroupInfo(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def archived(self) -> bool: ...
    @property
    def member_count(self) -> int: ...
    @property
    def max_capacity(self) -> int: ...


class DiscoveryRegistry(Protocol):
    """What discovery needs of the registry; ``node.registry_client.RegistryClient`` fits."""

    def list_groups(self, *, domain: str | None = None) -> Sequence[_GroupInfo]: ...
    def join(self, group_id: int) -> object: ...
    def create_group(
        self, name: str, domain: str, *, max_capacity: int = ..., join: bool = ..., mode: str = ...
    ) -> _GroupInfo: ...


def gossip_group_name(domain: str, k: int) -> str:
    """The ``k``-th (from 1) gossip group's name of ``domain``: ``gossip-<domain>-<k>``."""
    return f"gossip-{domain[:_MAX_DOMAIN_IN_NAME]}-{k}"


def gossip_group_for(
    registry: DiscoveryRegistry,
    domain: str,
    *,
    max_capacity: int = DEFAULT_GOSSIP_CAPACITY,
    attempts: int = 20,
) -> int:
    """Join ``domain``'s gossip group with room, or create one; return the group's id.

    ``registry`` acts as a node registered in ``domain`` (it joins as that node).
    Groups are tried oldest first; a created group takes ``max_capacity`` members
    (1..10000). Blocking (HTTP). Raises ``ValueError`` for a capacity out of range,
    ``RegistryClientError`` when ``attempts`` rounds of looking, joining and creating
    all lost a race (or a name stayed taken by another domain's group), and lets the
    registry's other errors (unreachable, forbidden, ...) through.
    """
    if not 1 <= max_capacity <= 10_000:
        raise ValueError(f"a gossip group's capacity must be 1..10000, got {max_capacity}")
    skipped: set[str] = set()  # names taken by groups we cannot see (another domain's)
    last_name = ""
    for _ in range(attempts):
        groups = [
            g
            for g in registry.list_groups(domain=domain)
            if g.mode == GOSSIP_MODE and not g.archived
        ]
        names = {g.name for g in groups}
        if last_name and last_name not in names:
            skipped.add(last_name)
        for group in sorted(groups, key=lambda g: g.id):
            if group.member_count >= group.max_capacity:
                continue
            try:
                registry.join(group.id)
            except ConflictError:  # it filled up since we looked
                continue
            return group.id
        k = 1
        while gossip_group_name(domain, k) in names or gossip_group_name(domain, k) in skipped:
            k += 1
        last_name = gossip_group_name(domain, k)
        try:
            created = registry.create_group(
                last_name, domain, max_capacity=max_capacity, join=True, mode=GOSSIP_MODE
            )
        except ConflictError:  # another node created it first (or the name is taken)
            continue
        return created.id
    raise RegistryClientError(
        f"could not join or create a gossip group of domain '{domain}' in {attempts} attempts"
    )

"""Scopes, as pure functions: which nodes a command acts on (`all`, `n1,n3`, `0-4`, `@group`).

A scope is one token without spaces. Its comma-separated parts are unioned:

- ``all`` or ``*``: every live node;
- ``n3``, ``n003`` or ``3``: one node;
- ``n0-n4`` or ``0-4``: a range, both ends included;
- ``@name``: the members of a group.

``parse_scope`` checks the syntax; ``resolve_scope`` turns a scope into node ids and
fails on nodes or groups that do not exist, so a command can refuse before it acts.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

__all__ = [
    "ALL",
    "GROUP_NAME_PATTERN",
    "Scope",
    "ScopeError",
    "is_node_token",
    "node_name",
    "parse_node",
    "parse_scope",
    "resolve_scope",
]

ALL = "all"
_ALL_TOKENS = frozenset({ALL, "*"})
GROUP_PREFIX = "@"
GROUP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_NODE = re.compile(r"^n?(\d{1,9})$")
_RANGE = re.compile(r"^n?(\d{1,9})-n?(\d{1,9})$")
NAME_WIDTH = 3


class ScopeError(ValueError):
    """A scope that does not parse, or names nodes or groups that do not exist."""


@dataclass(frozen=True)
class Scope:
    """A parsed scope: everything, or a union of nodes, ranges and groups."""

    everything: bool = False
    nodes: tuple[int, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    groups: tuple[str, ...] = ()


def node_name(index: int) -> str:
    """The printed id of node ``index``: ``n000``, ``n042``, ``n1000``."""
    return f"n{index:0{NAME_WIDTH}d}"


def parse_node(token: str) -> int:
    """One node id (``n3``, ``n003`` or ``3``) to its index."""
    match = _NODE.match(token.strip())
    if not match:
        raise ScopeError(f"not a node id: {token!r} (write n3, n003 or 3)")
    return int(match.group(1))


def is_node_token(token: str) -> bool:
    """Whether ``token`` is written like one node id."""
    return bool(_NODE.match(token))


def parse_scope(text: str) -> Scope:
    """Parse one scope token; raises ScopeError on bad syntax."""
    text = text.strip()
    if not text:
        raise ScopeError("empty scope")
    nodes: list[int] = []
    ranges: list[tuple[int, int]] = []
    groups: list[str] = []
    everything = False
    for part in text.split(","):
        if not part:
            raise ScopeError(f"empty part in scope {text!r}")
        if part in _ALL_TOKENS:
            everything = True
        elif part.startswith(GROUP_PREFIX):
            name = part[len(GROUP_PREFIX) :]
            if not GROUP_NAME_PATTERN.match(name):
                raise ScopeError(f"not a group name: {part!r}")
            groups.append(name)
        elif match := _RANGE.match(part):
            lo, hi = int(match.group(1)), int(match.group(2))
            if lo > hi:
                raise ScopeError(f"empty range {part!r}: {lo} > {hi}")
            ranges.append((lo, hi))
        else:
            nodes.append(parse_node(part))
    return Scope(everything, tuple(nodes), tuple(ranges), tuple(groups))


def resolve_scope(
    scope: Scope, alive: Collection[int], groups: Mapping[str, Collection[int]]
) -> list[int]:
    """The sorted live node ids ``scope`` names.

    Single nodes and groups must exist; ranges take the live nodes inside them (so
    ``0-999`` works after removals) but must contain at least one.
    """
    if scope.everything:
        return sorted(alive)
    chosen: set[int] = set()
    missing = [node_name(n) for n in scope.nodes if n not in alive]
    if missing:
        raise ScopeError(f"no such node: {', '.join(missing)}")
    chosen.update(scope.nodes)
    alive_set = set(alive)
    for lo, hi in scope.ranges:
        inside = {n for n in alive_set if lo <= n <= hi}
        if not inside:
            raise ScopeError(f"no live node in {node_name(lo)}-{node_name(hi)}")
        chosen.update(inside)
    for name in scope.groups:
        if name not in groups:
            raise ScopeError(f"no such group: {name}")
        chosen.update(n for n in groups[name] if n in alive_set)
    return sorted(chosen)

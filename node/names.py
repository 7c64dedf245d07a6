"""The names a node gives itself, checked here with the registry's own patterns, so a bad one
fails on this machine with a message naming it instead of as a 422 from the registry (or, for
a node id, as a file name outside the credential store)."""

from __future__ import annotations

import re

from node.errors import ConfigError
from registry.schemas import DOMAIN_PATTERN, NODE_ID_PATTERN

__all__ = ["check_domain", "check_node_id"]

_NODE_ID = re.compile(NODE_ID_PATTERN)
_DOMAIN = re.compile(DOMAIN_PATTERN)


def check_node_id(node_id: object) -> str:
    """``node_id`` unchanged when the registry accepts it (``registry.schemas.NODE_ID_PATTERN``:
    1-128 letters, digits and ``. _ : @ -``, starting with a letter or digit); raises
    ``ConfigError`` naming it otherwise."""
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise ConfigError(
            f"node id {node_id!r} is not valid: use 1-128 letters, digits and . _ : @ -, "
            "starting with a letter or digit"
        )
    return node_id


def check_domain(domain: object) -> str:
    """``domain`` unchanged when the registry accepts it (``registry.schemas.DOMAIN_PATTERN``);
    raises ``ConfigError`` naming it otherwise."""
    if not isinstance(domain, str) or not _DOMAIN.fullmatch(domain):
        raise ConfigError(
            f"domain {domain!r} is not valid: it must match {DOMAIN_PATTERN} "
            "(e.g. 'digits' or 'fashion')"
        )
    return domain

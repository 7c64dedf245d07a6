"""Every error a node can meet, rooted at ``NodeError``.

::

    NodeError
     ├── ConfigError                  a configuration file, value or flag is invalid (names the key)
     ├── DatasetError
     │    ├── DatasetUnavailableError a data set's files are missing from this machine
     │    └── DatasetFormatError      a data set's files are not what they claim to be
     ├── RemoteInputError             input from another party that cannot be used: skip it
     │    ├── SerializationError      bytes that do not decode as weights
     │    ├── WeightsMismatchError    weights that do not fit a model (count, shapes)
     │    ├── NonFiniteWeightsError   weights holding NaN or infinity
     │    ├── FrameError              a peer frame: oversized, malformed, of another version
     │    ├── FrameAuthError          a peer frame whose signature, sender or freshness fails
     │    └── TicketRefused           a Flower client whose round ticket does not admit it
     ├── TransportError               a peer or a group's host could not be reached
     │    ├── PeerUnreachableError    no connection, or no answer in time
     │    └── PeerRefusedError        a peer refused this node's frame (its signature failed there)
     ├── RegistryClientError          the registry could not serve a call
     │    ├── RegistryUnavailableError  unreachable or 5xx after retries (or at once, for a
     │    │                             call not safe to repeat: 502/504/timeout)
     │    └── RegistryRequestError      the registry answered 4xx/5xx (status, detail)
     │         ├── UnauthorizedError    401: missing or unknown token
     │         ├── ForbiddenError       403: not allowed
     │         ├── NotFoundError        404
     │         └── ConflictError        409: full group, name taken, stale round
     ├── ListenError                  this node cannot serve where told (port taken, bad cert)
     ├── SessionError
     │    └── SessionEnded            a member leaves its group's federation (migration, shutdown)
     └── FlowerCompatError            the installed Flower moved an internal this code relies on

A loop that handles input from elsewhere (a snapshot, a frame, a Flower reply, a
registry answer) catches ``RemoteInputError`` (and ``RegistryClientError`` or
``TransportError`` for the call that fetched it), logs the cause and skips the input:
one stranger's bad bytes never end a node's process.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "ConflictError",
    "DatasetError",
    "DatasetFormatError",
    "DatasetUnavailableError",
    "FlowerCompatError",
    "ForbiddenError",
    "FrameAuthError",
    "FrameError",
    "ListenError",
    "NodeError",
    "NonFiniteWeightsError",
    "NotFoundError",
    "PeerRefusedError",
    "PeerUnreachableError",
    "RegistryClientError",
    "RegistryRequestError",
    "RegistryUnavailableError",
    "RemoteInputError",
    "SerializationError",
    "SessionEnded",
    "SessionError",
    "TicketRefused",
    "TransportError",
    "UnauthorizedError",
    "WeightsMismatchError",
]


class NodeError(Exception):
    """Base class of every error the node package raises on purpose."""


class ConfigError(NodeError):
    """A configuration file, value or flag is invalid; the message names the key."""


class DatasetError(NodeError):
    """A data set cannot be loaded."""


class DatasetUnavailableError(DatasetError):
    """A data set's files are missing from this machine."""


class DatasetFormatError(DatasetError):
    """A data set's file exists but does not have the expected format."""


class RemoteInputError(NodeError):
    """Input from another node, peer or the registry that cannot be used as it is."""


class SerializationError(RemoteInputError):
    """A weights blob is corrupt or not a weights blob at all."""


class WeightsMismatchError(RemoteInputError):
    """A list of weights does not fit a model's parameters (count or shapes)."""


class NonFiniteWeightsError(RemoteInputError):
    """Weights hold NaN or infinite values."""


class FrameError(RemoteInputError):
    """A frame that cannot be accepted: oversized, not msgpack, wrong version or shape."""


class FrameAuthError(RemoteInputError):
    """A frame that does not prove its sender: bad signature, unknown sender, stale or replayed.

    ``reason`` is the short name it is counted under (``bad_signature``, ``unknown_sender``,
    ``stale``, ``replayed``, ``scheme``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TicketRefused(RemoteInputError):
    """A Flower client's round ticket does not admit it to the group's rounds.

    ``authenticated`` is False when the ticket itself is missing or invalid (answered with
    gRPC UNAUTHENTICATED), True when it is valid but its node is no current member of the
    group (PERMISSION_DENIED).
    """

    def __init__(self, reason: str, *, authenticated: bool = False) -> None:
        super().__init__(reason)
        self.authenticated = authenticated


class ListenError(NodeError):
    """This node cannot serve where it was told to: the port is taken, or TLS is unusable."""


class TransportError(NodeError):
    """A peer or a group's host could not be reached."""


class PeerUnreachableError(TransportError):
    """A peer could not be connected to, or did not answer in time."""


class PeerRefusedError(TransportError):
    """A peer refused this node's frame: its signature, sender or timestamp failed there."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RegistryClientError(NodeError):
    """The registry could not serve a call."""


class RegistryUnavailableError(RegistryClientError):
    """The registry could not be reached (after retries)."""


class RegistryRequestError(RegistryClientError):
    """The registry refused the request: ``status`` and the registry's ``detail``."""

    def __init__(self, status: int, detail: Any, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status = status
        self.detail = detail


class UnauthorizedError(RegistryRequestError):
    """401: the token is missing or unknown."""


class ForbiddenError(RegistryRequestError):
    """403: the caller may not do this."""


class NotFoundError(RegistryRequestError):
    """404: no such node, group or snapshot."""


class ConflictError(RegistryRequestError):
    """409: a full group, a taken name, a stale round."""


class SessionError(NodeError):
    """A node's part in a group's federation cannot go on."""


class SessionEnded(SessionError):
    """Raised inside a member's client to leave a group's federation (migration, shutdown)."""


class FlowerCompatError(NodeError):
    """The installed Flower no longer offers an internal this code relies on."""

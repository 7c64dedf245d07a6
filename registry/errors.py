"""Registry domain errors; the route layer turns them into HTTP responses.

RegistryError
 ├── NotFoundError        404 - no such node, group or model
 ├── AuthError            401 - missing or invalid token
 ├── ForbiddenError       403 - authenticated, but not allowed (other node, not a member)
 ├── ConflictError        409 - full group, name taken, stale model round
 └── InvalidError         422 - well-formed but meaningless (wrong domain, archived group)
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConflictError",
    "ForbiddenError",
    "InvalidError",
    "NotFoundError",
    "RegistryError",
]


class RegistryError(Exception):
    """Base of every registry error; `status` is the HTTP status it maps to."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFoundError(RegistryError):
    """The thing asked for does not exist."""

    status = 404


class AuthError(RegistryError):
    """No valid bearer token was given."""

    status = 401


class ForbiddenError(RegistryError):
    """The caller may not do this."""

    status = 403


class ConflictError(RegistryError):
    """The request clashes with the current state."""

    status = 409


class InvalidError(RegistryError):
    """The request is well-formed but not valid for this state."""

    status = 422

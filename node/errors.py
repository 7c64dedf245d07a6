"""Exceptions raised by the node package, rooted at ``NodeError``.

::

    NodeError
     ├── DatasetUnavailableError   a data set's files are missing
     ├── DatasetFormatError        a data set's files are not what they claim to be
     ├── WeightsMismatchError      weights do not fit a model (count or shapes)
     └── SerializationError        a weights blob cannot be decoded
"""

__all__ = [
    "DatasetFormatError",
    "DatasetUnavailableError",
    "NodeError",
    "SerializationError",
    "WeightsMismatchError",
]


class NodeError(Exception):
    """Base class of every error the node package raises on purpose."""


class DatasetUnavailableError(NodeError):
    """A data set's files are missing from this machine."""


class DatasetFormatError(NodeError):
    """A data set's file exists but does not have the expected format."""


class WeightsMismatchError(NodeError):
    """A list of weights does not fit a model's parameters."""


class SerializationError(NodeError):
    """A weights blob is corrupt or not a weights blob at all."""

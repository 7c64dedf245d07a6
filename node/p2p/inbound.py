"""What a P2P or gossip node accepts from a stranger: bounded decoding, counts, age claims.

Each check raises a ``RemoteInputError``; the caller skips the input, logs one line and
counts it under a reason (``note_refusal``), so a ``RoundReport`` or ``GossipStats``
says how many inputs were refused and why:

- ``malformed``: bytes that do not decode as an update (or ask for too much),
- ``shape``: an update that does not fit the receiver's model,
- ``non_finite``: NaN or infinite values,
- ``example_count``: an example count outside ``[1, max_example_count]``,
- ``age``: an age claim that is not a count,
- ``domain``: a gossip message from another domain.
"""

from __future__ import annotations

import logging

from node.errors import (
    NonFiniteWeightsError,
    RemoteInputError,
    SerializationError,
    WeightsMismatchError,
)
from node.learning.weights import Weights, WeightsSignature, check_count, check_weights
from node.p2p.codecs import Codec, EncodedUpdate

__all__ = [
    "DEFAULT_MAX_AGE_JUMP",
    "DEFAULT_MAX_EXAMPLE_COUNT",
    "REFUSED_AGE",
    "REFUSED_DOMAIN",
    "REFUSED_EXAMPLE_COUNT",
    "REFUSED_MALFORMED",
    "REFUSED_NON_FINITE",
    "REFUSED_SHAPE",
    "bounded_age",
    "check_example_count",
    "decode_update",
    "note_refusal",
    "refusal_reason",
]

logger = logging.getLogger(__name__)

REFUSED_MALFORMED = "malformed"
REFUSED_SHAPE = "shape"
REFUSED_NON_FINITE = "non_finite"
REFUSED_EXAMPLE_COUNT = "example_count"
REFUSED_AGE = "age"
REFUSED_DOMAIN = "domain"

# Bigger than any share of the bundled data sets (Fashion-MNIST has 70,000 examples).
DEFAULT_MAX_EXAMPLE_COUNT = 100_000
# Honest gossip ages in one group stay within a few merges of each other.
DEFAULT_MAX_AGE_JUMP = 20


def decode_update(codec: Codec, payload: bytes, signature: WeightsSignature) -> Weights:
    """A stranger's encoded update as arrays that fit ``signature`` and are all finite.

    ``payload``: ``EncodedUpdate.to_bytes()`` output. Nothing larger than the receiver's
    own model is allocated (see ``codecs.check_records``). Raises ``SerializationError``,
    ``WeightsMismatchError`` or ``NonFiniteWeightsError``.
    """
    try:
        encoded = EncodedUpdate.from_bytes(payload, signature)
        return check_weights(codec.decode(encoded, signature), signature)
    except RemoteInputError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        # The records were checked before decoding; this is the net under those checks,
        # so a stranger's bytes end in a refusal, never in the receiver's crash.
        raise SerializationError(f"Update does not decode: {type(exc).__name__}: {exc}") from exc


def check_example_count(value: object, max_count: int) -> int:
    """``value`` as an example count in ``[1, max_count]``; else ``RemoteInputError``.

    A count of 0 would make an update weightless (or, alone, undefined); one far beyond
    any honest share would let its sender take over a weighted mean.
    """
    try:
        count = check_count(value, what="example count")
    except (TypeError, OverflowError) as exc:  # an integer too large for numpy to inspect
        raise RemoteInputError(f"example count {value!r} is not a usable count") from exc
    if not 1 <= count <= max_count:
        raise RemoteInputError(f"example count {count} is outside [1, {max_count}]")
    return count


def bounded_age(claim: int, own_age: int, max_jump: int) -> int:
    """A peer's age claim, clamped to at most ``own_age + max_jump`` (all counts >= 0).

    An age weighs a model in gossip's merge; a claim far above one's own would let a
    stranger's model replace it. A model of age 0 has learnt nothing, so a node of age
    0 still adopts any older model whole.
    """
    return min(claim, own_age + max_jump)


def refusal_reason(exc: RemoteInputError) -> str:
    """The reason an update that raised ``exc`` while decoding is counted under."""
    if isinstance(exc, NonFiniteWeightsError):
        return REFUSED_NON_FINITE
    if isinstance(exc, WeightsMismatchError):
        return REFUSED_SHAPE
    return REFUSED_MALFORMED


def note_refusal(
    refused: dict[str, int], reason: str, *, receiver: str, sender: str, error: object
) -> None:
    """Count one refused input under ``reason`` and log it on one line."""
    refused[reason] = refused.get(reason, 0) + 1
    logger.warning("%s refused input from %s (%s): %s", receiver, sender, reason, error)

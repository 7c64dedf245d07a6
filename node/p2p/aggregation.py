"""How a peer combines models or updates: the (weighted) mean, or a robust median or trimmed mean.

``aggregate`` is the one switch between ``learning.merge``'s functions that P2P rounds
and gossip's robust mode share; ``p2p.aggregation`` and ``gossip.aggregation`` in the
peer config name its modes. The mean reads example counts (and gossip's is weighted by
age); the robust modes read none, since counts are claims a stranger can inflate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from node.learning.merge import coordinate_median, trimmed_mean, weighted_mean

__all__ = [
    "AGGREGATIONS",
    "MEAN",
    "MEDIAN",
    "TRIMMED_MEAN",
    "Aggregation",
    "aggregate",
    "check_aggregation",
]

Aggregation = Literal["mean", "median", "trimmed_mean"]
MEAN = "mean"
MEDIAN = "median"
TRIMMED_MEAN = "trimmed_mean"
AGGREGATIONS: tuple[str, ...] = (MEAN, MEDIAN, TRIMMED_MEAN)


def check_aggregation(aggregation: str, trim_fraction: float) -> None:
    """Raise ``ValueError`` unless ``aggregation`` is a mode and ``trim_fraction`` in [0, 0.5)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")


def aggregate(
    models: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float] | None,
    aggregation: str = MEAN,
    trim_fraction: float = 0.2,
) -> list[np.ndarray]:
    """Combine K models (or updates) tensor by tensor with the chosen ``aggregation``.

    ``models``: K lists of arrays of equal shapes. ``mean``: ``weighted_mean`` with
    ``weights`` (equal when None). ``median``: ``coordinate_median``. ``trimmed_mean``:
    ``trimmed_mean`` with ``trim_fraction`` (at least one value cut per side once
    K >= 3). ``weights`` are ignored by both robust modes. Shapes and dtypes are kept.
    Raises ``ValueError`` (unknown mode, bad fraction or weights, no models) and
    ``WeightsMismatchError`` (shapes differ).
    """
    check_aggregation(aggregation, trim_fraction)
    if aggregation == MEDIAN:
        return coordinate_median(models)
    if aggregation == TRIMMED_MEAN:
        return trimmed_mean(models, trim_fraction)
    return weighted_mean(models, weights)

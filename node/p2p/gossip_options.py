"""Small value objects that choose a gossip member's topology and merge, by the field's names.

``GossipNode(topology=..., aggregation=...)`` takes these in place of its loose keyword
arguments: ``CyclonTopology(view_size, shuffle_length)`` (a partial view kept fresh by
Cyclon shuffles) or ``RandomTopology()`` (every known member of the group, re-read from the
registry's roster; no shuffles); ``FedAvg()`` (the age-weighted mean of one's own model and
the received one), ``Median(buffer_size)`` or ``TrimmedMean(trim_fraction, buffer_size)``
(coordinate-wise over the last models of ``buffer_size`` senders: robust to a wild peer).
"""

from __future__ import annotations

from dataclasses import dataclass

from node.p2p.aggregation import MEAN, MEDIAN, TRIMMED_MEAN, check_aggregation

__all__ = [
    "Aggregation",
    "CyclonTopology",
    "FedAvg",
    "Median",
    "RandomTopology",
    "Topology",
    "TrimmedMean",
]


@dataclass(frozen=True)
class CyclonTopology:
    """Cyclon peer sampling: a view of ``view_size`` peers, ``shuffle_length`` swapped a cycle."""

    view_size: int = 4
    shuffle_length: int = 2

    def __post_init__(self) -> None:
        if self.view_size < 1 or not 1 <= self.shuffle_length <= self.view_size:
            raise ValueError(
                "CyclonTopology needs view_size >= 1 and 1 <= shuffle_length <= view_size, "
                f"got view_size={self.view_size}, shuffle_length={self.shuffle_length}"
            )


@dataclass(frozen=True)
class RandomTopology:
    """Send to a uniformly random member among all known ones (up to ``max_peers``).

    Without Cyclon's shuffles the member learns of others from the registry's roster
    (read on the first cycle, then every ``report_every`` cycles) and from the bootstrap
    peers it was given.
    """

    max_peers: int = 64

    def __post_init__(self) -> None:
        if self.max_peers < 1:
            raise ValueError(f"RandomTopology needs max_peers >= 1, got {self.max_peers}")


Topology = CyclonTopology | RandomTopology


@dataclass(frozen=True)
class FedAvg:
    """Gossip's mean: one's own model and the received one, weighted by their ages."""

    @property
    def mode(self) -> str:
        """The ``aggregation`` name ``node.p2p.aggregation`` uses."""
        return MEAN


@dataclass(frozen=True)
class Median:
    """Coordinate-wise median of one's own model and the last of ``buffer_size`` senders."""

    buffer_size: int = 4

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError(f"Median needs buffer_size >= 1, got {self.buffer_size}")

    @property
    def mode(self) -> str:
        """The ``aggregation`` name ``node.p2p.aggregation`` uses."""
        return MEDIAN


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise mean without the ``trim_fraction`` highest and lowest values a side."""

    trim_fraction: float = 0.2
    buffer_size: int = 4

    def __post_init__(self) -> None:
        check_aggregation(TRIMMED_MEAN, self.trim_fraction)
        if self.buffer_size < 1:
            raise ValueError(f"TrimmedMean needs buffer_size >= 1, got {self.buffer_size}")

    @property
    def mode(self) -> str:
        """The ``aggregation`` name ``node.p2p.aggregation`` uses."""
        return TRIMMED_MEAN


Aggregation = FedAvg | Median | TrimmedMean

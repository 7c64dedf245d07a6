"""Flower's aggregation strategies by name, for both of Flower's APIs, and Flower's logger.

The message API (``flwr.serverapp.strategy``) drives the in-process transport; the
legacy API (``flwr.server.strategy``) drives the gRPC link between node processes.
Both offer the same four strategies under the same names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from flwr.common import Scalar
from flwr.server import strategy as legacy
from flwr.serverapp import strategy as message

from node.federation.keys import ARRAYS_KEY, CONFIG_KEY, NUM_EXAMPLES_KEY

__all__ = [
    "FEDAVG",
    "FLOWER_LOGGER_NAME",
    "STRATEGY_NAMES",
    "check_strategy",
    "make_legacy_strategy",
    "make_strategy",
    "set_flower_log_level",
]

FLOWER_LOGGER_NAME = "flwr"

FEDAVG = "fedavg"
FEDMEDIAN = "fedmedian"
FEDTRIMMEDAVG = "fedtrimmedavg"
KRUM = "krum"
STRATEGY_NAMES: tuple[str, ...] = (FEDAVG, FEDMEDIAN, FEDTRIMMEDAVG, KRUM)

_MESSAGE: dict[str, type[message.FedAvg]] = {
    FEDAVG: message.FedAvg,
    FEDMEDIAN: message.FedMedian,
    FEDTRIMMEDAVG: message.FedTrimmedAvg,
    KRUM: message.Krum,
}
_LEGACY: dict[str, type[legacy.FedAvg]] = {
    FEDAVG: legacy.FedAvg,
    FEDMEDIAN: legacy.FedMedian,
    FEDTRIMMEDAVG: legacy.FedTrimmedAvg,
    KRUM: legacy.Krum,
}


def check_strategy(name: str) -> str:
    """``name`` when it names a strategy; else ``ValueError`` listing the valid names."""
    if name not in STRATEGY_NAMES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    return name


def set_flower_log_level(level: int = logging.WARNING) -> None:
    """Set the level of Flower's own logger, which logs about ten INFO lines per round.

    This is process-wide, so it is the caller's (runtime's, CLI's) choice, never done
    implicitly by a round.
    """
    logging.getLogger(FLOWER_LOGGER_NAME).setLevel(level)


def make_strategy(
    name: str, num_nodes: int, options: Mapping[str, Any] | None = None
) -> message.Strategy:
    """The message-API strategy ``name``, training on all ``num_nodes`` nodes.

    ``options`` go to the strategy's constructor (e.g. ``beta`` for fedtrimmedavg,
    ``num_malicious_nodes`` for krum). Raises ``ValueError`` for an unknown name.
    """
    kwargs: dict[str, Any] = {
        "min_train_nodes": num_nodes,
        "min_evaluate_nodes": num_nodes,
        "min_available_nodes": num_nodes,
        "weighted_by_key": NUM_EXAMPLES_KEY,
        "arrayrecord_key": ARRAYS_KEY,
        "configrecord_key": CONFIG_KEY,
    }
    kwargs.update(options or {})
    return _MESSAGE[check_strategy(name)](**kwargs)


def make_legacy_strategy(
    name: str,
    config: Callable[[int], dict[str, Scalar]],
    options: Mapping[str, Any] | None = None,
) -> legacy.Strategy:
    """The legacy strategy ``name`` over every connected client, tolerating failures.

    ``config(round)`` is sent with each fit and evaluate instruction. Raises
    ``ValueError`` for an unknown name.
    """
    kwargs: dict[str, Any] = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 1.0,
        "min_fit_clients": 1,
        "min_evaluate_clients": 1,
        "min_available_clients": 1,
        "accept_failures": True,
        "on_fit_config_fn": config,
        "on_evaluate_config_fn": config,
    }
    kwargs.update(options or {})
    return _LEGACY[check_strategy(name)](**kwargs)

"""Flower's gRPC runtime between processes: a group's server (its host) and a member's client.

This is the one module on Flower's legacy gRPC ("grpc-bidi") path, the transport that
``flwr.server.start_server`` and ``flwr.client.start_client`` are built on. Messages
go over one long-lived gRPC stream per client and are handled by a ``NumPyClient`` in
the member's own process, so a round costs milliseconds; the SuperLink/SuperNode
runtime starts a fresh ClientApp process per message (about 9 s per phase here).

``start_server`` itself is not used: it installs SIGINT/SIGTERM handlers (so it only
runs in a process's main thread and takes over the node's own shutdown) and runs a
fixed number of rounds. A group's host needs one round at a time, starting from the
registry's snapshot and uploading after each, so ``GroupServer`` assembles the same
parts ``start_server`` does: ``start_grpc_server`` (internal), a public
``SimpleClientManager`` and ``Server.fit_round``/``evaluate_round``.
``check_legacy_compat`` fails loudly when a Flower upgrade moves them.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import grpc
import numpy as np
from flwr.client import NumPyClient
from flwr.common import Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Server, SimpleClientManager
from flwr.server.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

from node.errors import FlowerCompatError, SessionEnded
from node.federation.inprocess import FLOWER_LOGGER_NAME

__all__ = [
    "ACCURACY_KEY",
    "GROUP_ID_KEY",
    "LEGACY_STRATEGIES",
    "LOCAL_EPOCHS_KEY",
    "ROUND_KEY",
    "EvaluateOutcome",
    "FitOutcome",
    "FlowerCompatError",
    "GroupServer",
    "RpcError",
    "SessionEnded",
    "check_legacy_compat",
    "make_legacy_strategy",
    "run_client",
]

log = logging.getLogger(__name__)

# Keys of the config a host sends with every instruction, and of the metrics sent back.
ROUND_KEY = "round"
GROUP_ID_KEY = "group-id"
LOCAL_EPOCHS_KEY = "local-epochs"
ACCURACY_KEY = "accuracy"
TRAIN_LOSS_KEY = "train-loss"

LEGACY_STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}
_WAIT_STEP = 0.05


class _QuietLegacy(logging.Filter):
    """Drops the expected noise: Flower's per-connection deprecation notice, the traceback
    of a client leaving by SessionEnded, and gRPC's of streams closed by ``stop()``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "start_client() is deprecated" in message or "metrics_aggregation_fn" in message:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SessionEnded) and type(exc).__name__ != "GrpcBridgeClosed"


_quiet_once = threading.Lock()
_quiet_installed = False


def _install_quiet_filter() -> None:
    global _quiet_installed
    with _quiet_once:
        if not _quiet_installed:
            for name in (FLOWER_LOGGER_NAME, "grpc._server"):
                logging.getLogger(name).addFilter(_QuietLegacy())
            _quiet_installed = True


def _weighted_accuracy(pairs: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    total = sum(n for n, _ in pairs)
    if not total:
        return {}
    acc = sum(n * float(m.get(ACCURACY_KEY, 0.0)) for n, m in pairs) / total
    return {ACCURACY_KEY: acc}


def make_legacy_strategy(
    name: str,
    config: Callable[[int], dict[str, Scalar]],
    options: Mapping[str, Any] | None = None,
) -> Strategy:
    """A legacy Flower strategy over every connected client that tolerates failures.

    ``config(round)`` is sent with each fit and evaluate instruction.
    """
    if name not in LEGACY_STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(LEGACY_STRATEGIES)}")
    kwargs: dict[str, Any] = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 1.0,
        "min_fit_clients": 1,
        "min_evaluate_clients": 1,
        "min_available_clients": 1,
        "accept_failures": True,
        "on_fit_config_fn": config,
        "on_evaluate_config_fn": config,
        "evaluate_metrics_aggregation_fn": _weighted_accuracy,
    }
    kwargs.update(options or {})
    return LEGACY_STRATEGIES[name](**kwargs)


@dataclass(frozen=True)
class FitOutcome:
    """One training phase: the aggregated weights (None when no client answered)."""

    weights: list[np.ndarray] | None
    clients: int
    failures: int
    seconds: float


@dataclass(frozen=True)
class EvaluateOutcome:
    """One evaluation phase: example-weighted accuracy of the members that answered."""

    accuracy: float | None
    clients: int
    failures: int
    seconds: float


class GroupServer:
    """A group's Flower server, listening on ``listen`` (``host:port``) until ``stop()``.

    Safe to drive from any thread. Each phase waits at most ``round_timeout`` seconds
    for a member: one that died or hangs is counted as a failure, not waited for.
    """

    def __init__(
        self,
        listen: str,
        *,
        strategy: str = "fedavg",
        strategy_options: Mapping[str, Any] | None = None,
        round_timeout: float = 30.0,
    ) -> None:
        from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

        if strategy not in LEGACY_STRATEGIES:
            raise ValueError(
                f"Unknown strategy {strategy!r}; choose one of {', '.join(LEGACY_STRATEGIES)}"
            )
        self.listen = listen
        self.strategy = strategy
        self.strategy_options = dict(strategy_options or {})
        self.round_timeout = round_timeout
        _install_quiet_filter()
        self._manager = SimpleClientManager()
        self._grpc = start_grpc_server(client_manager=self._manager, server_address=listen)
        self._stopped = False

    @property
    def connected(self) -> int:
        """Clients connected right now."""
        return self._manager.num_available()

    def wait_for_clients(
        self, wanted: int, timeout: float, stop: threading.Event | None = None
    ) -> int:
        """Wait until ``wanted`` clients are connected (or ``timeout``); returns how many are."""
        deadline = time.monotonic() + timeout
        while self.connected < wanted and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            time.sleep(_WAIT_STEP)
        return self.connected

    def _server(self, config: dict[str, Scalar]) -> Server:
        strategy = make_legacy_strategy(
            self.strategy, lambda r: {**config, ROUND_KEY: r}, self.strategy_options
        )
        return Server(client_manager=self._manager, strategy=strategy)

    def fit(
        self, weights: list[np.ndarray], round_: int, config: Mapping[str, Scalar]
    ) -> FitOutcome:
        """Send ``weights`` to every connected member to train; aggregate what comes back."""
        start = time.perf_counter()
        server = self._server(dict(config))
        server.parameters = ndarrays_to_parameters(weights)
        result = server.fit_round(server_round=round_, timeout=self.round_timeout)
        if result is None:
            return FitOutcome(None, 0, 0, time.perf_counter() - start)
        parameters, _, (ok, failed) = result
        aggregated = parameters_to_ndarrays(parameters) if parameters is not None else None
        return FitOutcome(aggregated, len(ok), len(failed), time.perf_counter() - start)

    def evaluate(
        self, weights: list[np.ndarray], round_: int, config: Mapping[str, Scalar]
    ) -> EvaluateOutcome:
        """Send the aggregated ``weights`` to every member to evaluate on its own data."""
        start = time.perf_counter()
        server = self._server(dict(config))
        server.parameters = ndarrays_to_parameters(weights)
        result = server.evaluate_round(server_round=round_, timeout=self.round_timeout)
        if result is None:
            return EvaluateOutcome(None, 0, 0, time.perf_counter() - start)
        _, metrics, (ok, failed) = result
        accuracy = metrics.get(ACCURACY_KEY)
        return EvaluateOutcome(
            float(accuracy) if isinstance(accuracy, int | float) else None,
            len(ok),
            len(failed),
            time.perf_counter() - start,
        )

    def stop(self, grace: float = 0.5) -> None:
        """Close every member's stream and stop listening (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._grpc.stop(grace).wait(grace + 1.0)


def run_client(address: str, client: NumPyClient) -> None:
    """Take part in the federation served at ``address`` until the server lets go.

    Returns when the host disconnects this client (it stopped hosting or shut down).
    Raises ``grpc.RpcError`` when the host cannot be reached or its stream breaks,
    and ``SessionEnded`` when ``client`` raised it to leave.
    """
    from flwr.client import start_client

    _install_quiet_filter()
    start_client(server_address=address, client=client.to_client())


def check_legacy_compat() -> None:
    """Raise ``FlowerCompatError`` when a Flower upgrade moved the parts used here."""
    import flwr

    problems: list[str] = []
    try:
        from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server
    except ImportError as exc:
        problems.append(f"start_grpc_server is gone ({exc})")
    else:
        params = inspect.signature(start_grpc_server).parameters
        for name in ("client_manager", "server_address"):
            if name not in params:
                problems.append(f"start_grpc_server has no parameter {name!r}")
    for method in ("fit_round", "evaluate_round"):
        params = inspect.signature(getattr(Server, method, lambda: None)).parameters
        if not {"server_round", "timeout"} <= set(params):
            problems.append(f"Server.{method}(server_round, timeout) changed")
    try:
        from flwr.client import start_client
    except ImportError as exc:
        problems.append(f"flwr.client.start_client is gone ({exc})")
    else:
        if "server_address" not in inspect.signature(start_client).parameters:
            problems.append("start_client(server_address=...) changed")
    if problems:
        raise FlowerCompatError(f"flwr {flwr.__version__}: " + "; ".join(problems))


RpcError = grpc.RpcError

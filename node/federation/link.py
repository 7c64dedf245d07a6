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

Who may connect: a server given ``admit`` runs it on every new stream with the client's
round ticket (gRPC metadata ``mycelium-round-ticket``; ``node.round_tickets``) and refuses
the stream (UNAUTHENTICATED or PERMISSION_DENIED, logged with the client's address) when
it raises ``TicketRefused``; each admitted stream's updates are attributed to the node id
its ticket names. Flower's legacy client cannot send metadata, so ``run_client`` hands
the ticket to Flower's channel through a client interceptor (the channel factory of
Flower's ``grpc_connection``, wrapped once per process, reads it per thread).

TLS: ``certificates`` (CA, server certificate, server key as PEM bytes, Flower's own
tuple) makes the server's port TLS-only; ``run_client(root_certificates=...)`` verifies it.
A server that cannot listen (its port taken, bad certificates) raises ``ListenError``
instead of Flower's ``sys.exit``.

``LinkFederation`` makes a ``GroupServer`` the transport of ``node.federation.round``'s
group round; ``LinkMember`` is a member's Flower client around its ``GroupMember``.
An evaluation instruction carries every model to evaluate as one list of tensors
(the models concatenated, ``models`` in the config says how many); the member
answers with ``loss-<j>``/``accuracy-<j>`` metrics per model.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import grpc
import numpy as np
from flwr.client import NumPyClient
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager, Server, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from node.errors import (
    FlowerCompatError,
    ListenError,
    RemoteInputError,
    SessionEnded,
    TicketRefused,
)
from node.federation.keys import (
    ACCURACY_KEY,
    EXTRA_SECONDS_KEY,
    GROUP_ID_KEY,
    LABELS_KEY,
    LOCAL_EPOCHS_KEY,
    MODELS_KEY,
    NODE_ID_KEY,
    OWN_ACCURACY_KEY,
    ROUND_KEY,
    TRAIN_LOSS_KEY,
)
from node.federation.round import (
    FitOutcome,
    GroupMember,
    MemberEvaluation,
    MemberUpdate,
    screen_updates,
)
from node.federation.strategies import FLOWER_LOGGER_NAME, check_strategy, make_legacy_strategy
from node.learning.weights import Weights, WeightsSignature

__all__ = [
    "TICKET_METADATA_KEY",
    "Admit",
    "GroupServer",
    "LinkFederation",
    "LinkMember",
    "RpcError",
    "check_legacy_compat",
    "run_client",
]

log = logging.getLogger(__name__)

LOSS_KEY = "loss-{}"
_LABEL_SEPARATOR = "\n"
ACCURACY_OF_KEY = "accuracy-{}"
_WAIT_STEP = 0.05
TICKET_METADATA_KEY = "mycelium-round-ticket"

# The node id a round ticket admits, from its ticket (None: no ticket); TicketRefused when
# it admits none.
Admit = Callable[[str | None], str]


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


class _BoundedClientManager(SimpleClientManager):
    """Flower's client manager, whose sampling waits at most ``wait_s`` seconds for clients.

    Flower's own waits up to a day: a host whose members had all gone would block in
    its round instead of noticing and moving on.
    """

    def __init__(self, wait_s: float) -> None:
        super().__init__()
        self.wait_s = max(1, math.ceil(wait_s))
        self.identities: dict[str, str] = {}  # Flower's client id -> node id its ticket names

    def register(self, client: ClientProxy) -> bool:
        """Flower's registration, noting the node id the stream was admitted as."""
        node_id = getattr(_admitted, "node_id", None)
        if node_id is not None:
            self.identities[client.cid] = node_id
        return super().register(client)

    def unregister(self, client: ClientProxy) -> None:
        """Flower's, forgetting the client's node id."""
        self.identities.pop(client.cid, None)
        super().unregister(client)

    def identity(self, proxy: ClientProxy, metrics: Mapping[str, Scalar]) -> str:
        """Who a reply is from: the node its ticket admitted, else what it says, else its
        connection's id."""
        admitted = self.identities.get(proxy.cid)
        return admitted if admitted is not None else _member_id(proxy, metrics)

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        """Wait until ``num_clients`` are connected, at most ``wait_s`` seconds."""
        return super().wait_for(num_clients, timeout=min(timeout, self.wait_s))


class _Screening(Strategy):
    """Flower's legacy strategy behind ``screen_updates``: replies that fail the checks
    never reach ``aggregate_fit``, and the kept ones weigh by their clamped count."""

    def __init__(self, signature: WeightsSignature, manager: _BoundedClientManager) -> None:
        self.signature = signature
        self.manager = manager
        self.inner: Strategy | None = None
        self.kept: list[MemberUpdate] = []
        self.refused: list[tuple[str, RemoteInputError]] = []

    def _strategy(self) -> Strategy:
        if self.inner is None:
            raise RuntimeError("no strategy to screen for")
        return self.inner

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The inner strategy's."""
        return self._strategy().initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The inner strategy's."""
        return self._strategy().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Screen ``results``, then let the inner strategy aggregate what is kept."""
        received: list[tuple[ClientProxy, FitRes, MemberUpdate]] = []
        for proxy, res in results:
            member = self.manager.identity(proxy, res.metrics)
            try:
                weights = parameters_to_ndarrays(res.parameters)
            except (ValueError, TypeError) as exc:
                self.refused.append((member, RemoteInputError(f"undecodable weights: {exc}")))
                continue
            loss = res.metrics.get(TRAIN_LOSS_KEY, 0.0)
            train_loss = float(loss) if isinstance(loss, int | float) else 0.0
            update = MemberUpdate(member, weights, res.num_examples, train_loss)
            received.append((proxy, res, update))
        screened = screen_updates(
            [(u.member, u.weights, u.num_examples) for _, _, u in received], self.signature
        )
        self.refused += screened.refused
        kept: list[tuple[ClientProxy, FitRes]] = []
        for i, count in screened.kept.items():
            proxy, res, update = received[i]
            res.num_examples = count
            kept.append((proxy, res))
            self.kept.append(MemberUpdate(update.member, update.weights, count, update.train_loss))
        if not kept:
            return None, {}
        return self._strategy().aggregate_fit(server_round, kept, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """The inner strategy's."""
        return self._strategy().configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The inner strategy's."""
        return self._strategy().aggregate_evaluate(server_round, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """The inner strategy's (server-side evaluation: none here)."""
        return self._strategy().evaluate(server_round, parameters)


_admitted = threading.local()  # the node id of the stream this gRPC thread is serving


class _Admission(grpc.ServerInterceptor):
    """Runs ``admit`` on each new stream's round ticket; refuses it, logged, when it raises."""

    def __init__(self, admit: Admit, listen: str) -> None:
        self.admit = admit
        self.listen = listen

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.stream_stream is None:
            return handler
        inner = handler.stream_stream

        def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            metadata = dict(context.invocation_metadata() or ())
            ticket = metadata.get(TICKET_METADATA_KEY)
            try:
                node_id = self.admit(ticket if isinstance(ticket, str) else None)
            except TicketRefused as exc:
                log.warning(
                    "Flower server %s refused the client at %s: %s",
                    self.listen, context.peer(), exc,
                )  # fmt: skip
                code = grpc.StatusCode.PERMISSION_DENIED
                if not exc.authenticated:
                    code = grpc.StatusCode.UNAUTHENTICATED
                context.abort(code, str(exc))
                raise  # abort() raised already; this keeps the type checker informed
            log.debug("Flower server %s admitted %s at %s", self.listen, node_id, context.peer())
            return _as(node_id, inner(requests, context))

        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _as(node_id: str, stream: Iterator[Any]) -> Iterator[Any]:
    """``stream``, served as ``node_id``: Flower registers the client in its first step,
    in the thread that steps it, where ``_BoundedClientManager.register`` reads it."""
    _admitted.node_id = node_id
    try:
        yield from stream
    finally:
        _admitted.node_id = None


def _serve(
    manager: ClientManager,
    listen: str,
    certificates: tuple[bytes, bytes, bytes] | None,
    interceptors: list[grpc.ServerInterceptor],
) -> grpc.Server:
    """Flower's ``start_grpc_server``, with interceptors, raising ``ListenError`` where it
    would ``sys.exit`` (port taken, bad certificates)."""
    from flwr.server.superlink.fleet.grpc_bidi.flower_service_servicer import (
        FlowerServiceServicer,
    )
    from flwr.server.superlink.fleet.grpc_bidi.grpc_server import (
        add_FlowerServiceServicer_to_server,
    )
    from flwr.supercore.grpc import generic_create_grpc_server

    try:
        server = generic_create_grpc_server(
            servicer_and_add_fn=(
                FlowerServiceServicer(manager),
                add_FlowerServiceServicer_to_server,
            ),
            server_address=listen,
            certificates=certificates,
            interceptors=interceptors or None,
        )
        server.start()
    except SystemExit as exc:  # Flower's answer to a taken port or unusable certificates
        why = exc.code if isinstance(exc.code, str) else "invalid TLS certificates"
        raise ListenError(f"cannot serve Flower on {listen}: {why}") from None
    except RuntimeError as exc:  # gRPC could not bind (or load the certificates)
        raise ListenError(f"cannot serve Flower on {listen}: {exc}") from None
    return server


class GroupServer:
    """A group's Flower server, listening on ``listen`` (``host:port``) until ``stop()``.

    Safe to drive from any thread. Each phase waits at most ``round_timeout_s`` seconds
    for a member: one that died or hangs is counted as a failure, not waited for.
    ``certificates`` (CA, certificate, key; PEM bytes) serve TLS only; ``admit`` checks
    every client's round ticket (see the module docstring); without it anyone may join.
    Raises ``ListenError`` when it cannot listen on ``listen``.
    """

    def __init__(
        self,
        listen: str,
        *,
        strategy: str = "fedavg",
        strategy_options: Mapping[str, Any] | None = None,
        round_timeout_s: float = 30.0,
        certificates: tuple[bytes, bytes, bytes] | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.listen = listen
        self.strategy = check_strategy(strategy)
        self.strategy_options = dict(strategy_options or {})
        self.round_timeout_s = round_timeout_s
        _install_quiet_filter()
        self._manager = _BoundedClientManager(round_timeout_s)
        interceptors = [_Admission(admit, listen)] if admit is not None else []
        self._grpc = _serve(self._manager, listen, certificates, interceptors)
        self._stopped = False

    @property
    def connected(self) -> int:
        """Clients connected right now."""
        return self._manager.num_available()

    def keep_only(self, node_ids: Collection[str]) -> list[str]:
        """Close the stream of every admitted client whose node is not in ``node_ids`` (it
        left the group or was expelled since it connected); the node ids dropped."""
        dropped = []
        for cid, proxy in list(self._manager.all().items()):
            node_id = self._manager.identities.get(cid)
            if node_id is None or node_id in node_ids:
                continue
            log.warning(
                "Flower server %s: %s is no longer a member; closing its stream",
                self.listen, node_id,
            )  # fmt: skip
            bridge = getattr(proxy, "bridge", None)
            if bridge is not None:
                bridge.close()
            self._manager.unregister(proxy)
            dropped.append(node_id)
        return dropped

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

    def _server(self, config: dict[str, Scalar], screening: _Screening | None = None) -> Server:
        strategy = make_legacy_strategy(
            self.strategy, lambda r: {**config, ROUND_KEY: r}, self.strategy_options
        )
        if screening is not None:
            screening.inner = strategy
            return Server(client_manager=self._manager, strategy=screening)
        return Server(client_manager=self._manager, strategy=strategy)

    def fit(self, weights: Weights, round_: int, config: Mapping[str, Scalar]) -> FitOutcome:
        """Send ``weights`` to every connected member to train; aggregate what comes back.

        Replies are screened (``screen_updates``) before the strategy sees them. Each
        update is attributed to the ``node-id`` its member reports (else to the
        connection's id).
        """
        start = time.perf_counter()
        screening = _Screening(WeightsSignature.of(weights), self._manager)
        server = self._server(dict(config), screening)
        server.parameters = ndarrays_to_parameters(list(weights))
        try:
            result = server.fit_round(server_round=round_, timeout=self.round_timeout_s)
        except (ValueError, TypeError) as exc:  # Flower could not combine the kept replies
            raise RemoteInputError(f"round {round_}: replies cannot be aggregated: {exc}") from exc
        if result is None:
            return FitOutcome(None, [], 0, time.perf_counter() - start, screening.refused)
        parameters, _, (_ok, failed) = result
        aggregated = parameters_to_ndarrays(parameters) if parameters is not None else None
        return FitOutcome(
            aggregated,
            screening.kept,
            len(failed) + len(screening.refused),
            time.perf_counter() - start,
            screening.refused,
        )

    def evaluate(
        self,
        models: Sequence[Weights],
        round_: int,
        config: Mapping[str, Scalar],
        labels: Sequence[str] = (),
    ) -> list[MemberEvaluation]:
        """Send ``models`` (named by ``labels``) to every connected member to evaluate on
        its own data. The labels travel as one newline-joined string (Flower's legacy
        config holds scalars only)."""
        server = self._server(
            {**config, MODELS_KEY: len(models), LABELS_KEY: _LABEL_SEPARATOR.join(labels)}
        )
        server.parameters = ndarrays_to_parameters([t for m in models for t in m])
        try:
            result = server.evaluate_round(server_round=round_, timeout=self.round_timeout_s)
        except (ValueError, TypeError) as exc:  # Flower could not combine the replies' losses
            raise RemoteInputError(f"round {round_}: evaluations unusable: {exc}") from exc
        if result is None:
            return []
        _, _, (ok, _failed) = result
        out = []
        for proxy, res in ok:
            try:
                out.append(
                    _evaluation(
                        self._manager.identity(proxy, res.metrics), res, list(labels), len(models)
                    )
                )
            except RemoteInputError as exc:
                log.warning("An evaluation reply was unusable: %s", exc)
        return out

    def stop(self, grace: float = 0.5) -> None:
        """Close every member's stream and stop listening (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._grpc.stop(grace).wait(grace + 1.0)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


class _Ticket(grpc.StreamStreamClientInterceptor):
    """Adds the round ticket to every stream's metadata."""

    def __init__(self, ticket: str) -> None:
        self.ticket = ticket

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        metadata = [*(client_call_details.metadata or ()), (TICKET_METADATA_KEY, self.ticket)]
        details = _CallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
            getattr(client_call_details, "compression", None),
        )
        return continuation(details, request_iterator)


_client_ticket = threading.local()  # the ticket run_client is connecting with, per thread
_channel_wrapped = threading.Lock()


def _wrap_flower_channel() -> None:
    """Make Flower's legacy ``grpc_connection`` build its channel with this thread's
    ticket interceptor (it takes no interceptors of its own). Idempotent."""
    from flwr.compat.client.grpc_client import connection

    with _channel_wrapped:
        original = connection.create_channel
        if getattr(original, "_mycelium", False):
            return

        @functools.wraps(original)
        def create_channel(*args: Any, **kwargs: Any) -> grpc.Channel:
            ticket = getattr(_client_ticket, "ticket", None)
            if ticket is not None:
                kwargs["interceptors"] = [*(kwargs.get("interceptors") or ()), _Ticket(ticket)]
            return original(*args, **kwargs)

        create_channel._mycelium = True  # type: ignore[attr-defined]
        connection.create_channel = create_channel


def run_client(
    address: str,
    client: NumPyClient,
    *,
    ticket: str | None = None,
    root_certificates: bytes | None = None,
) -> None:
    """Take part in the federation served at ``address`` until the server lets go.

    ``ticket`` is this member's round ticket (``RegistryClient.round_ticket``);
    ``root_certificates`` (PEM bytes) make the connection TLS, verified against them.
    Returns when the host disconnects this client (it stopped hosting or shut down).
    Raises ``grpc.RpcError`` when the host cannot be reached, refuses the ticket
    (UNAUTHENTICATED, PERMISSION_DENIED) or its stream breaks, and ``SessionEnded`` when
    ``client`` raised it to leave.
    """
    from flwr.client import start_client

    _install_quiet_filter()
    _wrap_flower_channel()
    _client_ticket.ticket = ticket
    try:
        start_client(
            server_address=address,
            client=client.to_client(),
            root_certificates=root_certificates,
            insecure=root_certificates is None,
        )
    finally:
        _client_ticket.ticket = None


class LinkFederation:
    """A ``GroupServer`` as the transport of a group round (``node.federation.round``)."""

    def __init__(self, server: GroupServer, *, group_id: int) -> None:
        self.server = server
        self.group_id = group_id

    @property
    def strategy(self) -> str:
        """Name of the Flower strategy that aggregates."""
        return self.server.strategy

    def fit(self, weights: Weights, round_: int, local_epochs: int) -> FitOutcome:
        """Every connected member trains from ``weights``; the strategy aggregates."""
        config: dict[str, Scalar] = {GROUP_ID_KEY: self.group_id, LOCAL_EPOCHS_KEY: local_epochs}
        return self.server.fit(weights, round_, config)

    def evaluate(
        self, models: Sequence[Weights], labels: Sequence[str], round_: int, group_id: int
    ) -> list[MemberEvaluation]:
        """Every connected member evaluates ``models`` (named by ``labels``) on its data."""
        return self.server.evaluate(models, round_, {GROUP_ID_KEY: group_id}, labels)


class LinkMember(NumPyClient):
    """A member's Flower client: ``GroupMember`` behind Flower's legacy ``NumPyClient``.

    ``check(config)`` runs before every instruction and may raise ``SessionEnded`` to
    leave (the node migrated or is shutting down). ``on_evaluated(group_id, result)``
    runs after each evaluation (the node counts its rounds). A bad instruction (weights
    that do not fit, a wrong model count) raises ``RemoteInputError``: Flower reports
    the failure to the host and the member stays connected.
    """

    def __init__(
        self,
        member: GroupMember,
        *,
        check: Callable[[Mapping[str, Scalar]], None] | None = None,
        on_evaluated: Callable[[int, MemberEvaluation], None] | None = None,
    ) -> None:
        self.member = member
        self.check = check
        self.on_evaluated = on_evaluated

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        """This member's current weights."""
        return self.member.learner.get_weights()

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train the group model on local data."""
        if self.check is not None:
            self.check(config)
        epochs = int(config.get(LOCAL_EPOCHS_KEY, self.member.learner.epochs))
        update = self.member.train(list(parameters), epochs)
        metrics: dict[str, Scalar] = {
            TRAIN_LOSS_KEY: update.train_loss,
            NODE_ID_KEY: self.member.node_id,
        }
        return update.weights, update.num_examples, metrics

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Adopt the group's new model, evaluate every model sent, report."""
        if self.check is not None:
            self.check(config)
        models = _split_models(list(parameters), int(config.get(MODELS_KEY, 1)))
        joined = config.get(LABELS_KEY, "")
        labels = str(joined).split(_LABEL_SEPARATOR) if joined else []
        group_id = int(config.get(GROUP_ID_KEY, 0))
        round_ = int(config.get(ROUND_KEY, 0))
        result = self.member.evaluate(models, labels, group_id=group_id, round_=round_)
        if self.on_evaluated is not None:
            self.on_evaluated(group_id, result)
        metrics: dict[str, Scalar] = {
            NODE_ID_KEY: self.member.node_id,
            ACCURACY_KEY: result.accuracies[0],
            EXTRA_SECONDS_KEY: result.extra_seconds,
        }
        if result.own_accuracy is not None:
            metrics[OWN_ACCURACY_KEY] = result.own_accuracy
        for j, (loss, acc) in enumerate(zip(result.losses, result.accuracies, strict=True)):
            metrics[LOSS_KEY.format(j)] = loss
            metrics[ACCURACY_OF_KEY.format(j)] = acc
        return result.losses[0], result.num_examples, metrics


def _split_models(tensors: list[np.ndarray], count: int) -> list[list[np.ndarray]]:
    if count < 1 or len(tensors) % count:
        raise RemoteInputError(f"{len(tensors)} tensors cannot be {count} models")
    size = len(tensors) // count
    return [tensors[j * size : (j + 1) * size] for j in range(count)]


def _member_id(proxy: ClientProxy, metrics: Mapping[str, Scalar]) -> str:
    node_id = metrics.get(NODE_ID_KEY)
    return node_id if isinstance(node_id, str) else str(proxy.cid)


def _evaluation(member: str, res: Any, labels: list[str], count: int) -> MemberEvaluation:
    """A member's evaluation reply as a ``MemberEvaluation``; RemoteInputError when malformed."""
    try:
        losses = [float(res.metrics[LOSS_KEY.format(j)]) for j in range(count)]
        accuracies = [float(res.metrics[ACCURACY_OF_KEY.format(j)]) for j in range(count)]
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteInputError(f"{member}'s evaluation lacks per-model metrics: {exc}") from exc
    extra = res.metrics.get(EXTRA_SECONDS_KEY, 0.0)
    own = res.metrics.get(OWN_ACCURACY_KEY)
    return MemberEvaluation(
        member,
        int(res.num_examples),
        losses,
        accuracies,
        extra_seconds=float(extra) if isinstance(extra, int | float) else 0.0,
        labels=labels,
        own_accuracy=float(own) if isinstance(own, int | float) else None,
    )


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
    try:
        from flwr.server.superlink.fleet.grpc_bidi.flower_service_servicer import (
            FlowerServiceServicer,  # noqa: F401
        )
        from flwr.server.superlink.fleet.grpc_bidi.grpc_server import (
            add_FlowerServiceServicer_to_server,  # noqa: F401
        )
        from flwr.supercore.grpc import generic_create_grpc_server
    except ImportError as exc:
        problems.append(f"the legacy gRPC server's parts moved ({exc})")
    else:
        params = inspect.signature(generic_create_grpc_server).parameters
        for name in ("servicer_and_add_fn", "server_address", "certificates", "interceptors"):
            if name not in params:
                problems.append(f"generic_create_grpc_server has no parameter {name!r}")
    try:
        from flwr.compat.client.grpc_client import connection
    except ImportError as exc:
        problems.append(f"the legacy client's grpc_connection moved ({exc})")
    else:
        create = getattr(connection, "create_channel", None)
        if create is None or "create_channel(" not in inspect.getsource(connection.grpc_connection):
            problems.append("grpc_connection no longer builds its channel with create_channel")
        elif "interceptors" not in inspect.signature(create).parameters:
            problems.append("create_channel takes no interceptors")
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

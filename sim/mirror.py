"""Mirror the simulation's nodes and groups into a registry, so other tools (viz) see them.

Every simulated node registers under ``<prefix>-<node id>``; a coordinator node
(``<prefix>-sim``) creates the groups, so an empty group shows up at once; members
join and leave with their own tokens; a Flower round in a group uploads its model
and reports each member's accuracy. The registry is a side show here: a failing
request is logged and counted, never raised, and the simulation goes on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import httpx

from node.registry_client import ConflictError, RegistryClient, RegistryClientError
from sim.scope import node_name
from sim.state import GroupLink

__all__ = ["RegistryMirror"]

log = logging.getLogger(__name__)

COORDINATOR = "sim"
MAX_CAPACITY = 10_000
ADDRESS = "in-process/sim"


class RegistryMirror:
    """Keeps a registry in step with a simulation; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        domain: str,
        prefix: str,
        heartbeat_every: float | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.domain = domain
        self.prefix = prefix
        self.failures = 0
        # Connection failures are retried by the transport (nothing reached the registry).
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=httpx.HTTPTransport(retries=1)
        )
        self._clients: dict[int, RegistryClient] = {}
        self._group_ids: dict[str, int] = {}
        self._active: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._coordinator = self._client()
        self._call(
            "register the coordinator",
            lambda: self._coordinator.register(self._id(COORDINATOR), ADDRESS, domain),
        )
        self._heartbeats: threading.Thread | None = None
        if heartbeat_every:
            self._heartbeats = threading.Thread(
                target=self._beat, args=(heartbeat_every,), name="sim-heartbeats", daemon=True
            )
            self._heartbeats.start()

    def _client(self) -> RegistryClient:
        return RegistryClient(self.base_url, client=self._http, retries=1, backoff=0.1)

    def _id(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def registry_node_id(self, node: int) -> str:
        """The id node ``node`` has in the registry."""
        return self._id(node_name(node))

    def registry_group_name(self, group: str) -> str:
        """The name group ``group`` has in the registry."""
        return self._id(group)

    def group_id(self, group: str) -> int | None:
        """The registry's id of a group, once created."""
        return self._group_ids.get(group)

    def _call(self, what: str, action: Callable[[], object]) -> bool:
        try:
            action()
        except RegistryClientError as exc:
            self.failures += 1
            log.warning("registry: could not %s: %s", what, exc)
            return False
        return True

    # --- the Mirror protocol ---------------------------------------------------------

    def add_node(self, node: int) -> None:
        """Register the node (again, with its token, when it is known already)."""
        with self._lock:
            client = self._clients.get(node) or self._client()
            self._clients[node] = client
            self._active.add(node)
        self._call(
            f"register {node_name(node)}",
            lambda: client.register(
                self.registry_node_id(node), f"{ADDRESS}/{node_name(node)}", self.domain
            ),
        )

    def remove_node(self, node: int) -> None:
        """The node leaves its group; the registry expires it when heartbeats stop.

        Its client (and token) is kept, so a restore can bring the node back.
        """
        self.leave(node)
        with self._lock:
            self._active.discard(node)

    def create_group(self, name: str) -> None:
        """Create the group (or find it, when a restore meets it already there)."""
        full_name = self.registry_group_name(name)

        def create() -> None:
            try:
                group = self._coordinator.create_group(
                    full_name, self.domain, max_capacity=MAX_CAPACITY, join=False
                )
                self._group_ids[name] = group.id
            except ConflictError:
                for group in self._coordinator.list_groups(domain=self.domain):
                    if group.name == full_name:
                        self._group_ids[name] = group.id
                        return
                raise

        self._call(f"create group {name}", create)

    def join(self, node: int, group: str) -> None:
        """Move the node into the group."""
        client = self._clients.get(node)
        group_id = self._group_ids.get(group)
        if client is None or group_id is None:
            return
        self._call(f"add {node_name(node)} to {group}", lambda: client.join(group_id))

    def leave(self, node: int) -> None:
        """Take the node out of its group, if it is in one."""
        client = self._clients.get(node)
        if client is None or client.token is None:
            return

        def leave() -> None:
            with contextlib.suppress(ConflictError):  # not in a group: nothing to do
                client.leave()

        self._call(f"take {node_name(node)} out of its group", leave)

    def group_link(self, group: str, members: Sequence[int]) -> GroupLink | None:
        """Where the group round's registry calls go: the first member uploads and
        submits, each member reports; every call is guarded (logged and counted)."""
        group_id = self._group_ids.get(group)
        clients = {m: self._clients[m] for m in members if m in self._clients}
        if group_id is None or not members or members[0] not in clients:
            return None
        return GroupLink(
            group_id=group_id,
            host=_Guarded(self, clients[members[0]], group),
            reporters={m: _Guarded(self, c, group) for m, c in clients.items()},
        )

    # --- lifetime ----------------------------------------------------------------------

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                clients = [self._coordinator, *(self._clients[n] for n in sorted(self._active))]
            for client in clients:
                if self._stop.is_set():
                    return
                if client.token is not None:
                    self._call("send a heartbeat", client.heartbeat)

    def close(self) -> None:
        """Stop heartbeats and close the connection pool."""
        self._stop.set()
        if self._heartbeats is not None:
            self._heartbeats.join(timeout=5)
        self._http.close()


class _Guarded:
    """A member's registry calls in a group round, through the mirror's ``_call``: a
    failure is logged and counted, never raised (the registry is a side show here)."""

    def __init__(self, mirror: RegistryMirror, client: RegistryClient, group: str) -> None:
        self._mirror = mirror
        self._client = client
        self._group = group

    def upload_model(self, group_id: int, round: int, data: bytes) -> object:
        """Upload the group's snapshot."""
        return self._mirror._call(
            f"upload {self._group}'s model",
            lambda: self._client.upload_model(group_id, round, data),
        )

    def submit_contributions(
        self,
        group_id: int,
        round: int,
        contributions: Mapping[str, float],
        *,
        num_examples: Mapping[str, int] | None = None,
        method: str = "leave_one_out",
    ) -> object:
        """Submit the round's contributions."""
        return self._mirror._call(
            f"submit {self._group}'s contributions",
            lambda: self._client.submit_contributions(
                group_id, round, contributions, num_examples=num_examples, method=method
            ),
        )

    def report_performance(
        self,
        group_id: int,
        *,
        value: float,
        round: int,
        num_examples: int = 1,
        metric: str = "accuracy",
    ) -> object:
        """Report the member's accuracy on the group's model."""
        return self._mirror._call(
            f"report {self._group}'s accuracy",
            lambda: self._client.report_performance(
                group_id, value=value, round=round, num_examples=num_examples, metric=metric
            ),
        )

    def report_evaluation(
        self,
        group_id: int,
        round: int,
        losses: Mapping[str, float],
        *,
        num_examples: int,
        accuracy: float | None = None,
    ) -> object:
        """Report the member's losses on the round's models, by label (and with
        ``accuracy``, its performance report for the round)."""
        return self._mirror._call(
            f"report {self._group}'s evaluation",
            lambda: self._client.report_evaluation(
                group_id, round, losses, num_examples=num_examples, accuracy=accuracy
            ),
        )

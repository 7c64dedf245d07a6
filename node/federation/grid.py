"""An in-memory Flower ``Grid`` calling ClientApps directly: the one module on Flower internals.

Flower's message-based strategies (``flwr.serverapp.strategy.FedAvg(...).start(grid=...)``)
drive any ``flwr.serverapp.Grid``. This one delivers each message by calling the
destination node's ``ClientApp`` in the caller's thread: no SuperLink, no Ray, no
serialisation. It touches two internals, ``flwr.supercore.run.Run`` (what
``Grid.run`` returns) and ``flwr.supercore.task_identity.TaskIdentity`` (which
``Message(...)`` reads to stamp run and sender ids); ``check_flower_compat`` fails
loudly when a Flower upgrade changes them.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import threading
from collections.abc import Iterable, Mapping

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from node.errors import FlowerCompatError

__all__ = [
    "FLOWER_VERSION_TESTED",
    "SERVER_NODE_ID",
    "FlowerCompatError",
    "InMemoryGrid",
    "check_flower_compat",
    "ensure_task_identity",
]

logger = logging.getLogger(__name__)

FLOWER_VERSION_TESTED = "1.41.0"
SERVER_NODE_ID = 1
_TASK_ID = 1
_RUN_ID = 1
# Error code of a reply whose node refused the message's input.
_REFUSED = 1
_GRID_METHODS = {
    "set_run",
    "run",
    "create_message",
    "get_node_ids",
    "push_messages",
    "pull_messages",
    "send_and_receive",
}
_identity_lock = threading.Lock()


def ensure_task_identity() -> None:
    """Give this process a Flower task identity so ``Message(...)`` can be built.

    The identity is process-wide; it is set once and never reset, so concurrent
    rounds in several threads see the same, valid values.
    """
    with _identity_lock:
        for attr, value in (
            ("_task_id", _TASK_ID),
            ("_run_id", _RUN_ID),
            ("_node_id", SERVER_NODE_ID),
        ):
            if getattr(TaskIdentity, attr, None) is None:
                setattr(TaskIdentity, attr.lstrip("_"), value)


class InMemoryGrid(Grid):
    """A ``Grid`` whose nodes are ``ClientApp`` callables in this process.

    Messages are handled synchronously at push time, one node after another. An
    exception of a type in ``caught`` (bad input the node refused) becomes an error
    reply, which Flower's strategies count as a failure; any other exception
    propagates to the caller (in process, a crashing client is a bug to see, not a
    straggler to tolerate). Replies come back sorted by node id, so aggregation order
    does not depend on the strategy's sampling.
    """

    def __init__(
        self,
        apps: Mapping[int, ClientApp],
        run_id: int = _RUN_ID,
        *,
        caught: tuple[type[Exception], ...] = (),
    ) -> None:
        if SERVER_NODE_ID in apps:
            raise ValueError(f"Node id {SERVER_NODE_ID} is the server's; number nodes from 2")
        self._apps = dict(apps)
        self._caught = caught
        self._contexts = {
            node_id: Context(
                run_id=run_id, node_id=node_id, node_config={}, state=RecordDict(), run_config={}
            )
            for node_id in self._apps
        }
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count()
        ensure_task_identity()

    def set_run(self, run: Run) -> None:
        """Replace the run this grid operates in."""
        self._run = run

    @property
    def run(self) -> Run:
        """Run information."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message for ``dst_node_id``."""
        return Message(
            content=content,
            message_type=message_type,
            dst_node_id=dst_node_id,
            group_id=group_id,
            ttl=ttl,
        )

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the nodes in this grid."""
        return list(self._apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; return ids to pull replies."""
        message_ids = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            if node_id not in self._apps:
                raise ValueError(f"No node {node_id} in this grid")
            try:
                reply = self._apps[node_id](message, self._contexts[node_id])
            except self._caught as exc:
                logger.warning(
                    "Node %s refused a %s message: %s", node_id, message.metadata.message_type, exc
                )
                reply = Message(
                    error=Error(code=_REFUSED, reason=f"{type(exc).__name__}: {exc}"),
                    reply_to=message,
                )
            message_id = f"m{next(self._ids)}"
            self._replies[message_id] = reply
            message_ids.append(message_id)
        return message_ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return (and forget) the replies to ``message_ids``, sorted by node id."""
        replies = [self._replies.pop(mid) for mid in message_ids if mid in self._replies]
        return sorted(replies, key=lambda reply: reply.metadata.src_node_id)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver messages and return all replies (``timeout`` is moot: calls are synchronous)."""
        return self.pull_messages(self.push_messages(messages))


def check_flower_compat() -> None:
    """Raise ``FlowerCompatError`` when the Flower internals used here have changed."""
    import flwr

    problems = []
    abstract = set(getattr(Grid, "__abstractmethods__", set()))
    if not abstract <= _GRID_METHODS:
        problems.append(f"Grid has new abstract methods {sorted(abstract - _GRID_METHODS)}")
    if not callable(getattr(Run, "create_empty", None)):
        problems.append("flwr.supercore.run.Run.create_empty is gone")
    for attr in ("task_id", "run_id", "node_id"):
        if not isinstance(inspect.getattr_static(type(TaskIdentity), attr, None), property):
            problems.append(f"TaskIdentity.{attr} is no longer a settable class property")
    if problems:
        raise FlowerCompatError(
            f"flwr {flwr.__version__} (node/flower_grid.py was written for "
            f"{FLOWER_VERSION_TESTED}): " + "; ".join(problems)
        )

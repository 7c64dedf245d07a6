"""Group rounds as Ray tasks, on this machine or a Ray cluster (``--backend ray``).

Each group round of a network round is one Ray task running ``run_group_task``, the
function every backend runs. ``start`` puts the model template and the data pool's
``x``/``y`` into Ray's object store once; every task gets their references, and a worker
process resolves them once (``_worker_state`` keeps them, keyed by the references): on one
machine the arrays are shared memory, read-only, never copied per task; on a cluster each
machine fetches them once. A member's own slices are copied (a few hundred rows) so torch
trains on writable arrays. Workers run one torch thread each (see ``node.runtime.backends``).

Why not Flower's ``flwr.simulation.run_simulation`` (Flower's Ray backend): it runs one
fixed federation, one ``ServerApp`` over a fixed set of supernodes for the whole run. Here
many groups run their rounds at once and their members change every round (nodes migrate,
groups merge and split), and the registry calls and decisions stay in the driver; one Ray
task per group round fits that directly. ``bench/flower_baseline.py`` runs Flower's Ray
simulation of plain FedAvg as the peer baseline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from node.federation.strategies import FLOWER_LOGGER_NAME, set_flower_log_level
from node.learning.partition import NodeData
from node.learning.pool import DataPool, NodeSlices
from node.runtime.backends import (
    RAY_MISSING,
    BackendError,
    GroupOutcome,
    GroupTask,
    WorkerSetup,
    child_processes,
    run_bare_task,
    run_group_task,
)

try:
    import ray
    from ray.exceptions import RayError, RayTaskError
except ImportError as exc:  # pragma: no cover - the extra is installed by `make venv`
    raise ImportError(RAY_MISSING) from exc

__all__ = ["RayBackend", "start_local_ray"]

log = logging.getLogger(__name__)

# Seconds to wait for a TCP connection to a cluster's address: Ray itself retries an
# unreachable address for minutes, printing a warning every few seconds.
CONNECT_TIMEOUT_S = 5.0

# Local starts tried before giving up. Ray waits a fixed 30 s for its new node to register
# (``ray._private.node.Node``); a loaded machine reading Ray's binaries from a cold disk
# can miss that once, and the next start, binaries cached, takes a few seconds.
LOCAL_START_ATTEMPTS = 3
_STARTUP_TIMEOUT = "timed out during startup"


def _init_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)`` without the dashboard, Ray logging warnings only."""
    # Ray's future default (keep accelerator variables when no GPU is asked for), which
    # also silences its FutureWarning at every start.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(include_dashboard=False, logging_level=logging.WARNING, **kwargs)


def start_local_ray(num_cpus: int | None, *, log_to_driver: bool = True) -> None:
    """``ray.init`` a local Ray instance of ``num_cpus`` CPUs (None: all cores), without
    the dashboard. When Ray's node misses Ray's fixed 30 s start-up wait, the half-started
    processes it leaves behind are stopped and the start is tried again, up to
    ``LOCAL_START_ATTEMPTS`` times.

    Raises ``BackendError`` when Ray cannot start (the last attempt's reason in it).
    """
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            _init_ray(num_cpus=num_cpus, log_to_driver=log_to_driver)
            return
        except Exception as exc:  # Ray raises a bare Exception on its start-up timeout
            if _STARTUP_TIMEOUT not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                raise BackendError(f"cannot start Ray locally: {exc}") from exc
            log.warning(
                "Ray's local node did not start within Ray's 30 s (attempt %d of %d); "
                "stopping what it started and trying again",
                attempt,
                LOCAL_START_ATTEMPTS,
            )
            ray.shutdown()
            # This process's children running Ray's code: GCS, raylet, monitors.
            for pid in child_processes(os.path.dirname(ray.__file__).encode()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class _CopyingPool(DataPool):
    """A pool over Ray's read-only shared arrays whose ``node`` copies the node's slices:
    torch warns on (and must never write to) a read-only array."""

    def node(self, s: NodeSlices) -> NodeData:
        """Node ``s``'s data, copied out of the shared arrays."""
        return _copied(super().node(s))


def _copied(nd: NodeData) -> NodeData:
    """``nd`` with its examples copied (writable, owned)."""
    train, val, test = (
        replace(ds, x=np.array(ds.x), y=np.array(ds.y)) for ds in (nd.train, nd.val, nd.test)
    )
    return replace(nd, train=train, val=val, test=test)


# This worker process's template and pool, and the object references they came from.
_state: tuple[tuple[str, ...], torch.nn.Module, DataPool | None] | None = None


def _worker_state(refs: list[Any], flower_level: int) -> tuple[torch.nn.Module, DataPool | None]:
    """The template and pool behind ``refs`` (``[template, x, y]`` or ``[template]``),
    fetched once per worker process and run; Flower logs at the driver's level."""
    global _state
    set_flower_log_level(flower_level)
    key = tuple(r.hex() for r in refs)
    if _state is None or _state[0] != key:
        torch.set_num_threads(1)
        values = ray.get(refs)
        pool = _CopyingPool(values[1], values[2]) if len(values) == 3 else None
        _state = (key, values[0], pool)
    return _state[1], _state[2]


def _copy_weights(weights: list[np.ndarray] | None) -> list[np.ndarray] | None:
    return None if weights is None else [np.array(w) for w in weights]


def _writable(task: GroupTask) -> GroupTask:
    """``task`` with its arrays writable (Ray hands large ones over read-only)."""
    members = tuple(
        replace(
            m,
            data=_copied(m.data) if isinstance(m.data, NodeData) else m.data,
            weights=_copy_weights(m.weights),
        )
        for m in task.members
    )
    return replace(task, initial=[np.array(w) for w in task.initial], members=members)


# Results travel pickled: the driver unpickles arrays it owns (writable, not pinning
# Ray's object store), as the other backends hand them back.
@ray.remote(num_cpus=1)
def _group_round(task: GroupTask, refs: list[Any], flower_level: int) -> bytes:
    template, pool = _worker_state(refs, flower_level)
    return pickle.dumps(run_group_task(_writable(task), template, pool), protocol=5)


@ray.remote(num_cpus=1)
def _warm(refs: list[Any], flower_level: int) -> int:
    _worker_state(refs, flower_level)
    return os.getpid()


@ray.remote(num_cpus=1)
def _bare(task: GroupTask, refs: list[Any], flower_level: int) -> bytes:
    template, pool = _worker_state(refs, flower_level)
    return pickle.dumps(run_bare_task(_writable(task), template, pool), protocol=5)


# The HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113, 3.4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _check_reachable(address: str) -> None:
    """Raise ``BackendError`` naming ``address`` when nothing accepts a TCP connection
    there, or what does is no gRPC (HTTP/2) server as Ray's GCS is (``host:port`` or
    ``ray://host:port``; other forms, e.g. ``auto``, pass)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection(
            (host.strip("[]") or "127.0.0.1", int(port)), CONNECT_TIMEOUT_S
        ) as conn:
            # Ray's GCS speaks gRPC: HTTP/2 answers its connection preface with a SETTINGS
            # frame (type 4). Anything else there would keep ray.init retrying for minutes.
            conn.settimeout(CONNECT_TIMEOUT_S)
            conn.sendall(_HTTP2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        raise BackendError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
            "(is `ray start --head` running there?)"
        ) from exc
    if len(head) < 9 or head[3] != 0x04:
        raise BackendError(
            f"{address} answers, but not as a Ray cluster (no gRPC there; `ray start "
            "--head` prints the address to use)"
        )


def _outcome(ref: Any) -> Any:
    """``ray.get(ref)``: a task's exception is raised as itself (as the other backends
    do); a worker or node that died is a ``BackendError``."""
    try:
        return pickle.loads(ray.get(ref))
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, Exception) and not isinstance(cause, RayError):
            raise cause from exc
        raise BackendError(f"a Ray task failed: {exc}") from exc
    except RayError as exc:
        raise BackendError(f"a Ray worker died: {type(exc).__name__}: {exc}") from exc


class RayBackend:
    """Group rounds as Ray tasks, one CPU each.

    ``address``: a running cluster's (``ray start --head`` prints it, e.g.
    ``10.0.0.1:6379``); None: a local Ray instance of ``num_cpus`` CPUs (default: all
    cores), shut down by ``close``. When Ray is already initialised in this process (a
    test or a script called ``ray.init``), that instance is used and left running.
    """

    name = "ray"

    def __init__(self, num_cpus: int | None = None, address: str | None = None) -> None:
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"num_cpus must be at least 1, got {num_cpus}")
        self.num_cpus = num_cpus
        self.address = address
        self._refs: list[Any] | None = None
        self._owns_ray = False

    @property
    def workers(self) -> int:
        """CPUs Ray offers (tasks that run at once); 0 before ``start``."""
        if not ray.is_initialized():
            return 0
        return int(ray.cluster_resources().get("CPU", 0))

    def start(self, setup: WorkerSetup, pool: DataPool | None) -> None:
        """Connect to (or start, see ``start_local_ray``) Ray and put the template and
        the pool in its object store. Raises ``BackendError`` when Ray cannot start
        locally or the cluster at ``address`` cannot be reached."""
        if not ray.is_initialized():
            if self.address is None:
                start_local_ray(self.num_cpus)
            else:
                _check_reachable(self.address)
                try:
                    # A cluster's CPUs are its own: Ray refuses num_cpus when connecting.
                    # Workers' warnings (a refused input, a failed round) reach this
                    # terminal, as the processes backend's do.
                    _init_ray(address=self.address, log_to_driver=True)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise BackendError(f"cannot start Ray at {self.address}: {exc}") from exc
            self._owns_ray = True
        refs: list[Any] = [ray.put(setup.template)]
        if pool is not None:
            refs += [ray.put(np.ascontiguousarray(pool.x)), ray.put(np.ascontiguousarray(pool.y))]
        self._refs = refs
        # Start the workers now (imports, the pool fetched once), not in the first round.
        level = logging.getLogger(FLOWER_LOGGER_NAME).level
        ray.get([_warm.remote(refs, level) for _ in range(max(1, self.workers))])
        log.info("ray backend: %s CPUs", self.workers)

    def _started(self) -> list[Any]:
        if self._refs is None:
            raise BackendError("backend not started")
        return self._refs

    def run(self, tasks: Sequence[GroupTask]) -> Iterator[GroupOutcome]:
        """Submit every task; yield outcomes as they complete (``ray.wait``). Raises
        ``BackendError`` when a worker died; a task's own exception as itself."""
        refs = self._started()
        level = logging.getLogger(FLOWER_LOGGER_NAME).level
        pending = [_group_round.remote(task, refs, level) for task in tasks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield _outcome(done[0])
        finally:
            for ref in pending:
                ray.cancel(ref)

    def run_bare(self, tasks: Sequence[GroupTask]) -> dict[str, list[np.ndarray]]:
        """Bare local training (``run_bare_task``) as Ray tasks."""
        refs = self._started()
        out: dict[str, list[np.ndarray]] = {}
        level = logging.getLogger(FLOWER_LOGGER_NAME).level
        for ref in [_bare.remote(task, refs, level) for task in tasks]:
            out.update(_outcome(ref))
        return out

    def close(self) -> None:
        """Drop the object store's copies; shut Ray down if ``start`` started it."""
        self._refs = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

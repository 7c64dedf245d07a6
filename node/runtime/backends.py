"""Where the group rounds of an in-process network run: this thread, worker processes, Ray.

The group rounds of different groups in one network round are independent: each is
``node.federation.round.run_group_round`` among the group's members, from the group's
model. A backend runs many of them at once and hands back what each did. Every backend
runs the same function, ``run_group_task``, on a ``GroupTask``: it rebuilds the members'
learners from their data (views into a shared ``DataPool``), runs the round with a
``CallRecorder`` in place of the registry, and returns a ``GroupOutcome``: the round's
result, each member's state afterwards, and the registry calls the round made, in order.
The caller (the network's driver thread, which owns the registry clients) makes those
calls with ``replay``: the registry never talks to a worker, and a worker never needs a
token.

- ``SerialBackend``: in the calling thread, one group after another.
- ``ProcessBackend``: a pool of worker processes (``concurrent.futures``, spawned), one
  torch thread each; the data pool is mapped once per worker, not sent per task.
- ``node.runtime.ray_backend.RayBackend``: Ray tasks, on this machine or a cluster.

Torch threads: every worker runs ``torch.set_num_threads(1)``. The models are small
(tens of thousands of parameters, batches of 32): intra-op threads cost more in
synchronisation than they gain, and the cores are better spent on other groups.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from node.errors import ConflictError, ForbiddenError, RegistryClientError
from node.federation.adversary import AdversarialMember
from node.federation.inprocess import InMemoryFederation
from node.federation.round import GroupMember, GroupRoundResult, run_group_round
from node.federation.strategies import set_flower_log_level
from node.learning.learner import Learner
from node.learning.partition import NodeData
from node.learning.pool import DataPool, NodeSlices, PoolFile
from node.rejections import Rejections

__all__ = [
    "BACKENDS",
    "RAY_MISSING",
    "Backend",
    "BackendError",
    "CallRecorder",
    "GroupOutcome",
    "GroupTask",
    "MemberSpec",
    "ProcessBackend",
    "SerialBackend",
    "WorkerSetup",
    "child_processes",
    "make_backend",
    "merge_rejections",
    "replay",
    "run_bare_task",
    "run_group_task",
]

log = logging.getLogger(__name__)

BACKENDS = ("serial", "processes", "ray")
# Seconds a ProcessBackend waits for all its workers to start (torch imported, pool mapped).
WORKER_START_TIMEOUT_S = 300.0
# What to do when Ray, the `ray` extra, is missing (the package is not on PyPI).
RAY_MISSING = "the ray backend needs Ray, the `ray` extra: pip install -e '.[ray]' in a checkout"


class BackendError(RuntimeError):
    """A backend cannot run tasks (a worker died, Ray is missing or unreachable)."""


@dataclass(frozen=True)
class MemberSpec:
    """One member of a group round as a worker rebuilds it.

    ``data`` is where the member's examples are: ``NodeSlices`` into the run's data pool,
    or the ``NodeData`` itself (sent with the task) for a node whose data is not pooled
    (it drifted). ``weights`` (state-dict order) only for bare training
    (``run_bare_task``); a group round starts every member from the group's model.
    """

    node_id: str
    data: NodeSlices | NodeData
    seed: int
    epochs_done: int
    learning_rate: float
    batch_size: int
    momentum: float
    weights: list[np.ndarray] | None = None
    # A poisoning attack this member makes (``node.federation.adversary.ATTACKS``), for
    # studies of robustness; None: honest.
    attack: str | None = None


@dataclass(frozen=True)
class GroupTask:
    """One group round to run: group ``group_id``'s round ``round`` from ``initial``
    (arrays in state-dict order) among ``members``, aggregated by Flower ``strategy``."""

    group_id: int
    round: int
    initial: list[np.ndarray]
    members: tuple[MemberSpec, ...]
    strategy: str
    local_epochs: int
    measure_contribution: bool


# (node id or None for the host, method name, positional args, keyword args)
Call = tuple[str | None, str, tuple[Any, ...], dict[str, Any]]


class CallRecorder:
    """Stands in for the registry inside a worker: records a group round's registry calls
    in order (the host's ``upload_model`` and ``submit_contributions``, each member's
    ``report_performance`` and ``report_evaluation``), for ``replay``."""

    def __init__(self, node_id: str | None = None, calls: list[Call] | None = None) -> None:
        self._node = node_id
        self.calls: list[Call] = calls if calls is not None else []

    def member(self, node_id: str) -> CallRecorder:
        """The recorder member ``node_id`` reports through (same call list)."""
        return CallRecorder(node_id, self.calls)

    def _record(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls.append((self._node, name, args, kwargs))

    def upload_model(self, group_id: int, round: int, data: bytes) -> None:
        """Record the host's snapshot upload."""
        self._record("upload_model", (group_id, round, data), {})

    def submit_contributions(self, *args: Any, **kwargs: Any) -> None:
        """Record the host's contribution report."""
        self._record("submit_contributions", args, kwargs)

    def report_performance(self, *args: Any, **kwargs: Any) -> None:
        """Record a member's performance report."""
        self._record("report_performance", args, kwargs)

    def report_evaluation(self, *args: Any, **kwargs: Any) -> None:
        """Record a member's losses by label."""
        self._record("report_evaluation", args, kwargs)


@dataclass
class GroupOutcome:
    """What a group round did, as a worker hands it back.

    ``final`` holds the weights of members whose model after the round is not the group's
    (``result.weights``): it is empty when every member adopted it. ``epochs_done`` is
    each member's epoch count afterwards (its shuffling continues from there).
    ``rejections`` counts refused inputs by member (or ``group <id>`` for the host) and
    error kind. ``seconds``: the task's time in the worker.
    """

    group_id: int
    result: GroupRoundResult
    final: dict[str, list[np.ndarray]]
    epochs_done: dict[str, int]
    calls: list[Call]
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker receives once: the model's template (any weights; tasks load
    theirs) and the data pool (its file, for a worker on this machine)."""

    template: torch.nn.Module
    pool: PoolFile | None = None
    flower_log_level: int = logging.WARNING  # the driver's, so workers log as it does


_worker_pool: DataPool | None = None
_worker_template: torch.nn.Module | None = None


def init_worker(setup: WorkerSetup, pool: DataPool | None = None) -> None:
    """Prepare this process to run tasks: one torch thread, the template, the pool (given,
    or mapped from ``setup.pool``)."""
    global _worker_pool, _worker_template
    torch.set_num_threads(1)
    set_flower_log_level(setup.flower_log_level)
    _worker_template = setup.template
    if pool is not None:
        _worker_pool = pool
    elif setup.pool is not None:
        _worker_pool = DataPool.open(setup.pool)


def child_processes(matching: bytes, pid: int | None = None) -> list[int]:
    """Pids of the children of process ``pid`` (default: this one), started by any of its
    threads, whose command line contains ``matching``; read from
    ``/proc/<pid>/task/*/children`` (Linux; [] where there is none)."""
    found = []
    for children in Path(f"/proc/{pid or 'self'}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            if matching in cmdline:
                found.append(int(child))
    return found


# Set in a ProcessBackend worker: every worker waits here once, so that ``start`` returns
# only when all of them have started.
_all_started: threading.Barrier | None = None


def _init_spawned_worker(setup: WorkerSetup, all_started: threading.Barrier) -> None:
    """``init_worker`` for a ``ProcessBackend`` worker, which also ignores Ctrl+C and ends
    with its driver.

    A terminal's Ctrl+C reaches the whole process group; the driver handles it and stops
    the workers (an idle worker would otherwise die printing a ``KeyboardInterrupt``
    traceback). A driver killed outright (SIGKILL, the out-of-memory killer) cannot stop
    them: a thread waits on the driver's end (``multiprocessing.parent_process``), then
    removes the data pool's file, which the driver can no longer remove, and exits.
    """
    global _all_started
    _all_started = all_started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    driver = multiprocessing.parent_process()
    if driver is not None:
        threading.Thread(
            target=_end_with, args=(driver, setup.pool), name="driver-watch", daemon=True
        ).start()
    init_worker(setup)


def _end_with(driver: multiprocessing.process.BaseProcess, pool: PoolFile | None) -> None:
    driver.join()  # returns when the driver's process has ended
    if pool is not None:
        Path(pool.path).unlink(missing_ok=True)
    os._exit(1)


def _member_data(spec: MemberSpec, pool: DataPool | None) -> NodeData:
    if isinstance(spec.data, NodeData):
        return spec.data
    if pool is None:
        raise BackendError(f"{spec.node_id}: task names pooled data, but this worker has no pool")
    return pool.node(spec.data)


def _worker_state(
    template: torch.nn.Module | None, pool: DataPool | None
) -> tuple[torch.nn.Module, DataPool | None]:
    """The template and pool given, else this worker's (``init_worker``); raises
    ``BackendError`` when there is no template."""
    template = template if template is not None else _worker_template
    if template is None:
        raise BackendError("this worker was not initialised (init_worker)")
    return template, pool if pool is not None else _worker_pool


def _learner(spec: MemberSpec, template: torch.nn.Module, pool: DataPool | None) -> Learner:
    return Learner(
        template,  # a Learner copies the weights and keeps no module
        _member_data(spec, pool),
        learning_rate=spec.learning_rate,
        batch_size=spec.batch_size,
        seed=spec.seed,
        momentum=spec.momentum,
        epochs_done=spec.epochs_done,
    )


def _group_member(
    spec: MemberSpec,
    round_: int,
    template: torch.nn.Module,
    pool: DataPool | None,
    recorder: CallRecorder,
) -> GroupMember:
    learner = _learner(spec, template, pool)
    reporter, rejections = recorder.member(spec.node_id), Rejections(spec.node_id)
    if spec.attack is not None:
        return AdversarialMember(
            spec.node_id,
            learner,
            spec.attack,
            seed=round_,
            reporter=reporter,
            rejections=rejections,
        )
    return GroupMember(spec.node_id, learner, reporter=reporter, rejections=rejections)


def run_group_task(
    task: GroupTask, template: torch.nn.Module | None = None, pool: DataPool | None = None
) -> GroupOutcome:
    """Run ``task``'s group round (``run_group_round`` over ``InMemoryFederation``) with a
    ``CallRecorder`` for the registry; the learners are rebuilt from ``template`` and
    ``pool`` (default: this worker's, from ``init_worker``). Remote input never raises
    (it is counted in the outcome's ``rejections``)."""
    started = time.perf_counter()
    template, pool = _worker_state(template, pool)
    recorder = CallRecorder()
    members = [_group_member(spec, task.round, template, pool, recorder) for spec in task.members]
    host = Rejections(f"group {task.group_id}")
    result = run_group_round(
        InMemoryFederation(members, strategy=task.strategy),
        task.initial,
        group_id=task.group_id,
        round_=task.round,
        local_epochs=task.local_epochs,
        registry=recorder,
        measure_contribution=task.measure_contribution,
        rejections=host,
    )
    final: dict[str, list[np.ndarray]] = {}
    for m in members:
        weights = m.learner.get_weights()
        if not all(np.array_equal(a, b) for a, b in zip(weights, result.weights, strict=True)):
            final[m.node_id] = weights
    rejections = {r.owner: r.counts() for r in [host] + [m.rejections for m in members]}
    return GroupOutcome(
        task.group_id,
        result,
        final,
        {m.node_id: m.learner.epochs_done for m in members},
        recorder.calls,
        {owner: counts for owner, counts in rejections.items() if counts},
        time.perf_counter() - started,
    )


def run_bare_task(
    task: GroupTask, template: torch.nn.Module | None = None, pool: DataPool | None = None
) -> dict[str, list[np.ndarray]]:
    """Bare local training, the baseline the network's overhead is measured against:
    each member trains ``task.local_epochs`` epochs from its own ``weights``, alone, with
    no registry, aggregation or evaluation; returns the members' weights afterwards."""
    template, pool = _worker_state(template, pool)
    out = {}
    for spec in task.members:
        learner = _learner(spec, template, pool)
        if spec.weights is not None:
            learner.set_weights(spec.weights)
        learner.train(task.local_epochs)
        out[spec.node_id] = learner.get_weights()
    return out


def replay(
    outcome: GroupOutcome, host: Any, clients: Mapping[str, Any]
) -> RegistryClientError | None:
    """Make the registry calls ``outcome``'s round recorded, in order: the host's through
    ``host``, each member's through ``clients[node_id]``. A refused upload (409: another
    host stored a newer round; 403: no longer a member) stops the replay and is returned,
    as ``run_group_round`` would have stopped there; any other failure is logged and the
    replay goes on (the round's model is kept)."""
    for node, name, args, kwargs in outcome.calls:
        client = host if node is None else clients[node]
        try:
            getattr(client, name)(*args, **kwargs)
        except (ConflictError, ForbiddenError) as exc:
            if name == "upload_model":
                log.info("group %s: snapshot refused: %s", outcome.group_id, exc)
                return exc
            log.warning("group %s: %s refused: %s", outcome.group_id, name, exc)
        except RegistryClientError as exc:
            log.warning("group %s: %s failed: %s", outcome.group_id, name, exc)
    return None


def merge_rejections(outcome: GroupOutcome, books: Mapping[str, Rejections]) -> None:
    """Add the refused inputs a worker counted to the owners' own ``Rejections``."""
    for owner, counts in outcome.rejections.items():
        book = books.get(owner)
        if book is not None:
            book.add(counts)


class Backend(Protocol):
    """Runs group rounds; ``start`` once before the first ``run``."""

    name: str

    def start(self, setup: WorkerSetup, pool: DataPool | None) -> None:
        """Hand every worker the model template and the data pool."""

    def run(self, tasks: Sequence[GroupTask]) -> Iterator[GroupOutcome]:
        """Run ``tasks``; yield each outcome as it is done (in any order)."""

    def run_bare(self, tasks: Sequence[GroupTask]) -> dict[str, list[np.ndarray]]:
        """Bare local training of every member of ``tasks`` (``run_bare_task``)."""

    def close(self) -> None:
        """Stop the workers."""


class SerialBackend:
    """Group rounds one after another in the calling thread."""

    name = "serial"
    workers = 1

    def start(self, setup: WorkerSetup, pool: DataPool | None) -> None:
        """Keep the template and the pool for this thread."""
        self._setup, self._pool = setup, pool

    def run(self, tasks: Sequence[GroupTask]) -> Iterator[GroupOutcome]:
        """Each task in turn."""
        for task in tasks:
            yield run_group_task(task, self._setup.template, self._pool)

    def run_bare(self, tasks: Sequence[GroupTask]) -> dict[str, list[np.ndarray]]:
        """Each member trains alone, in turn."""
        out: dict[str, list[np.ndarray]] = {}
        for task in tasks:
            out.update(run_bare_task(task, self._setup.template, self._pool))
        return out

    def close(self) -> None:
        """Nothing to stop."""


def _started_worker(_: int) -> int:
    """This worker's pid, once every worker has started (each takes one such task)."""
    if _all_started is not None:
        _all_started.wait(WORKER_START_TIMEOUT_S)
    return os.getpid()


def _bare_in_worker(task: GroupTask) -> dict[str, list[np.ndarray]]:
    return run_bare_task(task)


class ProcessBackend:
    """Group rounds on ``workers`` spawned processes (default: one per core).

    Spawned, not forked: the driver runs threads (the registry's client pools, maybe
    the registry itself), and forking a threaded process is unsafe. Each worker imports
    torch once, maps the data pool once and keeps the model template.
    """

    name = "processes"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        self._executor: ProcessPoolExecutor | None = None
        self.pids: list[int] = []  # the workers', once started

    def start(self, setup: WorkerSetup, pool: DataPool | None) -> None:
        """Spawn the workers and return when every one has started (imported torch,
        mapped the pool): not in the first round. ``pool`` is written with ``to_file``
        unless ``setup`` names its file. Raises ``BackendError`` when a worker dies or
        does not start within ``WORKER_START_TIMEOUT_S``."""
        if pool is not None and setup.pool is None:
            setup = WorkerSetup(setup.template, pool.to_file(), setup.flower_log_level)
        context = multiprocessing.get_context("spawn")
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=context,
            initializer=_init_spawned_worker,
            initargs=(setup, context.Barrier(self.workers)),
        )
        try:
            self.pids = list(self._executor.map(_started_worker, range(self.workers)))
        except BrokenProcessPool as exc:
            raise BackendError(f"a worker process died while starting: {exc}") from exc
        except threading.BrokenBarrierError as exc:
            raise BackendError(
                f"the {self.workers} worker processes did not all start within "
                f"{WORKER_START_TIMEOUT_S:.0f} s"
            ) from exc

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            raise BackendError("backend not started")
        return self._executor

    def run(self, tasks: Sequence[GroupTask]) -> Iterator[GroupOutcome]:
        """Submit every task; yield outcomes as they complete. Raises ``BackendError``
        when a worker process died."""
        pending: set[Future[GroupOutcome]] = {
            self._pool().submit(run_group_task, task) for task in tasks
        }
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BrokenProcessPool as exc:
            raise BackendError(f"a worker process died: {exc}") from exc
        finally:
            for future in pending:
                future.cancel()

    def run_bare(self, tasks: Sequence[GroupTask]) -> dict[str, list[np.ndarray]]:
        """Bare local training on the workers."""
        out: dict[str, list[np.ndarray]] = {}
        try:
            for part in self._pool().map(_bare_in_worker, tasks):
                out.update(part)
        except BrokenProcessPool as exc:
            raise BackendError(f"a worker process died: {exc}") from exc
        return out

    def close(self) -> None:
        """Stop the workers."""
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None


def make_backend(name: str, *, workers: int | None = None, address: str | None = None) -> Backend:
    """The backend called ``name`` (one of ``BACKENDS``). ``workers``: processes (or Ray
    CPUs); ``address``: a Ray cluster's (``ray start --head`` prints it). Raises
    ``ValueError`` for an unknown name and ``BackendError`` when Ray is not installed."""
    if name == "serial":
        return SerialBackend()
    if name == "processes":
        return ProcessBackend(workers)
    if name == "ray":
        try:
            from node.runtime.ray_backend import RayBackend
        except ImportError as exc:
            raise BackendError(RAY_MISSING) from exc
        return RayBackend(num_cpus=workers, address=address)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")

"""Simulations the registry runs against itself: records, a worker per run, live logs.

Each simulation is a subprocess (`python -m mycelium.simulation_worker`) running the
in-process runtime against this registry's own URL: torch and its threads stay out of
the server process, a crash cannot take the registry down, and the log is simply the
child's stdout. A thread per run pumps those lines into `simulation_logs` (so a stream
can replay from the start and then follow) and writes the record's final status.

With several workers, any worker takes `POST /simulations`: it records the request as a
`queued` row (the capacity check counts queued rows too) and the registry URL the run
should use in the run's output folder. Only the leader worker (registry.leader) runs
simulations: its runner claims queued rows (``queued -> running`` in one UPDATE, so a
row is claimed once) within `_PICKUP_SECONDS`, at once when it took the request itself.
The records and logs live in the database, so reads and streams work on every worker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, text, update
from sqlalchemy.orm import Session

from registry.db import Database
from registry.errors import NotFoundError, RegistryError
from registry.events import EventBus, EventType, record_event
from registry.models import Simulation, SimulationLog, utcnow
from registry.schemas import SimulationCreate, SimulationPublic
from registry.settings import RegistrySettings

__all__ = [
    "FINAL",
    "BusyError",
    "SimulationManager",
    "Status",
    "child_environment",
    "get_simulation",
    "list_simulations",
    "log_lines",
]

log = logging.getLogger(__name__)


# What a simulation worker needs from the registry's environment: to find Python and its
# packages, locale and temp dir, proxies and CA certificates to reach the registry's URL,
# and the thread/telemetry knobs of torch and Flower. Nothing of the registry's own
# (MYCELIUM_REGISTRY_*: the admin token, the database URL with its password).
CHILD_ENV_NAMES = frozenset(
    {
        "PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "VIRTUAL_ENV", "HOME", "USER",
        "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
        "no_proxy", "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    }
)  # fmt: skip
CHILD_ENV_PREFIXES = ("LC_", "FLWR_", "OMP_", "MKL_", "OPENBLAS_", "TORCH_", "CUDA_", "COVERAGE_")


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` a simulation worker may see (CHILD_ENV_NAMES and
    CHILD_ENV_PREFIXES); everything else, the registry's secrets included, stays here."""
    return {
        name: value
        for name, value in environ.items()
        if name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES)
    }


class Status:
    """Life of a simulation record."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


FINAL = frozenset({Status.FINISHED, Status.FAILED})
ACTIVE = (Status.QUEUED, Status.RUNNING)
_ADVISORY_KEY = 0x6D7963  # serialises the "how many run" check across PostgreSQL workers
_PICKUP_SECONDS = 0.5
STALE_QUEUED_S = 60.0  # a request no leader picked up for this long is failed, not run
_REQUEST_FILE = "request.json"
_FLUSH_SECONDS = 0.2
_FLUSH_LINES = 200
_MAX_LINE = 2000


class BusyError(RegistryError):
    """As many simulations as allowed are running already."""

    status = 429


def list_simulations(
    session: Session, *, offset: int, limit: int
) -> tuple[Sequence[Simulation], int]:
    """A page of records, newest first, with the total count."""
    total = session.scalar(select(func.count()).select_from(Simulation)) or 0
    rows = session.scalars(
        select(Simulation).order_by(Simulation.id.desc()).offset(offset).limit(limit)
    ).all()
    return rows, total


def get_simulation(session: Session, *, sim_id: int) -> Simulation:
    """One record; NotFoundError when unknown."""
    sim = session.get(Simulation, sim_id)
    if sim is None:
        raise NotFoundError(f"no simulation {sim_id}")
    return sim


def log_lines(
    session: Session, *, sim_id: int, after_id: int, limit: int
) -> Sequence[SimulationLog]:
    """A simulation's log lines after a line id, oldest first."""
    return session.scalars(
        select(SimulationLog)
        .where(SimulationLog.simulation_id == sim_id, SimulationLog.id > after_id)
        .order_by(SimulationLog.id)
        .limit(limit)
    ).all()


class SimulationManager:
    """Records simulation requests (any worker, at most `max_simulations` active at
    once) and, in the leader worker only (between `lead` and `step_down`), runs them."""

    def __init__(self, db: Database, settings: RegistrySettings) -> None:
        self.db = db
        self.settings = settings
        self.logs = EventBus()  # wakes log streams when lines are written
        self._procs: dict[int, subprocess.Popen[str]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closing = False
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._runner: threading.Thread | None = None

    def recover(self) -> int:
        """Mark as failed the records a previous leader (a registry process, or a worker
        that died) left running, and requests queued longer than `STALE_QUEUED_S` (no one
        led for that long: the registry was down); fresher queued requests stay to run."""
        stale = utcnow() - dt.timedelta(seconds=STALE_QUEUED_S)
        with self.db.write() as session:
            running = list(
                session.scalars(select(Simulation.id).where(Simulation.status == Status.RUNNING))
            )
            old = list(
                session.scalars(
                    select(Simulation.id).where(
                        Simulation.status == Status.QUEUED, Simulation.created_at < stale
                    )
                )
            )
            for sim_id in running:
                why = "the registry worker running it stopped"
                self._finish(session, sim_id, Status.FAILED, error=why)
            for sim_id in old:
                why = f"not started within {STALE_QUEUED_S:.0f} s (the registry was down)"
                self._finish(session, sim_id, Status.FAILED, error=why)
        if running or old:
            log.warning("marked %d unfinished simulations as failed", len(running) + len(old))
        return len(running) + len(old)

    def start(self, params: SimulationCreate, registry_url: str) -> SimulationPublic:
        """Record a simulation request for the leader to run; BusyError when too many are
        queued or running. OSError when its output folder cannot be written."""
        if self._closing:
            raise BusyError("the registry is shutting down")
        with self.db.write() as session:
            if not self.db.is_sqlite:
                session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
            active = session.scalar(select(func.count()).where(Simulation.status.in_(ACTIVE)))
            if (active or 0) >= self.settings.max_simulations:
                raise BusyError(
                    f"{active} simulation(s) running; at most "
                    f"{self.settings.max_simulations} at once, retry later"
                )
            sim = Simulation(params=params.model_dump(), status=Status.QUEUED, created_at=utcnow())
            session.add(sim)
            session.flush()
            out = SimulationPublic.model_validate(sim)
            # Before the commit, so the leader never sees the row without its URL.
            folder = self.output_dir(out.id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / _REQUEST_FILE).write_text(json.dumps({"registry_url": registry_url}))
        self._wake.set()  # when this worker leads, it starts the run now
        return out

    def lead(self) -> None:
        """Become the worker that runs simulations: fail what a previous leader left
        running, then run queued requests as they come."""
        self.recover()
        self._halt.clear()
        self._runner = threading.Thread(
            target=self._pickup_loop, name="simulation-runner", daemon=True
        )
        self._runner.start()

    def step_down(self, timeout: float = 10.0) -> None:
        """Stop running simulations: stop picking up requests, stop every running one
        (SIGTERM, then SIGKILL) and wait for its thread."""
        self._halt.set()
        self._wake.set()
        if self._runner is not None:
            self._runner.join(timeout)
            self._runner = None
        with self._lock:
            procs = list(self._procs.values())
            threads = list(self._threads)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for thread in threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self.logs.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Refuse new requests and stop running simulations (see `step_down`)."""
        self._closing = True
        self.step_down(timeout)

    def _pickup_loop(self) -> None:
        while not self._halt.is_set():
            try:
                self._pickup()
            except Exception:  # the database is away: the next pass tries again
                log.exception("simulations: could not pick up queued requests")
            self._wake.wait(_PICKUP_SECONDS)
            self._wake.clear()

    def _pickup(self) -> None:
        with self.db.read() as session:
            queued = session.execute(
                select(Simulation.id, Simulation.params)
                .where(Simulation.status == Status.QUEUED)
                .order_by(Simulation.id)
            ).all()
        for sim_id, raw_params in queued:
            if self._halt.is_set():
                return
            with self.db.write() as session:
                result = session.execute(
                    update(Simulation)
                    .where(Simulation.id == sim_id, Simulation.status == Status.QUEUED)
                    .values(status=Status.RUNNING)
                )
                claimed = cast("CursorResult[Any]", result).rowcount
            if claimed != 1:
                continue
            thread = threading.Thread(
                target=self._run_request,
                args=(sim_id, raw_params),
                name=f"simulation-{sim_id}",
                daemon=True,
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _run_request(self, sim_id: int, raw_params: dict[str, Any]) -> None:
        try:
            params = SimulationCreate.model_validate(raw_params)
            request = json.loads((self.output_dir(sim_id) / _REQUEST_FILE).read_text())
            registry_url = str(request["registry_url"])
        except (ValueError, OSError, KeyError, TypeError) as exc:
            log.warning("simulation %s: unreadable request: %s", sim_id, exc)
            with self.db.write() as session:
                self._finish(session, sim_id, Status.FAILED, error=f"unreadable request: {exc}")
            self.logs.notify()
            return
        self._run(sim_id, params, registry_url)

    # --- the worker thread -------------------------------------------------------------

    def _command(self, sim_id: int, params: SimulationCreate, registry_url: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mycelium.simulation_worker",
            "--registry-url",
            registry_url,
            "--output",
            str(self.output_dir(sim_id)),
            "--node-prefix",
            f"sim{sim_id}",
            "--params",
            params.model_dump_json(),
        ]

    def output_dir(self, sim_id: int) -> Path:
        """Where a simulation writes its summary.json."""
        return (self.settings.simulations_dir / str(sim_id)).resolve()

    def _run(self, sim_id: int, params: SimulationCreate, registry_url: str) -> None:
        lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        tail: list[str] = []
        try:
            self.output_dir(sim_id).mkdir(parents=True, exist_ok=True)
            env = {
                **child_environment(os.environ),
                "PYTHONUNBUFFERED": "1",
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
            }
            proc = subprocess.Popen(
                self._command(sim_id, params, registry_url),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                env=env,
                start_new_session=True,  # its own process group: shutdown stops it all
            )
        except Exception as exc:  # could not even start: the record says why
            log.exception("simulation %s could not start", sim_id)
            with self.db.write() as session:
                self._finish(session, sim_id, Status.FAILED, error=f"could not start: {exc}")
            self.logs.notify()
            return
        with self._lock:
            self._procs[sim_id] = proc
        if self._halt.is_set():  # step_down took its list of children before this one
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        with self.db.write() as session:
            session.execute(
                update(Simulation)
                .where(Simulation.id == sim_id)
                .values(status=Status.RUNNING, started_at=utcnow())
            )
            record_event(
                session,
                EventType.SIMULATION_STARTED,
                simulation_id=sim_id,
                params=params.model_dump(),
                pid=proc.pid,
            )
        log.info("simulation %s started (pid %s)", sim_id, proc.pid)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n")[:_MAX_LINE])
            lines.put(None)

        reader = threading.Thread(target=read, name=f"simulation-{sim_id}-out", daemon=True)
        reader.start()
        pending: list[str] = []
        last_flush = time.monotonic()
        done = False
        while not done:
            try:
                item = lines.get(timeout=_FLUSH_SECONDS)
                if item is None:
                    done = True
                else:
                    pending.append(item)
                    tail = [*tail[-19:], item]
            except queue.Empty:
                pass
            now = time.monotonic()
            if pending and (
                done or len(pending) >= _FLUSH_LINES or now - last_flush >= _FLUSH_SECONDS
            ):
                self._write_lines(sim_id, pending)
                pending = []
                last_flush = now
        rc = proc.wait()
        reader.join(5)
        with self._lock:
            self._procs.pop(sim_id, None)
        self._complete(sim_id, rc, tail)

    def _write_lines(self, sim_id: int, batch: list[str]) -> None:
        try:
            with self.db.write() as session:
                session.add_all(
                    SimulationLog(simulation_id=sim_id, line=line, created_at=utcnow())
                    for line in batch
                )
        except Exception:  # a lost log line must not stop the run's bookkeeping
            log.exception("simulation %s: could not store %d log lines", sim_id, len(batch))
        self.logs.notify()

    def _complete(self, sim_id: int, rc: int, tail: list[str]) -> None:
        summary_path = self.output_dir(sim_id) / "summary.json"
        summary: dict[str, Any] | None = None
        if summary_path.exists():
            with contextlib.suppress(ValueError, OSError):
                summary = _json_clean(json.loads(summary_path.read_text()))
        with self.db.write() as session:
            if rc == 0 and summary is not None:
                metrics = {
                    **summary.get("final", {}),
                    "rounds": summary.get("rounds"),
                    "elapsed_seconds": summary.get("elapsed_seconds"),
                }
                self._finish(session, sim_id, Status.FINISHED, metrics=metrics, summary=summary)
            else:
                why = "stopped" if self._halt.is_set() else f"exited with status {rc}"
                error = f"the simulation {why}" + ("\n" + "\n".join(tail[-5:]) if tail else "")
                self._finish(session, sim_id, Status.FAILED, error=error, summary=summary)
        self.logs.notify()
        log.info("simulation %s ended with status %s", sim_id, rc)

    @staticmethod
    def _finish(
        session: Session,
        sim_id: int,
        status: str,
        *,
        metrics: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        sim = session.get(Simulation, sim_id)
        if sim is None:
            return
        sim.status = status
        sim.finished_at = utcnow()
        sim.metrics = metrics
        sim.summary = summary
        sim.error = error
        record_event(
            session,
            EventType.SIMULATION_FINISHED,
            simulation_id=sim_id,
            status=status,
            metrics=metrics,
            error=error,
        )


def _json_clean(value: Any) -> Any:
    """`value` with NaN and infinities as None: PostgreSQL's JSON type refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_clean(v) for v in value]
    return value

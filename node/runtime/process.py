"""One node as its own process: wall-clock loops around NodeAgent and a group's Flower federation.

Threads, each with one job:

- main: the decisions (register, choose or create a group, re-evaluate every
  ``group_evaluation_interval_s`` seconds, migrate) through ``NodeAgent``;
- heartbeat: every ``heartbeat_interval_s`` seconds;
- events (with ``event_stream``, the default): follows the registry's event stream of the
  node's domain (``node.runtime.follow``) and wakes the main thread's re-evaluation at once
  when another group's snapshot or a membership changes, at most every
  ``event_wake_gap_s`` seconds; the interval stays as the fallback;
- member: the Flower client of the node's current group. Before each connection it
  asks the registry for the host with an atomic claim: when the group has no live
  host the claim is granted and this node starts hosting, else it connects to the
  host returned. A host that dies breaks the stream; the members claim again and
  exactly one wins once the registry has expired the dead host;
- host (only on the group's host): the group's Flower server. It resumes from the
  group's latest snapshot in the registry, runs one round at a time among the
  members connected, uploads each aggregated model as round ``previous + 1`` and
  re-checks its claim before every round. Each round is
  ``node.federation.round.run_group_round`` over Flower's gRPC link: members report
  their own evaluation, the host uploads the snapshot and submits contributions.

Only members take part: the host asks the registry for the group's round key and
admits a Flower client only with a valid round ticket of a current member
(``node.round_tickets``); each member asks for its ticket before connecting. With
``tls_certfile``/``tls_keyfile`` the host serves TLS; with ``ca_cert`` members verify
the host (and the registry) against that CA.

Failures are loud: a thread that dies (heartbeat, member, host) is logged, stops the
node and ``run`` raises its error; a Flower server that cannot bind (its port taken)
raises ``ListenError``. The node leaves its group first, so the registry stops naming
it as host. The ``node`` command prints the error on one line and exits with status 1.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flwr.common import Scalar

from node.addresses import Address, advertised_host, free_port, parse_address
from node.config import NodeConfig
from node.credentials import CredentialStore
from node.errors import (
    ConfigError,
    ConflictError,
    ForbiddenError,
    NodeError,
    NotFoundError,
    RegistryClientError,
    RemoteInputError,
    SessionEnded,
)
from node.federation.keys import GROUP_ID_KEY
from node.federation.link import GroupServer, LinkFederation, LinkMember, RpcError, run_client
from node.federation.round import (
    GroupMember,
    MemberEvaluation,
    latest_group_model,
    run_group_round,
)
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import PartitionSpec
from node.registry_client import EventPublic, RegistryClient
from node.round_tickets import TicketGate
from node.runtime.agent import NodeAgent
from node.runtime.follow import EventFollower
from node.runtime.policy import Leave, Migrate, PolicyConfig

__all__ = [
    "NodeProcess",
    "ProcessOptions",
    "load_tls",
    "registration_ordinal",
]

log = logging.getLogger(__name__)

_LOOP_STEP = 0.2


@dataclass(frozen=True)
class ProcessOptions:
    """How a node process runs its group's federation; ``_s`` fields are seconds."""

    listen: str | None = None  # where the host's Flower server binds; default 0.0.0.0:<port>
    round_timeout_s: float = 30.0  # a member slower than this is dropped from the round
    join_wait_s: float = 2.0  # how long a host waits for the group's members before a round
    round_pause_s: float = 0.0  # pause between a group's rounds
    host_retry_s: float = 0.5  # pause before looking for a host again
    warmup_epochs: int = 1  # local training before the first group choice
    measure_contribution: bool = True  # as host: leave-one-out contributions, to the ledger
    ca_cert: Path | None = None  # PEM CA that the registry's and hosts' certificates chain to
    tls_certfile: Path | None = None  # PEM certificate this node's Flower server presents
    tls_keyfile: Path | None = None  # its PEM private key


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} {path}: not a PEM file")
    return data


def load_tls(options: ProcessOptions) -> tuple[bytes | None, tuple[bytes, bytes, bytes] | None]:
    """The CA certificate members verify hosts with, and Flower's (CA, certificate, key)
    tuple this node serves with (None: plaintext), read from ``options``' PEM files.

    Raises ``ConfigError`` naming the file that is missing, unreadable or not PEM, or the
    flag missing from the certificate/key pair.
    """
    ca = _read_pem(options.ca_cert, "--ca-cert") if options.ca_cert else None
    cert_file, key_file = options.tls_certfile, options.tls_keyfile
    if (cert_file is None) != (key_file is None):
        raise ConfigError("--tls-certfile and --tls-keyfile go together: give both or neither")
    if cert_file is None or key_file is None:
        return ca, None
    cert = _read_pem(cert_file, "--tls-certfile")
    key = _read_pem(key_file, "--tls-keyfile")
    return ca, (ca or cert, cert, key)  # Flower wants a CA first; it is not used to serve


def registration_ordinal(client: RegistryClient, node_id: str, domain: str) -> int:
    """This node's position among the domain's registered nodes, oldest first.

    Registration order is fixed by the registry's database, so nodes started at the
    same time still get distinct ordinals without talking to each other.
    """
    nodes = client.list_nodes(domain=domain, limit=1000).data
    order = sorted(nodes, key=lambda n: (n.registered_at, n.id))
    for i, n in enumerate(order):
        if n.id == node_id:
            return i
    raise RegistryClientError(f"node {node_id} is not among the registered nodes")


def hashed_ordinal(node_id: str) -> int:
    """A stable number from a node id (used when the registry cannot be asked)."""
    return int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:4], "big")


@dataclass
class _Session:
    """This node's part in one group's federation."""

    group_id: int
    number: int
    stop: threading.Event = field(default_factory=threading.Event)
    member: threading.Thread | None = None
    host: _Host | None = None


class _Host:
    """The group's Flower server and its round loop, in a thread of their own."""

    def __init__(self, proc: NodeProcess, session: _Session, epoch: int) -> None:
        self.proc = proc
        self.session = session
        self.epoch = epoch
        self.stop = threading.Event()
        gid = session.group_id
        self.gate = TicketGate(
            proc.client.round_key(gid),
            lambda: {m.id for m in proc.client.get_group(gid).members},
        )
        self.server = GroupServer(
            proc.listen,
            strategy=self._aggregation(),
            round_timeout_s=proc.options.round_timeout_s,
            certificates=proc.certificates,
            admit=self.gate.admit,
        )
        self.thread = threading.Thread(
            target=proc.supervised(self._run), name=f"host-g{gid}", daemon=True
        )

    def _aggregation(self) -> str:
        """The group's own strategy (set when it was created), else this node's."""
        try:
            return self.proc.client.get_group(self.session.group_id).aggregation
        except RegistryClientError as exc:
            log.warning("%s: group strategy unknown (%s)", self.proc.node_id, exc)
            return self.proc.config.strategy

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop hosting: members' streams break and they look for a new host."""
        self.stop.set()
        self.server.stop()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=self.proc.options.round_timeout_s + 5)

    def _run(self) -> None:
        proc, gid = self.proc, self.session.group_id
        member = proc.member
        latest = latest_group_model(
            proc.client,
            gid,
            member.signature,
            loss=lambda weights: proc.learner.evaluate("val", weights=weights).loss,
            rejections=proc.agent.rejections,
        )
        weights = proc.learner.get_weights()
        round_ = 0
        if latest is not None:  # resume from it, or past it when it is unusable
            weights, round_ = latest.weights or weights, latest.round
        log.info(
            "%s: hosting group %s at %s (epoch %s), resuming from round %s",
            proc.node_id, gid, proc.address, self.epoch, round_,
        )  # fmt: skip
        federation = LinkFederation(self.server, group_id=gid)
        while not self.stop.is_set():
            try:
                claim = proc.client.claim_host(gid, proc.address)
                if not claim.claimed:
                    log.info(
                        "%s: group %s is now hosted by %s; stepping down",
                        proc.node_id, gid, claim.host_node_id,
                    )  # fmt: skip
                    break
                member_ids = self.gate.set_members(
                    [m.id for m in proc.client.get_group(gid).members]
                )
                members = len(member_ids)
                self.server.keep_only(member_ids)  # those who left are left out
            except (ForbiddenError, NotFoundError) as exc:
                log.info("%s: no longer hosting group %s: %s", proc.node_id, gid, exc)
                break
            except RegistryClientError as exc:
                log.warning("%s: registry unavailable while hosting: %s", proc.node_id, exc)
                self.stop.wait(proc.options.host_retry_s)
                continue
            connected = self.server.wait_for_clients(members, proc.options.join_wait_s, self.stop)
            if self.stop.is_set():
                break
            if connected == 0:
                continue
            result = run_group_round(
                federation,
                weights,
                group_id=gid,
                round_=round_ + 1,
                local_epochs=proc.config.local_epochs,
                registry=proc.client,
                measure_contribution=proc.options.measure_contribution,
                rejections=proc.agent.rejections,
            )
            if result.refused is not None:  # another host stored a newer round, or we left
                log.info("%s: stops hosting group %s: %s", proc.node_id, gid, result.refused)
                break
            if self.stop.is_set():
                break  # the round in flight is the only thing lost
            if not result.aggregated:
                log.info("%s: group %s round %s: no results", proc.node_id, gid, round_ + 1)
                self.stop.wait(proc.options.host_retry_s)
                continue
            weights, round_ = result.weights, result.round
            acc = f"{result.accuracy:.3f}" if result.accuracy is not None else "-"
            # Rounds can run many times a second: every one at DEBUG, every tenth (and
            # any with failures) at INFO, so decisions stay readable in the log.
            level = logging.INFO if round_ % 10 == 0 or result.failures else logging.DEBUG
            log.log(
                level,
                "%s: group %s round %s: %s trained (%s failed), accuracy %s, %.2f s",
                proc.node_id, gid, round_, len(result.updates), result.failures, acc,
                result.fit_seconds + result.evaluate_seconds,
            )  # fmt: skip
            if proc.options.round_pause_s:
                self.stop.wait(proc.options.round_pause_s)
        self.server.stop()


class NodeProcess:
    """A node run with wall-clock intervals; ``run(stop)`` returns when ``stop`` is set."""

    def __init__(
        self,
        config: NodeConfig,
        data: PartitionSpec,
        options: ProcessOptions | None = None,
        *,
        partition_id: int | None = 0,
        client: RegistryClient | None = None,
    ) -> None:
        if not config.node_id:
            raise ValueError("a node process needs a node id")
        self.config = config
        self.node_id: str = config.node_id
        self.data_spec = data
        self.options = options or ProcessOptions()
        advertised = parse_address(config.node_address, allow_port_zero=True)
        port = advertised.port or free_port()
        self.address = str(Address(advertised_host(advertised.host), port))
        listen = parse_address(self.options.listen or "0.0.0.0:0", allow_port_zero=True)
        self.listen = str(Address(listen.host, listen.port or port))  # port 0: the advertised one
        self.ca_cert, self.certificates = load_tls(self.options)
        self.client = client or RegistryClient(
            config.registry_url,
            retries=4,
            backoff=0.25,
            ca_cert=self.options.ca_cert,
            credentials=CredentialStore(config.data_dir),
        )
        self.partition_id = partition_id  # None: the registry's order decides
        self.rounds_done = 0
        self.last_accuracy: float | None = None
        self._agent_lock = threading.RLock()
        self._session: _Session | None = None
        self._sessions = 0
        self._choices = 0
        self._next_try = 0.0  # monotonic time of the next registration or group choice
        self.rounds_alone = 0
        self._learner: Learner | None = None
        self._agent: NodeAgent | None = None
        self._group_member: GroupMember | None = None
        self._failed = threading.Event()
        self.failure: BaseException | None = None  # what ended a thread of this node
        self.reevaluations = 0  # of its group, on the interval or woken by an event
        self.follower: EventFollower | None = None  # with config.event_stream, once running
        self._woken_by: EventPublic | None = None  # the event that asks for a re-evaluation
        self._woken = threading.Event()
        self._last_wake = -float("inf")  # monotonic time of the last re-evaluation an event woke
        self._follow_stop = threading.Event()

    # --- set-up ------------------------------------------------------------------------

    @property
    def learner(self) -> Learner:
        """This node's learner (after ``prepare``)."""
        if self._learner is None:
            raise RuntimeError("call prepare() first")
        return self._learner

    @property
    def member(self) -> GroupMember:
        """This node's part in its group's rounds (after ``prepare``)."""
        if self._group_member is None:
            raise RuntimeError("call prepare() first")
        return self._group_member

    @property
    def agent(self) -> NodeAgent:
        """This node's agent (after ``prepare``)."""
        if self._agent is None:
            raise RuntimeError("call prepare() first")
        return self._agent

    def _resolve_partition(self) -> int:
        if self.partition_id is not None:
            return self.partition_id
        n = self.data_spec.num_partitions
        try:
            self.client.register(self.node_id, self.address, self.config.domain)
            ordinal = registration_ordinal(self.client, self.node_id, self.config.domain)
        except RegistryClientError as exc:
            ordinal = hashed_ordinal(self.node_id)
            log.warning("%s: registry not asked for a partition (%s); hashing", self.node_id, exc)
        log.info("%s: partition %s of %s (auto)", self.node_id, ordinal % n, n)
        return ordinal % n

    def prepare(self) -> None:
        """Load this node's data share, build its model and agent, warm up locally."""
        cfg = self.config
        self.partition_id = self._resolve_partition()
        data = self.data_spec.share(self.partition_id)
        self._learner = Learner(
            build_model(self.data_spec.dataset, seed=cfg.seed + self.partition_id),
            data,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            epochs=cfg.local_epochs,
            seed=cfg.seed + self.partition_id,
        )
        self._agent = NodeAgent(
            node_id=self.node_id,
            learner=self._learner,
            client=self.client,
            domain=cfg.domain,
            address=self.address,
            policy=cfg.policy,
            policy_config=PolicyConfig(cfg.switch_threshold, cfg.cooldown_rounds, cfg.top_k),
            max_capacity=cfg.max_capacity,
            aggregation=cfg.strategy,
            cluster=data.cluster,
        )
        self._group_member = GroupMember(
            self.node_id, self._learner, reporter=self.client, rejections=self._agent.rejections
        )
        if self.options.warmup_epochs:
            self._learner.train(self.options.warmup_epochs)
        self.last_accuracy = self._learner.evaluate("val").accuracy

    # --- the loops ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set, then leave the group and stop Flower."""
        if self._agent is None:
            self.prepare()
        beat = threading.Thread(
            target=self.supervised(self._heartbeats), args=(stop,), name="heartbeat"
        )
        beat.daemon = True
        beat.start()
        if self.config.event_stream:
            self._start_following()
        next_evaluation = time.monotonic() + self.config.group_evaluation_interval_s
        try:
            while not stop.is_set() and not self._failed.is_set():
                evaluate = self._take_wake() or time.monotonic() >= next_evaluation
                self._decide(evaluate)
                if evaluate:
                    next_evaluation = time.monotonic() + self.config.group_evaluation_interval_s
                self._follow_group()
                if self.agent.group_id is None and time.monotonic() < self._next_try:
                    self._learn_alone()
                stop.wait(_LOOP_STEP)
        finally:
            self.shutdown()
        if self.failure is not None:
            if isinstance(self.failure, NodeError):
                raise self.failure
            raise NodeError(f"a thread of node {self.node_id} died: {self.failure!r}")

    def supervised(self, target: Callable[..., None]) -> Callable[..., None]:
        """``target`` as a thread's body whose death stops this node: the error is logged
        and kept (``failure``), and ``run`` ends and raises it."""

        def body(*args: object) -> None:
            try:
                target(*args)
            except BaseException as exc:  # SystemExit too: Flower exits where it should raise
                name = threading.current_thread().name
                if isinstance(exc, NodeError):
                    log.error("%s: %s thread stopped: %s", self.node_id, name, exc)
                else:
                    log.exception("%s: %s thread died", self.node_id, name)
                if self.failure is None:
                    self.failure = exc
                self._failed.set()

        return body

    def _start_following(self) -> None:
        self.follower = EventFollower(
            self.client,
            domain=self.config.domain,
            node_id=self.node_id,
            group_id=lambda: self.agent.group_id,
            wake=self._wake,
        )
        follow = threading.Thread(
            target=self.supervised(self.follower.run), args=(self._follow_stop,), name="events"
        )
        follow.daemon = True  # may sit in a read until the registry's next ping
        follow.start()

    def _wake(self, event: EventPublic) -> None:
        """Ask the main thread to re-evaluate now (called by the follower's thread)."""
        self._woken_by = event
        self._woken.set()

    def _take_wake(self) -> bool:
        """True (once) when an event asked for a re-evaluation and the last one an event
        woke is ``event_wake_gap_s`` seconds past; a node backing off tries again too."""
        now = time.monotonic()
        if not self._woken.is_set() or now - self._last_wake < self.config.event_wake_gap_s:
            return False
        self._woken.clear()
        self._last_wake = now
        self._next_try = 0.0
        event = self._woken_by
        if event is not None:
            log.info(
                "%s: re-evaluating now: %s (node %s, group %s)",
                self.node_id, event.type, event.node_id, event.group_id,
            )  # fmt: skip
        return True

    def _decide(self, evaluate: bool) -> None:
        agent = self.agent
        with self._agent_lock:
            try:
                unplaced = not agent.registered or agent.group_id is None
                if unplaced and time.monotonic() < self._next_try:
                    return  # refused or unreachable a moment ago: learning alone meanwhile
                if not agent.registered and not agent.ensure_registered():
                    self._back_off("not registered")
                    return
                if agent.group_id is None:
                    self._choices += 1
                    if agent.choose_group(max(self.rounds_done, self._choices)) is None:
                        self._back_off("no group")
                elif evaluate and agent.group_id is not None:
                    self.reevaluations += 1
                    decision = agent.reconsider(self.rounds_done)
                    if decision is not None and not isinstance(decision, Migrate | Leave):
                        log.info(
                            "%s: stays in group %s: %s",
                            self.node_id, agent.group_id, decision.reason,
                        )  # fmt: skip
            except RegistryClientError as exc:
                log.warning("%s: registry refused a decision: %s", self.node_id, exc)

    def _heartbeats(self, stop: threading.Event) -> None:
        while not stop.wait(self.config.heartbeat_interval_s):
            metrics: dict[str, float] = {
                "rounds": float(self.rounds_done),
                "rounds_alone": float(self.rounds_alone),
            }
            if self.last_accuracy is not None:
                metrics["accuracy"] = self.last_accuracy
            with self._agent_lock:
                if self.agent.registered:
                    self.agent.heartbeat(metrics)

    def _back_off(self, why: str) -> None:
        """Try the registry again at the next heartbeat, not at once; learn alone until then."""
        wait = self.config.heartbeat_interval_s
        self._next_try = time.monotonic() + wait
        log.info("%s: %s; learning alone, trying again in %.1f s", self.node_id, why, wait)

    def _learn_alone(self) -> None:
        """One round of local training while this node has no group."""
        with self._agent_lock:
            self.learner.train()
            self.rounds_alone += 1
            self.last_accuracy = self.learner.evaluate("val").accuracy

    def _follow_group(self) -> None:
        """Keep one federation session, for the group the agent is in."""
        gid = self.agent.group_id
        session = self._session
        if session is not None and session.group_id != gid:
            self._end_session()
            session = None
        if gid is not None and session is None:
            self._sessions += 1
            session = _Session(group_id=gid, number=self._sessions)
            session.member = threading.Thread(
                target=self.supervised(self._member),
                args=(session,),
                name=f"member-g{gid}",
                daemon=True,
            )
            self._session = session
            session.member.start()

    def _end_session(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        session.stop.set()
        if session.host is not None:
            session.host.close()
            session.host = None

    def _find_host(self, session: _Session) -> str | None:
        """The address to connect to: this node's own after a granted claim, else the host's."""
        gid = session.group_id
        try:
            claim = self.client.claim_host(gid, self.address)
        except (ForbiddenError, NotFoundError):
            return None  # left or expelled: the main loop notices and moves on
        except RegistryClientError as exc:
            log.warning("%s: cannot ask who hosts group %s: %s", self.node_id, gid, exc)
            return None
        if claim.claimed:
            if session.host is not None and not session.host.thread.is_alive():
                session.host.close()  # it stepped down on its own: serve afresh
                session.host = None
            if session.host is None and not session.stop.is_set():
                try:  # a ListenError (port taken, bad certificates) ends the node: loud
                    session.host = _Host(self, session, claim.host_epoch)
                except (ForbiddenError, NotFoundError):
                    return None  # no longer its host, or no longer a member
                except RegistryClientError as exc:
                    log.warning("%s: no round key for group %s: %s", self.node_id, gid, exc)
                    return None
                session.host.start()
            return self.address
        if session.host is not None:  # lost the hosting while still serving
            session.host.close()
            session.host = None
        return claim.host_address

    def _ticket(self, session: _Session) -> str | None:
        """This member's round ticket for the group's current host (None: not now)."""
        try:
            return self.client.round_ticket(session.group_id).ticket
        except (ForbiddenError, NotFoundError):
            return None  # left or expelled: the main loop notices and moves on
        except ConflictError:
            return None  # no host at the moment: claim again
        except RegistryClientError as exc:
            log.warning("%s: no round ticket for group %s: %s", self.node_id, session.group_id, exc)
            return None

    def _member(self, session: _Session) -> None:
        """Take part in the group's federation until the session ends."""
        gid = session.group_id
        failing: str | None = None  # an address that failed: retries log quietly
        while not session.stop.is_set():
            address = self._find_host(session)
            if address is None or session.stop.is_set():
                session.stop.wait(self.options.host_retry_s)
                continue
            ticket = self._ticket(session)
            if ticket is None or session.stop.is_set():
                session.stop.wait(self.options.host_retry_s)
                continue
            level = logging.DEBUG if address == failing else logging.INFO
            log.log(level, "%s: training with group %s, hosted at %s", self.node_id, gid, address)
            rounds = self.rounds_done
            client = LinkMember(
                self.member,
                check=lambda config, s=session: self._check_session(s, config),  # type: ignore[misc]
                on_evaluated=self.round_done,
            )
            try:
                run_client(address, client, ticket=ticket, root_certificates=self.ca_cert)
            except SessionEnded:
                break
            except RemoteInputError as exc:  # the host sent something unusable: reconnect
                log.warning("%s: group %s's host sent bad input: %s", self.node_id, gid, exc)
            except RpcError as exc:
                code = exc.code().name if hasattr(exc, "code") else type(exc).__name__
                if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                    details = exc.details() if hasattr(exc, "details") else ""
                    log.warning(
                        "%s: group %s's host at %s refused this node: %s",
                        self.node_id, gid, address, details,
                    )  # fmt: skip
                elif not session.stop.is_set():
                    log.log(
                        level, "%s: lost group %s's host at %s (%s); claiming it",
                        self.node_id, gid, address, code,
                    )  # fmt: skip
            except Exception:
                log.exception("%s: Flower client failed", self.node_id)
            failing = address if self.rounds_done == rounds else None
            session.stop.wait(self.options.host_retry_s)

    # --- callbacks from the member client ----------------------------------------------

    def _check_session(self, session: _Session, config: Mapping[str, Scalar]) -> None:
        """Leave a federation this node no longer belongs to (it migrated or is stopping)."""
        if session.stop.is_set() or config.get(GROUP_ID_KEY) != session.group_id:
            raise SessionEnded(f"no longer in group {session.group_id}")

    def round_done(self, group_id: int, result: MemberEvaluation) -> None:
        """Count a completed round of the current group."""
        self.rounds_done += 1
        self.last_accuracy = result.accuracies[0]
        if self.agent.group_id == group_id:
            self.agent.rounds_since_move += 1
            self.agent.note_round(group_id, result.accuracies[0], result.own_accuracy)

    # --- shutdown ----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Leave the group (its slot and hosting free at once), stop Flower, close."""
        self._follow_stop.set()
        with self._agent_lock:
            if self._agent is not None:
                gid = self._agent.group_id
                self._agent.leave()
                if gid is not None:
                    log.info("%s: left group %s", self.node_id, gid)
        self._end_session()
        self.client.close()

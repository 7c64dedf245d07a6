"""The netns backend: every simulated node's transport in its own Linux network namespace.

``mycelium sim --backend netns`` keeps the simulation (learners, groups, topology,
commands) and swaps the discrete-event queue of ``sim.network`` for real links, the way
Mininet emulates a network:

* each node gets a namespace ``myc<tag>-n<id>`` (``<tag>``: random per run) with one relay
  process (``sim.netns_relay``) that talks to the simulator over a Unix socket pair;
* each pair of nodes that exchanges messages gets a veth pair (``m<tag>l<k>a/b``,
  addresses of a random ``10.x.0.0/16``, a first TCP window of 200 segments so a model
  leaves in one flight), created on first use, with a persistent TCP connection opened
  before ``tc qdisc ... netem`` is put on both ends with the link's conditions:
  ``delay`` latency + jitter/2 ms ± jitter/2 ms (uniform, as the deterministic model's
  ``uniform(0, jitter)``), ``loss`` in percent, ``rate`` in kbit/s. Where the kernel has
  no ``sch_netem`` (probed once), ``tc ... tbf`` shapes the rate and the sending relay
  holds each message latency + uniform(0, jitter) ms and drops it with probability
  ``loss`` (whole messages, as the deterministic model does);
* every message's bytes are the model encoded by the simulation's codec; they cross the
  veth and netem in the kernel, and the receiver's copy is what the receiving node gets.

Topology (areas, ``link``/``unlink``, mobility) decides who sends to whom, as in the
deterministic backend, so it needs no change of links; changed conditions replace the
link's netem at its next message; nodes added or removed get or lose their namespace.

Time: a message's simulated transit is its real transit, measured from the moment the
simulator hands it to the sending relay to the moment the receiving relay has read its
last byte. It is delivered at the first step whose simulated time reaches its sent time
plus that transit, and never in the step it was sent (the deterministic rule, with
measured instead of modelled transit). ``advance`` waits, in wall time, only until every
message in flight has either arrived or provably missed this step (at most ``step_ms``
after the last send), so a step on fast links takes milliseconds. Loss is real loss: TCP
retransmits, so a lossy link delays messages; a message that has not arrived
``give_up_steps`` steps after it was sent counts as dropped.

Needs root and iproute2 (``ip``, ``tc``); runs at most ``MAX_NODES`` nodes. ``close``
removes every namespace (and so every veth) and stops every relay; it runs on exit, on
errors and on Ctrl-C, and ``atexit`` as a last resort.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from node.errors import RemoteInputError
from node.learning.weights import WeightsSignature
from node.p2p.codecs import EncodedUpdate
from sim.netns_relay import DEFAULT_PORT, MAX_FRAME
from sim.network import Conditions, Message, Network, delivery_step, pair
from sim.state import Payload, Simulation

__all__ = [
    "MAX_NODES",
    "NETNS_REQUIREMENT",
    "Emulator",
    "NetnsError",
    "NetnsNetwork",
    "attach",
    "check_environment",
    "netem_args",
    "tbf_args",
]

log = logging.getLogger(__name__)

P = TypeVar("P")

MAX_NODES = 64
NETNS_REQUIREMENT = "the netns backend needs root and iproute2 (ip, tc)"
DEFAULT_GIVE_UP_STEPS = 50
_READY_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 10.0
_INIT_WINDOW = "200"  # segments: 290 kB of 1448 bytes
_ROOT = Path(__file__).resolve().parents[1]


class NetnsError(OSError):
    """The emulated network could not be set up or used; the message says why."""


def check_environment() -> None:
    """Raise ``NetnsError`` (``NETNS_REQUIREMENT``) unless root with ``ip`` and ``tc``."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        raise NetnsError(NETNS_REQUIREMENT)


def _run(*cmd: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")


def netem_args(cond: Conditions) -> list[str]:
    """``tc qdisc ... netem`` arguments for ``cond`` (delay ms, loss %, rate kbit)."""
    half = cond.jitter_ms / 2
    args = ["delay", f"{cond.latency_ms + half:.3f}ms"]
    if half > 0:
        args.append(f"{half:.3f}ms")
    if cond.loss > 0:
        args += ["loss", f"{cond.loss * 100:.4f}%"]
    if cond.bandwidth_kbps > 0:
        args += ["rate", f"{cond.bandwidth_kbps:g}kbit"]
    return args


def tbf_args(cond: Conditions) -> list[str]:
    """``tc qdisc ... tbf`` arguments shaping to ``cond.bandwidth_kbps``: a burst of one
    1500-byte packet, and a 64 MB queue (it delays, never drops)."""
    rate = f"{cond.bandwidth_kbps:g}kbit"
    return ["rate", rate, "burst", "1600", "limit", "64mb"]


def _has_netem(namespace: str) -> bool:
    """Whether this kernel has ``sch_netem`` (tried on the namespace's loopback)."""
    try:
        _run("tc", "-n", namespace, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms")
    except NetnsError:
        log.info("no sch_netem in this kernel: relays apply latency, jitter and loss")
        return False
    _run("tc", "-n", namespace, "qdisc", "del", "dev", "lo", "root")
    return True


@dataclass
class Arrival:
    """A message's bytes as the receiving relay read them."""

    node: int
    t_ns: int
    data: bytes


@dataclass
class _Relay:
    node: int
    namespace: str
    process: subprocess.Popen[bytes]
    control: socket.socket
    ready: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _hang_up(relay: _Relay) -> None:
    """Close a relay's control socket; the relay exits on the EOF."""
    with contextlib.suppress(OSError):
        relay.control.shutdown(socket.SHUT_RDWR)  # the reader thread's file holds the fd
    relay.control.close()


@dataclass
class _Link:
    index: int
    veths: tuple[str, str]
    addresses: tuple[str, str]
    applied: Conditions | None = None


class Emulator:
    """Namespaces, relays and veth links of one run; every name carries a random tag.

    Threads read each relay's events into one queue; ``poll`` moves them into
    ``arrivals`` (seq to ``Arrival``) and ``failed`` (seqs the sending relay gave up on).
    ``bytes_received`` counts body bytes each node's relay received over TCP.
    """

    def __init__(self, *, netem: bool | None = None) -> None:
        """``netem``: None probes the kernel; False makes relays delay and drop instead.

        Raises ``NetnsError`` without root or iproute2."""
        check_environment()
        self.tag = secrets.token_hex(2)
        self.subnet = 16 + secrets.randbelow(200)  # 10.<subnet>.0.0/16
        self.relays: dict[int, _Relay] = {}
        self.links: dict[tuple[int, int], _Link] = {}
        self._link_index: dict[tuple[int, int], int] = {}
        self._events: queue.Queue[tuple[int, dict[str, Any], bytes]] = queue.Queue()
        self.arrivals: dict[int, Arrival] = {}
        self.failed: set[int] = set()
        self.connected: set[tuple[int, str]] = set()
        self.bytes_received: dict[int, int] = {}
        self.netem = netem  # None: probed with the first namespace
        self._rng = random.Random(secrets.randbits(64))
        self._closed = False
        atexit.register(self.close)

    # --- names ---------------------------------------------------------------------

    def namespace(self, node: int) -> str:
        """The namespace of ``node``."""
        return f"myc{self.tag}-n{node}"

    @property
    def namespaces(self) -> list[str]:
        """Namespaces alive now."""
        return [r.namespace for r in self.relays.values()]

    # --- nodes ---------------------------------------------------------------------

    def add_nodes(self, nodes: Iterable[int]) -> None:
        """Create a namespace and start a relay for each node; wait until all listen."""
        started = []
        for node in nodes:
            if node in self.relays:
                continue
            if len(self.relays) >= MAX_NODES:
                raise NetnsError(f"the netns backend runs at most {MAX_NODES} nodes")
            ns = self.namespace(node)
            _run("ip", "netns", "add", ns)
            ours, theirs = socket.socketpair()
            try:
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                process = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        sys.executable,
                        "-m",
                        "sim.netns_relay",
                        "--control-fd",
                        str(theirs.fileno()),
                        "--port",
                        str(DEFAULT_PORT),
                    ],
                    pass_fds=(theirs.fileno(),),
                    cwd=_ROOT,
                    env={**os.environ, "PYTHONPATH": str(_ROOT)},
                    start_new_session=True,  # Ctrl-C reaches the simulator, which tears down
                )
            except BaseException:
                ours.close()
                _run("ip", "netns", "del", ns)
                raise
            finally:
                theirs.close()
            if self.netem is None:
                self.netem = _has_netem(ns)
            relay = _Relay(node, ns, process, ours)
            self.relays[node] = relay
            threading.Thread(target=self._read, args=(relay,), daemon=True).start()
            started.append(relay)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        for relay in started:
            if not relay.ready.wait(max(0.0, deadline - time.monotonic())):
                raise NetnsError(f"the relay of node {relay.node} did not start")

    def remove_node(self, node: int) -> None:
        """Stop a node's relay and delete its namespace (its veths go with it)."""
        relay = self.relays.pop(node, None)
        if relay is None:
            return
        for key in [k for k in self.links if node in k]:
            del self.links[key]
        self._stop(relay)

    def _stop(self, relay: _Relay) -> None:
        _hang_up(relay)
        try:
            relay.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            relay.process.kill()
            relay.process.wait(timeout=5)
        try:
            _run("ip", "netns", "del", relay.namespace)
        except NetnsError as exc:
            log.warning("%s", exc)

    # --- links ---------------------------------------------------------------------

    def link(self, a: int, b: int, cond: Conditions) -> _Link:
        """The veth link between ``a`` and ``b``: created and connected on first use,
        its netem set to ``cond`` when that changed."""
        key = pair(a, b)
        existing = self.links.get(key)
        if existing is None:
            existing = self._create_link(key)
        if existing.applied != cond:
            for node, veth in zip(key, existing.veths, strict=True):
                tc = ("tc", "-n", self.namespace(node), "qdisc")
                if self.netem:
                    _run(*tc, "replace", "dev", veth, "root", "netem", *netem_args(cond))
                elif cond.bandwidth_kbps > 0:
                    _run(*tc, "replace", "dev", veth, "root", "tbf", *tbf_args(cond))
                elif existing.applied is not None and existing.applied.bandwidth_kbps > 0:
                    _run(*tc, "del", "dev", veth, "root")
            existing.applied = cond
        return existing

    def _create_link(self, key: tuple[int, int]) -> _Link:
        for node in key:
            if node not in self.relays:
                raise NetnsError(f"node {node} has no namespace")
        index = self._link_index.setdefault(key, len(self._link_index))
        if index >= 1 << 14:
            raise NetnsError("out of link addresses")
        base = f"10.{self.subnet}.{index >> 6}"
        low = (index & 63) * 4
        link = _Link(
            index,
            (f"m{self.tag}l{index}a", f"m{self.tag}l{index}b"),
            (f"{base}.{low + 1}", f"{base}.{low + 2}"),
        )
        ns = (self.namespace(key[0]), self.namespace(key[1]))
        _run(
            "ip",
            "link",
            "add",
            link.veths[0],
            "netns",
            ns[0],
            "type",
            "veth",
            "peer",
            "name",
            link.veths[1],
            "netns",
            ns[1],
        )
        for side in (0, 1):
            _run(
                "ip",
                "-n",
                ns[side],
                "addr",
                "add",
                f"{link.addresses[side]}/30",
                "dev",
                link.veths[side],
            )
            _run("ip", "-n", ns[side], "link", "set", link.veths[side], "up")
            # A wide first window: a model goes out in one flight, not over slow-start RTTs.
            _run(
                "ip",
                "-n",
                ns[side],
                "route",
                "replace",
                f"{base}.{low}/30",
                "dev",
                link.veths[side],
                "src",
                link.addresses[side],
                "initcwnd",
                _INIT_WINDOW,
                "initrwnd",
                _INIT_WINDOW,
            )
        # Connect both ways before netem: the handshake is set-up, not a message's transit.
        wanted = {(key[0], link.addresses[1]), (key[1], link.addresses[0])}
        for node, peer in wanted:
            self.command(node, {"op": "connect", "peer": peer})
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while not wanted <= self.connected:
            if time.monotonic() > deadline:
                raise NetnsError(f"nodes {key[0]} and {key[1]} could not connect")
            self.poll(0.05)
        self.links[key] = link
        return link

    # --- messages ------------------------------------------------------------------

    def command(self, node: int, command: dict[str, Any], body: bytes = b"") -> None:
        """Send one control command (and its body) to a node's relay."""
        relay = self.relays[node]
        with relay.lock:
            try:
                relay.control.sendall(json.dumps(command).encode() + b"\n" + body)
            except OSError as exc:
                raise NetnsError(f"the relay of node {node} is gone: {exc}") from exc

    def send(self, src: int, dst: int, seq: int, data: bytes, cond: Conditions) -> int:
        """Hand ``data`` to ``src``'s relay for ``dst`` over their link; returns the
        ``time.monotonic_ns()`` of the hand-over."""
        link = self.link(src, dst, cond)
        peer = link.addresses[1] if src < dst else link.addresses[0]
        command: dict[str, Any] = {"op": "send", "seq": seq, "peer": peer, "len": len(data)}
        if not self.netem:  # the relay applies latency, jitter and loss
            command["delay_ms"] = cond.latency_ms + self._rng.random() * cond.jitter_ms
            command["loss"] = cond.loss
        sent_ns = time.monotonic_ns()
        self.command(src, command, data)
        return sent_ns

    def poll(self, timeout_s: float) -> bool:
        """Take in one relay event, waiting up to ``timeout_s``; False when none came."""
        try:
            node, event, body = self._events.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return False
        kind = event.get("ev")
        if kind == "recv":
            self.arrivals[int(event["seq"])] = Arrival(node, int(event["t_ns"]), body)
            self.bytes_received[node] = self.bytes_received.get(node, 0) + len(body)
        elif kind == "connected":
            self.connected.add((node, str(event["peer"])))
        elif kind in ("send_failed", "lost"):
            self.failed.add(int(event["seq"]))
        else:
            log.warning("node %d relay: %s", node, event)
        return True

    def _read(self, relay: _Relay) -> None:
        stream = relay.control.makefile("rb")
        try:
            while True:
                line = stream.readline()
                if not line:
                    return
                event = json.loads(line)
                if not isinstance(event, dict):
                    return
                body = b""
                if event.get("ev") == "recv":
                    length = int(event["len"])
                    if not 0 <= length <= MAX_FRAME:
                        return
                    body = stream.read(length)
                    if len(body) != length:
                        return
                if event.get("ev") == "ready":
                    relay.ready.set()
                    continue
                self._events.put((relay.node, event, body))
        except (OSError, ValueError, KeyError, TypeError):
            return

    # --- teardown ------------------------------------------------------------------

    def close(self) -> None:
        """Stop every relay and delete every namespace; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for relay in self.relays.values():
            _hang_up(relay)  # all at once
        for node in list(self.relays):
            self.remove_node(node)


class NetnsNetwork(Network[P], Generic[P]):
    """A ``Network`` whose messages cross an ``Emulator``'s namespaces.

    Same interface and counters as the deterministic ``Network``; ``send`` encodes the
    payload with ``to_bytes`` and ``advance`` rebuilds it from the bytes that arrived
    with ``from_bytes(data, sent_payload)``. See the module docstring for timing.
    """

    backend: ClassVar[str] = "netns"

    def __init__(
        self,
        base: Network[P],
        emulator: Emulator,
        to_bytes: Callable[[P], bytes],
        from_bytes: Callable[[bytes, P], P],
        *,
        give_up_steps: int = DEFAULT_GIVE_UP_STEPS,
    ) -> None:
        super().__init__(base.topology, seed=base.seed, step_ms=base.step_ms, step=base.step)
        self.conditions = base.conditions
        self.link_conditions = base.link_conditions
        self.counters = base.counters
        self.rng = base.rng
        self.emulator = emulator
        self.to_bytes = to_bytes
        self.from_bytes = from_bytes
        self.give_up_steps = give_up_steps
        self._pending: dict[int, tuple[Message[P], int]] = {}
        self._seq = base.next_seq
        self.outside: set[int] = set()  # live nodes beyond MAX_NODES, without a namespace
        self._sync_nodes()

    @property
    def in_flight(self) -> int:
        """Messages sent and neither delivered nor given up."""
        return len(self._pending)

    def queued(self) -> Iterator[Message[P]]:
        """Messages in flight, in sending order."""
        for seq in sorted(self._pending):
            yield self._pending[seq][0]

    def restore_queue(self, messages: Iterable[Message[P]], next_seq: int) -> None:
        """Not supported: messages cannot be put back on real links."""
        raise NetnsError("the netns backend cannot restore messages in flight")

    def _sync_nodes(self) -> None:
        live = set(self.topology.nodes)
        for node in set(self.emulator.relays) - live:
            self.emulator.remove_node(node)
        missing = sorted(live - set(self.emulator.relays))
        room = MAX_NODES - len(self.emulator.relays)
        self.emulator.add_nodes(missing[:room])
        for node in missing[room:]:
            if node not in self.outside:
                self.outside.add(node)
                log.warning(
                    "node %d has no namespace (the netns backend runs at most %d nodes): "
                    "its messages are dropped",
                    node,
                    MAX_NODES,
                )
        self.outside &= live

    def send(self, src: int, dst: int, nbytes: int, payload: P, kind: str) -> Message[P] | None:
        """Put one message on the real link ``src``-``dst``; None (counted as dropped)
        only when either node is beyond ``MAX_NODES`` and so has no namespace.

        Raises ``NetnsError`` when a link cannot be set up or a relay is gone."""
        self._sync_nodes()
        message = Message(
            seq=self._seq,
            src=src,
            dst=dst,
            kind=kind,
            nbytes=nbytes,
            sent_step=self.step,
            due_ms=self.now_ms,
            deliver_step=self.step + 1,
            payload=payload,
        )
        self._seq += 1
        self.counters.sent += 1
        self.counters.bytes_sent += nbytes
        if src in self.outside or dst in self.outside:  # beyond MAX_NODES: no link
            self.counters.dropped += 1
            return None
        if dst not in self.emulator.relays:  # gone: dropped on arrival, as the model does
            sent_ns = time.monotonic_ns()
        else:
            cond = self.conditions_between(src, dst)
            try:
                sent_ns = self.emulator.send(src, dst, message.seq, self.to_bytes(payload), cond)
            except NetnsError:
                self.counters.dropped += 1
                raise
        self._pending[message.seq] = (message, sent_ns)
        return message

    def _deadline_ns(self, message: Message[P], sent_ns: int) -> int:
        """Wall time after which ``message`` can no longer make the current step."""
        return sent_ns + int((self.step - message.sent_step) * self.step_ms * 1e6)

    def advance(self) -> list[Message[P]]:
        """One step: wait until each message in flight arrived or missed this step, then
        return those due now in arrival order (see the module docstring)."""
        self.step += 1
        self._sync_nodes()
        em = self.emulator
        while True:
            while em.poll(0):
                pass
            waiting = [
                self._deadline_ns(m, t)
                for seq, (m, t) in self._pending.items()
                if seq not in em.arrivals and seq not in em.failed and m.dst in em.relays
            ]
            left_ns = max(waiting, default=0) - time.monotonic_ns()
            if left_ns <= 0:
                break
            em.poll(left_ns / 1e9)
        due: list[Message[P]] = []
        for seq, (message, sent_ns) in list(self._pending.items()):
            arrival = em.arrivals.get(seq)
            if message.dst not in em.relays:
                due.append(message)
            elif arrival is not None:
                if arrival.node != message.dst:
                    log.warning(
                        "message %d arrived at node %d, not %d", seq, arrival.node, message.dst
                    )
                    continue
                message.due_ms = message.sent_step * self.step_ms + ((arrival.t_ns - sent_ns) / 1e6)
                message.deliver_step = delivery_step(
                    message.sent_step, message.due_ms, self.step_ms
                )
                if message.deliver_step > self.step:
                    continue
                try:
                    message.payload = self.from_bytes(arrival.data, message.payload)
                except ValueError as exc:
                    log.warning("message %d arrived damaged: %s", seq, exc)
                    self._give_up(seq)
                    continue
                due.append(message)
            elif seq in em.failed or self.step - message.sent_step >= self.give_up_steps:
                self._give_up(seq)
                continue
            else:
                continue
            del self._pending[seq]
            em.arrivals.pop(seq, None)
        due.sort(key=lambda m: (m.due_ms, m.seq))
        return due

    def _give_up(self, seq: int) -> None:
        self._pending.pop(seq, None)
        self.emulator.arrivals.pop(seq, None)
        self.emulator.failed.discard(seq)
        self.counters.dropped += 1

    def close(self) -> None:
        """Tear the emulated network down."""
        self.emulator.close()


def attach(
    simulation: Simulation,
    *,
    give_up_steps: int = DEFAULT_GIVE_UP_STEPS,
    emulator: Emulator | None = None,
) -> NetnsNetwork[Payload]:
    """Move ``simulation``'s network onto namespaces: a namespace and relay per node now.

    Models cross the links encoded with the simulation's codec; the receiver decodes the
    bytes it got, checked against the sender's weight shapes. The caller must ``close``
    the returned network (also registered with ``atexit``); ``emulator``: a new
    ``Emulator()`` unless given. Raises ``NetnsError``.
    """
    codec = simulation.codec

    def to_bytes(payload: Payload) -> bytes:
        return codec.encode(payload.weights).to_bytes()

    def from_bytes(data: bytes, sent: Payload) -> Payload:
        expected = WeightsSignature.of(sent.weights)
        try:
            weights = codec.decode(EncodedUpdate.from_bytes(data, expected), expected)
        except RemoteInputError as exc:
            raise ValueError(str(exc)) from exc
        return replace(sent, weights=weights)

    emulator = emulator or Emulator()
    try:
        network = NetnsNetwork(
            simulation.network, emulator, to_bytes, from_bytes, give_up_steps=give_up_steps
        )
    except BaseException:
        emulator.close()
        raise
    simulation.network = network
    return network

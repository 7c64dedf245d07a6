"""One node's transport for the netns backend, run inside the node's network namespace.

Started by ``sim.netns`` as ``ip netns exec NS python -m sim.netns_relay --control-fd FD``
with one end of a Unix socket pair (Unix sockets are not bound to a network namespace),
it carries the simulator's messages over real TCP on the namespace's veth links:

* control, simulator to relay: a JSON line ``{"op": "connect", "peer": ADDR}`` (open the
  persistent TCP connection to ``ADDR:PORT``) or ``{"op": "send", "seq": S, "peer": ADDR,
  "len": L}`` followed by ``L`` body bytes; optional ``"loss": p`` and ``"delay_ms": d``
  (used only where the kernel has no ``sch_netem``) drop the message with probability
  ``p`` (reported as ``{"ev": "lost", "seq": S}``) or hold it ``d`` ms before sending;
* control, relay to simulator: ``{"ev": "ready"}`` once listening,
  ``{"ev": "connected"|"connect_failed", "peer": ADDR}``, ``{"ev": "send_failed", "seq": S}``,
  and ``{"ev": "recv", "seq": S, "len": L, "t_ns": T}`` followed by the ``L`` bytes that
  arrived (``T``: ``time.monotonic_ns()`` when the last byte was read);
* TCP between relays: frames of a 12-byte header (``!QI``: seq, length) and the body.

A frame from a peer longer than ``MAX_FRAME`` bytes closes that connection (input from
another node is bad input). The relay exits when the control socket closes. Standard
library only, so it starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import time
from typing import Any

__all__ = ["DEFAULT_PORT", "HEADER", "MAX_FRAME", "main"]

DEFAULT_PORT = 7411
HEADER = struct.Struct("!QI")
MAX_FRAME = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0


class _Relay:
    def __init__(self, control: asyncio.StreamWriter, port: int) -> None:
        self.control = control
        self.port = port
        self.queues: dict[str, asyncio.Queue[tuple[int, bytes] | None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def emit(self, event: dict[str, Any], body: bytes = b"") -> None:
        self.control.write(json.dumps(event).encode() + b"\n" + body)

    def queue(self, peer: str) -> asyncio.Queue[tuple[int, bytes] | None]:
        if peer not in self.queues:
            self.queues[peer] = asyncio.Queue()
            task = asyncio.create_task(self._sender(peer, self.queues[peer]))
            self.tasks.add(task)
        return self.queues[peer]

    async def _sender(self, peer: str, items: asyncio.Queue[tuple[int, bytes] | None]) -> None:
        writer: asyncio.StreamWriter | None = None
        while True:
            item = await items.get()
            if writer is None:
                try:
                    _, opened = await asyncio.wait_for(
                        asyncio.open_connection(peer, self.port), CONNECT_TIMEOUT_S
                    )
                    opened.get_extra_info("socket").setsockopt(
                        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                    )
                    writer = opened
                except (TimeoutError, OSError) as exc:
                    if item is None:
                        self.emit({"ev": "connect_failed", "peer": peer, "error": str(exc)})
                    else:
                        self.emit({"ev": "send_failed", "seq": item[0], "error": str(exc)})
                    continue
            if item is None:
                self.emit({"ev": "connected", "peer": peer})
                continue
            seq, body = item
            if writer is None:
                continue
            try:
                writer.write(HEADER.pack(seq, len(body)) + body)
                await writer.drain()
            except OSError as exc:
                writer = None
                self.emit({"ev": "send_failed", "seq": seq, "error": str(exc)})

    async def _later(self, delay_s: float, peer: str, seq: int, body: bytes) -> None:
        await asyncio.sleep(delay_s)
        self.queue(peer).put_nowait((seq, body))

    async def serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                seq, length = HEADER.unpack(await reader.readexactly(HEADER.size))
                if length > MAX_FRAME:
                    return  # a peer's bad frame: hang up on it
                body = await reader.readexactly(length)
                self.emit(
                    {"ev": "recv", "seq": seq, "len": length, "t_ns": time.monotonic_ns()}, body
                )
        except (asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            return  # the peer hung up, or the relay is stopping
        finally:
            writer.close()

    async def control_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return  # the simulator is gone
            try:
                command = json.loads(line)
                op = command["op"]
                peer = str(command["peer"])
                if op == "connect":
                    self.queue(peer).put_nowait(None)
                elif op == "send":
                    length = int(command["len"])
                    if not 0 <= length <= MAX_FRAME:
                        return
                    body = await reader.readexactly(length)
                    seq = int(command["seq"])
                    if random.random() < float(command.get("loss", 0.0)):
                        self.emit({"ev": "lost", "seq": seq})
                        continue
                    delay_s = float(command.get("delay_ms", 0.0)) / 1000
                    if delay_s > 0:
                        task = asyncio.create_task(self._later(delay_s, peer, seq, body))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                    else:
                        self.queue(peer).put_nowait((seq, body))
            except (ValueError, KeyError, TypeError):
                return  # the simulator speaks this protocol only: stop on anything else


async def _run(control_fd: int, port: int) -> None:
    sock = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    relay = _Relay(writer, port)
    server = await asyncio.start_server(relay.serve_peer, "0.0.0.0", port, reuse_address=True)
    relay.emit({"ev": "ready"})
    try:
        await relay.control_loop(reader)
    finally:
        server.close()  # not wait_closed: peers' connections end with the process


def main() -> None:
    """Entry point: ``python -m sim.netns_relay --control-fd FD [--port PORT]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args.control_fd, args.port))


if __name__ == "__main__":
    main()

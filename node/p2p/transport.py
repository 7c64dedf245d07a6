"""Framed peer messages over TCP with asyncio streams: length prefix + msgpack envelope.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack: the
envelope ``{v, sender, kind, round, meta, payload}``. Whole messages go in one frame,
so models of any size cross (up to ``max_message_bytes``) without datagram limits or
per-chunk acknowledgements. A frame that is oversized, not msgpack, of another
protocol version or missing a field is dropped with a log line; an oversized frame
also closes its connection (the stream cannot be resynchronised), and the server
goes on serving everyone else.

A connection may carry several frames each way. The server calls its handler for
every envelope; a handler that returns an envelope sends it back as the reply
(request/response, e.g. a Cyclon shuffle), one that returns None sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from node.addresses import Address
from node.errors import FrameError, PeerUnreachableError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "Envelope",
    "FrameError",
    "Handler",
    "PeerUnreachableError",
    "TransportServer",
    "TransportStats",
    "decode_envelope",
    "encode_frame",
    "read_frame",
    "request",
    "send",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")

VERSION_KEY = "v"
SENDER_KEY = "sender"
KIND_KEY = "kind"
ROUND_KEY = "round"
META_KEY = "meta"
PAYLOAD_KEY = "payload"


@dataclass(frozen=True)
class Envelope:
    """One message: who sent it, what kind, for which round, small metadata and a payload."""

    sender: str
    kind: str
    round: int = 0
    payload: bytes = b""
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION


@dataclass
class TransportStats:
    """Bytes and frames through one endpoint (frame headers included)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    frames_dropped: int = 0


def encode_frame(envelope: Envelope, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """Length prefix + msgpack envelope; refuses (FrameError) what a receiver would drop."""
    body: bytes = msgpack.packb(
        {
            VERSION_KEY: envelope.version,
            SENDER_KEY: envelope.sender,
            KIND_KEY: envelope.kind,
            ROUND_KEY: envelope.round,
            META_KEY: envelope.meta,
            PAYLOAD_KEY: envelope.payload,
        },
        use_bin_type=True,
    )
    if len(body) > max_message_bytes:
        raise FrameError(f"Message of {len(body)} bytes exceeds the {max_message_bytes}-byte limit")
    return _HEADER.pack(len(body)) + body


def decode_envelope(body: bytes) -> Envelope:
    """Parse one frame's body; anything but a valid envelope of our version raises FrameError."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"Frame is not msgpack: {type(exc).__name__}") from exc
    if not isinstance(obj, dict):
        raise FrameError(f"Frame is a {type(obj).__name__}, not an envelope")
    version = obj.get(VERSION_KEY)
    if version != PROTOCOL_VERSION:
        raise FrameError(f"Protocol version {version!r}, this node speaks {PROTOCOL_VERSION}")
    sender, kind, rnd = obj.get(SENDER_KEY), obj.get(KIND_KEY), obj.get(ROUND_KEY)
    payload, meta = obj.get(PAYLOAD_KEY, b""), obj.get(META_KEY, {})
    if not isinstance(sender, str) or not sender:
        raise FrameError("Envelope has no sender")
    if not isinstance(kind, str) or not kind:
        raise FrameError("Envelope has no kind")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
        raise FrameError(f"Envelope round {rnd!r} is not a non-negative integer")
    if not isinstance(payload, bytes) or not isinstance(meta, dict):
        raise FrameError("Envelope payload must be bytes and meta a map")
    return Envelope(sender=sender, kind=kind, round=rnd, payload=payload, meta=meta)


async def read_frame(reader: asyncio.StreamReader, max_message_bytes: int) -> bytes | None:
    """Read one frame's body; None at a clean end of stream; FrameError when oversized."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError(
                f"Stream ended inside a frame header ({len(exc.partial)} bytes)"
            ) from exc
        return None
    (length,) = _HEADER.unpack(header)
    if length > max_message_bytes:
        raise FrameError(f"Frame of {length} bytes exceeds the {max_message_bytes}-byte limit")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(
            f"Stream ended {length - len(exc.partial)} bytes short of a frame"
        ) from exc


Handler = Callable[[Envelope], Awaitable[Envelope | None]]


class TransportServer:
    """An asyncio TCP server that decodes envelopes and hands them to ``handler``.

    Use ``await server.start()`` then ``server.port`` (pass port 0 for a free one),
    and ``await server.stop()``. Bad frames are logged and dropped; a handler that
    raises is logged and the connection closed; the server keeps serving.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        name: str = "node",
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.name = name
        self.stats = TransportStats()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; afterwards ``port`` is the bound port."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=2**20, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        logger.info("%s listening on %s:%d", self.name, self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    body = await read_frame(reader, self.max_message_bytes)
                except FrameError as exc:
                    self.stats.frames_dropped += 1
                    logger.warning(
                        "%s dropped a frame from %s and closed it: %s", self.name, peer, exc
                    )
                    return
                if body is None:
                    return
                self.stats.bytes_received += len(body) + _HEADER.size
                try:
                    envelope = decode_envelope(body)
                except FrameError as exc:
                    self.stats.frames_dropped += 1
                    logger.warning("%s dropped a frame from %s: %s", self.name, peer, exc)
                    continue
                self.stats.frames_received += 1
                reply = await self.handler(envelope)
                if reply is not None:
                    frame = encode_frame(reply, self.max_message_bytes)
                    writer.write(frame)
                    await writer.drain()
                    self.stats.bytes_sent += len(frame)
                    self.stats.frames_sent += 1
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            logger.exception("%s: handling a message from %s failed", self.name, peer)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _exchange(
    address: Address,
    envelope: Envelope,
    *,
    timeout: float,
    max_message_bytes: int,
    want_reply: bool,
    stats: TransportStats | None,
) -> Envelope | None:
    frame = encode_frame(envelope, max_message_bytes)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address.host, address.port, limit=2**20)
            try:
                writer.write(frame)
                await writer.drain()
                if stats is not None:
                    stats.bytes_sent += len(frame)
                    stats.frames_sent += 1
                if not want_reply:
                    return None
                body = await read_frame(reader, max_message_bytes)
                if body is None:
                    raise PeerUnreachableError(f"{address} closed the connection without a reply")
                if stats is not None:
                    stats.bytes_received += len(body) + _HEADER.size
                    stats.frames_received += 1
                return decode_envelope(body)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError as exc:
        raise PeerUnreachableError(f"{address} did not answer within {timeout:.1f} s") from exc
    except OSError as exc:
        raise PeerUnreachableError(f"{address} unreachable: {exc}") from exc


async def send(
    address: Address,
    envelope: Envelope,
    *,
    timeout: float = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    stats: TransportStats | None = None,
) -> None:
    """Send one envelope; PeerUnreachableError when the peer cannot take it in time."""
    await _exchange(
        address,
        envelope,
        timeout=timeout,
        max_message_bytes=max_message_bytes,
        want_reply=False,
        stats=stats,
    )


async def request(
    address: Address,
    envelope: Envelope,
    *,
    timeout: float = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    stats: TransportStats | None = None,
) -> Envelope:
    """Send one envelope and wait for the reply envelope on the same connection."""
    reply = await _exchange(
        address,
        envelope,
        timeout=timeout,
        max_message_bytes=max_message_bytes,
        want_reply=True,
        stats=stats,
    )
    assert reply is not None  # want_reply=True returns an envelope or raises
    return reply

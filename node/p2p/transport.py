"""Framed peer messages over TCP with asyncio streams: length prefix + signed msgpack envelope.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack: the outer
map ``{v, auth, msg, sig}``. ``msg`` holds the signed bytes, the msgpack envelope
``{sender, kind, round, meta, payload, ts, nonce[, re]}``; ``sig`` is their signature under
the sender's ``FrameAuth`` (``node.p2p.auth``), ``auth`` its scheme. Whole messages go in
one frame, so models of any size cross (up to ``max_message_bytes``) without datagram
limits or per-chunk acknowledgements.

A frame that is oversized, not msgpack, of another protocol version or missing a field
is dropped with a log line; an oversized frame also closes its connection (the stream
cannot be resynchronised). A frame whose signature does not verify, whose sender has no
key, or that is stale or replayed (``ReplayGuard``) is dropped before any handler sees
it: the server answers with an unsigned refusal naming the reason and closes the
connection. Every drop is counted in ``TransportStats.refused`` by reason; the server
goes on serving everyone else.

A connection may carry several frames each way. The server calls its handler for
every envelope; a handler that returns an envelope sends it back as the reply
(request/response, e.g. a Cyclon shuffle), signed and bound to the request (``re``: the
request's nonce), one that returns None sends nothing. ``request`` accepts only such a
reply; a refusal raises ``PeerRefusedError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from node.addresses import Address
from node.errors import FrameAuthError, FrameError, PeerRefusedError, PeerUnreachableError
from node.p2p.auth import (
    DEFAULT_REPLAY_WINDOW_S,
    REFUSED_REPLAYED,
    REFUSED_SCHEME,
    FrameAuth,
    ReplayGuard,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "REFUSED_FRAME",
    "Envelope",
    "FrameError",
    "Handler",
    "OpenedFrame",
    "PeerRefusedError",
    "PeerUnreachableError",
    "TransportServer",
    "TransportStats",
    "encode_frame",
    "open_frame",
    "read_frame",
    "request",
    "send",
    "verify_frame",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 2
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")
_NONCE_BYTES = 16

VERSION_KEY = "v"
AUTH_KEY = "auth"
MESSAGE_KEY = "msg"
SIGNATURE_KEY = "sig"
REFUSAL_KEY = "refused"
SENDER_KEY = "sender"
KIND_KEY = "kind"
ROUND_KEY = "round"
META_KEY = "meta"
PAYLOAD_KEY = "payload"
TIMESTAMP_KEY = "ts"
NONCE_KEY = "nonce"
REPLY_TO_KEY = "re"

# The reason a frame that is not a well-formed envelope is counted under.
REFUSED_FRAME = "malformed_frame"


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
    """Bytes and frames through one endpoint (frame headers included).

    ``frames_dropped`` counts every frame dropped; ``refused`` the same by reason:
    ``malformed_frame``, or ``node.p2p.auth``'s ``bad_signature``, ``unknown_sender``,
    ``stale``, ``replayed``, ``scheme``.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    frames_dropped: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        """Count one dropped frame under ``reason``."""
        self.frames_dropped += 1
        self.refused[reason] = self.refused.get(reason, 0) + 1


@dataclass(frozen=True)
class OpenedFrame:
    """A frame taken apart but not yet verified: its envelope and what proves it."""

    envelope: Envelope
    scheme: str
    message: bytes
    signature: bytes
    timestamp: float
    nonce: bytes
    reply_to: bytes | None


def _seal(
    envelope: Envelope, auth: FrameAuth, max_message_bytes: int, reply_to: bytes | None
) -> tuple[bytes, bytes]:
    """The signed frame for ``envelope`` and the nonce it carries."""
    nonce = os.urandom(_NONCE_BYTES)
    inner: dict[str, Any] = {
        SENDER_KEY: envelope.sender,
        KIND_KEY: envelope.kind,
        ROUND_KEY: envelope.round,
        META_KEY: envelope.meta,
        PAYLOAD_KEY: envelope.payload,
        TIMESTAMP_KEY: time.time(),
        NONCE_KEY: nonce,
    }
    if reply_to is not None:
        inner[REPLY_TO_KEY] = reply_to
    message: bytes = msgpack.packb(inner, use_bin_type=True)
    outer = {
        VERSION_KEY: envelope.version,
        AUTH_KEY: auth.scheme,
        MESSAGE_KEY: message,
        SIGNATURE_KEY: auth.sign(message),
    }
    body: bytes = msgpack.packb(outer, use_bin_type=True)
    if len(body) > max_message_bytes:
        raise FrameError(f"Message of {len(body)} bytes exceeds the {max_message_bytes}-byte limit")
    return _HEADER.pack(len(body)) + body, nonce


def encode_frame(
    envelope: Envelope,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    auth: FrameAuth,
    reply_to: bytes | None = None,
) -> bytes:
    """Length prefix + signed msgpack envelope (a fresh timestamp and nonce).

    ``reply_to``: the nonce of the request this answers. Refuses (FrameError) what a
    receiver would drop for its size.
    """
    return _seal(envelope, auth, max_message_bytes, reply_to)[0]


def _unpack_map(data: bytes, what: str) -> dict[Any, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"{what} is not msgpack: {type(exc).__name__}") from exc
    if not isinstance(obj, dict):
        raise FrameError(f"{what} is a {type(obj).__name__}, not a map")
    return obj


def _refusal_frame(reason: str) -> bytes:
    body: bytes = msgpack.packb({VERSION_KEY: PROTOCOL_VERSION, REFUSAL_KEY: reason})
    return _HEADER.pack(len(body)) + body


def open_frame(body: bytes) -> OpenedFrame:
    """Take one frame's body apart, checking its shape only (not who signed it).

    Raises ``FrameError`` for anything but a well-formed envelope of our version, and
    ``PeerRefusedError`` for a peer's refusal of our own frame. ``verify_frame`` is what a
    receiver calls.
    """
    outer = _unpack_map(body, "Frame")
    version = outer.get(VERSION_KEY)
    if version != PROTOCOL_VERSION:
        raise FrameError(f"Protocol version {version!r}, this node speaks {PROTOCOL_VERSION}")
    if REFUSAL_KEY in outer:
        reason = str(outer[REFUSAL_KEY])[:40]
        raise PeerRefusedError(reason, f"the peer refused this node's frame: {reason}")
    scheme, message, signature = (
        outer.get(AUTH_KEY),
        outer.get(MESSAGE_KEY),
        outer.get(SIGNATURE_KEY),
    )
    if not isinstance(scheme, str) or not isinstance(message, bytes):
        raise FrameError("Frame has no signed message")
    if not isinstance(signature, bytes):
        raise FrameError("Frame has no signature")
    obj = _unpack_map(message, "Envelope")
    sender, kind, rnd = obj.get(SENDER_KEY), obj.get(KIND_KEY), obj.get(ROUND_KEY)
    payload, meta = obj.get(PAYLOAD_KEY, b""), obj.get(META_KEY, {})
    timestamp, nonce, reply_to = (
        obj.get(TIMESTAMP_KEY),
        obj.get(NONCE_KEY),
        obj.get(REPLY_TO_KEY),
    )
    if not isinstance(sender, str) or not sender:
        raise FrameError("Envelope has no sender")
    if not isinstance(kind, str) or not kind:
        raise FrameError("Envelope has no kind")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
        raise FrameError(f"Envelope round {rnd!r} is not a non-negative integer")
    if not isinstance(payload, bytes) or not isinstance(meta, dict):
        raise FrameError("Envelope payload must be bytes and meta a map")
    if not isinstance(timestamp, float | int) or isinstance(timestamp, bool):
        raise FrameError("Envelope has no timestamp")
    if not isinstance(nonce, bytes) or len(nonce) != _NONCE_BYTES:
        raise FrameError("Envelope has no nonce")
    if reply_to is not None and not isinstance(reply_to, bytes):
        raise FrameError("Envelope's reply-to is not a nonce")
    envelope = Envelope(sender=sender, kind=kind, round=rnd, payload=payload, meta=meta)
    return OpenedFrame(envelope, scheme, message, signature, float(timestamp), nonce, reply_to)


async def verify_frame(
    body: bytes,
    auth: FrameAuth,
    guard: ReplayGuard,
    *,
    reply_to: bytes | None = None,
) -> Envelope:
    """The envelope of one frame's body, once its sender's signature and freshness check out.

    ``reply_to``: the nonce of our request, which a reply must name. Raises ``FrameError``
    (malformed), ``FrameAuthError`` (``reason``: ``scheme``, ``bad_signature``,
    ``unknown_sender``, ``stale``, ``replayed``) or ``PeerRefusedError`` (the peer refused
    our frame).
    """
    return await _verify_opened(open_frame(body), auth, guard, reply_to)


async def _verify_opened(
    opened: OpenedFrame, auth: FrameAuth, guard: ReplayGuard, reply_to: bytes | None
) -> Envelope:
    sender = opened.envelope.sender
    if opened.scheme != auth.scheme:
        raise FrameAuthError(
            REFUSED_SCHEME,
            f"frame from {sender!r} is signed with {opened.scheme[:20]!r}, "
            f"this node expects {auth.scheme}",
        )
    await auth.verify(sender, opened.message, opened.signature)
    if reply_to is not None and opened.reply_to != reply_to:
        raise FrameAuthError(
            REFUSED_REPLAYED, f"reply from {sender!r} does not answer this request"
        )
    guard.check(sender, opened.timestamp, opened.nonce)
    return opened.envelope


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
    and ``await server.stop()``. Frames are verified with ``auth`` and a ``ReplayGuard``
    of ``replay_window_s`` seconds; bad and unverified frames are logged, counted in
    ``stats`` and dropped; a handler that raises is logged and the connection closed;
    the server keeps serving.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        auth: FrameAuth,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        name: str = "node",
        replay_window_s: float = DEFAULT_REPLAY_WINDOW_S,
    ) -> None:
        self.handler = handler
        self.auth = auth
        self.guard = ReplayGuard(replay_window_s)
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
                    self.stats.drop(REFUSED_FRAME)
                    logger.warning(
                        "%s dropped a frame from %s and closed it: %s", self.name, peer, exc
                    )
                    return
                if body is None:
                    return
                self.stats.bytes_received += len(body) + _HEADER.size
                try:
                    opened = open_frame(body)
                    envelope = await _verify_opened(opened, self.auth, self.guard, None)
                except (FrameError, PeerRefusedError) as exc:
                    self.stats.drop(REFUSED_FRAME)
                    logger.warning("%s dropped a frame from %s: %s", self.name, peer, exc)
                    continue
                except FrameAuthError as exc:
                    # Not this sender's frame (or not now): the sender learns why, then
                    # the connection closes, as nothing more from it will verify.
                    self.stats.drop(exc.reason)
                    logger.warning(
                        "%s dropped a frame from %s (%s): %s", self.name, peer, exc.reason, exc
                    )
                    writer.write(_refusal_frame(exc.reason))
                    await writer.drain()
                    return
                self.stats.frames_received += 1
                reply = await self.handler(envelope)
                if reply is not None:
                    frame = encode_frame(
                        reply, self.max_message_bytes, auth=self.auth, reply_to=opened.nonce
                    )
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
    auth: FrameAuth,
    timeout: float,
    max_message_bytes: int,
    want_reply: bool,
    stats: TransportStats | None,
) -> Envelope | None:
    frame, nonce = _seal(envelope, auth, max_message_bytes, None)
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
                try:
                    # A reply names our nonce, so no other frame can pass for it: the guard
                    # only checks its clock.
                    return await verify_frame(body, auth, ReplayGuard(), reply_to=nonce)
                except PeerRefusedError as exc:
                    raise PeerRefusedError(
                        exc.reason, f"{address} refused this node's frame: {exc.reason}"
                    ) from exc
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
    auth: FrameAuth,
    timeout: float = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    stats: TransportStats | None = None,
) -> None:
    """Send one envelope signed with ``auth``; PeerUnreachableError when the peer cannot take
    it in time. (A peer that refuses the frame says so on the connection, which this does
    not read: use ``request`` to learn it.)"""
    await _exchange(
        address,
        envelope,
        auth=auth,
        timeout=timeout,
        max_message_bytes=max_message_bytes,
        want_reply=False,
        stats=stats,
    )


async def request(
    address: Address,
    envelope: Envelope,
    *,
    auth: FrameAuth,
    timeout: float = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    stats: TransportStats | None = None,
) -> Envelope:
    """Send one envelope signed with ``auth`` and wait for the signed reply on the same
    connection. Raises ``PeerUnreachableError`` (no answer in time), ``PeerRefusedError``
    (the peer refused our frame), ``FrameAuthError`` or ``FrameError`` (a reply that does
    not verify)."""
    reply = await _exchange(
        address,
        envelope,
        auth=auth,
        timeout=timeout,
        max_message_bytes=max_message_bytes,
        want_reply=True,
        stats=stats,
    )
    assert reply is not None  # want_reply=True returns an envelope or raises
    return reply

"""Framed TCP transport: messages of any size cross; bad frames are dropped with a log line."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import msgpack
import pytest

from node.addresses import Address, free_port, parse_address
from node.errors import FrameError, PeerUnreachableError
from node.p2p.transport import (
    PROTOCOL_VERSION,
    Envelope,
    TransportServer,
    encode_frame,
    open_frame,
    request,
    send,
)
from tests.node.p2p.signing import AUTH

MAX = 1 << 20


class _Recorder:
    """A handler that keeps what it got and echoes requests of kind 'ping'."""

    def __init__(self) -> None:
        self.got: list[Envelope] = []
        self.arrived = asyncio.Event()

    async def __call__(self, envelope: Envelope) -> Envelope | None:
        self.got.append(envelope)
        self.arrived.set()
        if envelope.kind == "ping":
            return Envelope(sender="server", kind="pong", round=envelope.round)
        return None


async def _started(recorder: _Recorder) -> TransportServer:
    server = TransportServer(recorder, auth=AUTH, host="127.0.0.1", port=0, max_message_bytes=MAX)
    await server.start()
    return server


def _raw_send(port: int, data: bytes) -> bytes:
    """Send raw bytes on a fresh socket and return whatever comes back before close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_large_model_crosses_in_one_message() -> None:
    async def scenario() -> tuple[Envelope, Envelope]:
        recorder = _Recorder()
        server = await _started(recorder)
        try:
            payload = bytes(range(256)) * 3000  # 768 kB, far past any datagram
            await send(
                Address("127.0.0.1", server.port),
                Envelope(sender="a", kind="update", round=3, payload=payload, meta={"n": 7}),
                auth=AUTH,
                max_message_bytes=MAX,
            )
            reply = await request(
                Address("127.0.0.1", server.port),
                Envelope(sender="a", kind="ping", round=4),
                auth=AUTH,
            )
            await asyncio.wait_for(recorder.arrived.wait(), 5)
            return recorder.got[0], reply
        finally:
            await server.stop()

    got, reply = asyncio.run(scenario())

    assert got.sender == "a" and got.kind == "update" and got.round == 3
    assert got.payload == bytes(range(256)) * 3000 and got.meta == {"n": 7}
    assert reply.kind == "pong" and reply.round == 4 and reply.sender == "server"


def _body(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(packed)) + packed


GARBAGE = {
    "oversized": struct.pack(">I", MAX + 1) + b"x" * 100,
    "not msgpack": struct.pack(">I", 6) + b"\xc1\xc1\xc1\xc1\xc1\xc1",
    "wrong version": _body({"v": 99, "sender": "x", "kind": "update", "round": 1}),
    "no sender": _body({"v": PROTOCOL_VERSION, "kind": "update", "round": 1}),
    "negative round": _body({"v": PROTOCOL_VERSION, "sender": "x", "kind": "u", "round": -1}),
    "a list": _body([1, 2, 3]),
    "truncated": struct.pack(">I", 1000) + b"abc",
    "half a header": b"\x00\x00",
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_bad_frames_are_dropped_with_a_log_line_and_the_server_keeps_serving(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[int, Envelope, int]:
        recorder = _Recorder()
        server = await _started(recorder)
        try:
            await asyncio.to_thread(_raw_send, server.port, GARBAGE[name])
            reply = await request(
                Address("127.0.0.1", server.port), Envelope(sender="b", kind="ping"), auth=AUTH
            )
            return len(recorder.got), reply, server.stats.frames_dropped
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="node.p2p.transport"):
        delivered, reply, dropped = asyncio.run(scenario())

    assert delivered == 1  # only the good ping reached the handler
    assert reply.kind == "pong"
    assert dropped == 1
    assert any("dropped a frame" in r.getMessage() for r in caplog.records)


def test_a_good_frame_after_a_bad_one_on_the_same_connection_still_arrives() -> None:
    async def scenario() -> bytes:
        recorder = _Recorder()
        server = await _started(recorder)
        try:
            good = encode_frame(Envelope(sender="c", kind="ping", round=1), auth=AUTH)
            return await asyncio.to_thread(_raw_send, server.port, GARBAGE["no sender"] + good)
        finally:
            await server.stop()

    raw = asyncio.run(scenario())

    assert open_frame(raw[4:]).envelope.kind == "pong"


def test_senders_refuse_what_receivers_would_drop() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        encode_frame(
            Envelope(sender="a", kind="k", payload=b"x" * 2000), max_message_bytes=1000, auth=AUTH
        )


def test_an_absent_peer_is_reported_not_raised_raw() -> None:
    port = free_port()  # nobody listens there

    with pytest.raises(PeerUnreachableError):
        asyncio.run(send(Address("127.0.0.1", port), Envelope(sender="a", kind="k"), auth=AUTH))


def test_parse_address() -> None:
    assert parse_address("10.1.2.3:5000") == Address("10.1.2.3", 5000)
    assert parse_address("[::1]:80") == Address("::1", 80)
    for bad in ["nohost", ":5000", "h:0", "h:99999", "h:x"]:
        with pytest.raises(ValueError, match="host:port"):
            parse_address(bad)

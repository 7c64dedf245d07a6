"""Signed frames: forged, tampered, impersonating, stale and replayed frames are dropped and
counted, honest ones keep flowing; keys and secrets are set up from files."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
import time
from pathlib import Path

import msgpack
import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typer.testing import CliRunner

from node.addresses import Address
from node.cli import peer as peer_cli
from node.errors import ConfigError, FrameAuthError, PeerRefusedError
from node.p2p.auth import (
    FrameAuth,
    RegistryKeys,
    ReplayGuard,
    SharedSecretAuth,
    auth_from_config,
    load_or_create_signing_key,
)
from node.p2p.config import P2PSection
from node.p2p.transport import (
    AUTH_KEY,
    MESSAGE_KEY,
    NONCE_KEY,
    PAYLOAD_KEY,
    PROTOCOL_VERSION,
    SIGNATURE_KEY,
    TIMESTAMP_KEY,
    VERSION_KEY,
    Envelope,
    TransportServer,
    encode_frame,
    open_frame,
    request,
    send,
)
from tests.node.p2p.signing import AUTH, KeyBook

ROOT = Path(__file__).resolve().parents[3]


class _Recorder:
    """A handler that keeps what it got and answers kind 'ping' with 'pong'."""

    def __init__(self, name: str = "server") -> None:
        self.name = name
        self.got: list[Envelope] = []

    async def __call__(self, envelope: Envelope) -> Envelope | None:
        self.got.append(envelope)
        if envelope.kind == "ping":
            return Envelope(sender=self.name, kind="pong", round=envelope.round)
        return None


def _raw_send(port: int, data: bytes) -> bytes:
    """Send raw bytes on a fresh socket and return whatever comes back before close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _crafted(auth: FrameAuth, sender: str, *, timestamp: float, payload: bytes = b"") -> bytes:
    """A well-signed frame with a chosen timestamp (what a sender with a wrong clock sends)."""
    inner = {
        "sender": sender,
        "kind": "update",
        "round": 1,
        "meta": {},
        PAYLOAD_KEY: payload,
        TIMESTAMP_KEY: timestamp,
        NONCE_KEY: os.urandom(16),
    }
    message = msgpack.packb(inner, use_bin_type=True)
    outer = {
        VERSION_KEY: PROTOCOL_VERSION,
        AUTH_KEY: auth.scheme,
        MESSAGE_KEY: message,
        SIGNATURE_KEY: auth.sign(message),
    }
    body = msgpack.packb(outer, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _tampered(frame: bytes) -> bytes:
    """``frame`` with its payload changed after signing, signature kept."""
    outer = msgpack.unpackb(frame[4:], raw=False)
    inner = msgpack.unpackb(outer[MESSAGE_KEY], raw=False)
    inner[PAYLOAD_KEY] = b"poisoned" + inner[PAYLOAD_KEY][8:]
    outer[MESSAGE_KEY] = msgpack.packb(inner, use_bin_type=True)
    body = msgpack.packb(outer, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _refusal_reason(raw: bytes) -> str:
    with pytest.raises(PeerRefusedError) as err:
        open_frame(raw[4:])
    return err.value.reason


def test_forged_tampered_stale_and_replayed_frames_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[list[Envelope], Envelope, dict[str, int], list[str]]:
        # Prepare
        recorder = _Recorder()
        server = TransportServer(recorder, auth=AUTH, host="127.0.0.1")
        await server.start()
        to = Address("127.0.0.1", server.port)
        honest = encode_frame(
            Envelope(sender="a", kind="update", round=1, payload=b"honest-update"), auth=AUTH
        )
        try:
            # Execute: honest frames between a wrong key, a tampered copy, a replay, a stale frame
            await send(to, Envelope(sender="a", kind="update", payload=b"1"), auth=AUTH)
            wrong = SharedSecretAuth(b"a-guess-at-the-shared-secret")
            await send(to, Envelope(sender="a", kind="update", payload=b"forged"), auth=wrong)
            reasons = [
                _refusal_reason(await asyncio.to_thread(_raw_send, server.port, _tampered(honest)))
            ]
            await asyncio.to_thread(_raw_send, server.port, honest)  # delivered once...
            replay = await asyncio.to_thread(_raw_send, server.port, honest)  # ...not twice
            reasons.append(_refusal_reason(replay))
            stale = _crafted(AUTH, "a", timestamp=time.time() - 3600)
            reasons.append(_refusal_reason(await asyncio.to_thread(_raw_send, server.port, stale)))
            reply = await request(to, Envelope(sender="a", kind="ping", round=7), auth=AUTH)
            return recorder.got, reply, server.stats.refused, reasons
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="node.p2p.transport"):
        got, reply, refused, reasons = asyncio.run(scenario())

    # Assert: the handler saw the honest frames only, each once; the rest is counted by reason
    assert [(e.kind, e.payload) for e in got] == [
        ("update", b"1"),
        ("update", b"honest-update"),
        ("ping", b""),
    ]
    assert reply.kind == "pong" and reply.round == 7
    assert refused == {"bad_signature": 2, "replayed": 1, "stale": 1}
    assert reasons == ["bad_signature", "replayed", "stale"]  # each sender is told why
    assert sum("dropped a frame" in r.getMessage() for r in caplog.records) == 4


def test_a_request_with_the_wrong_secret_is_refused_by_name() -> None:
    async def scenario() -> PeerRefusedError:
        server = TransportServer(_Recorder(), auth=AUTH, host="127.0.0.1")
        await server.start()
        try:
            with pytest.raises(PeerRefusedError) as err:
                await request(
                    Address("127.0.0.1", server.port),
                    Envelope(sender="a", kind="ping"),
                    auth=SharedSecretAuth(b"not-the-secret-they-share"),
                )
            return err.value
        finally:
            await server.stop()

    error = asyncio.run(scenario())

    assert error.reason == "bad_signature"
    assert "refused this node's frame: bad_signature" in str(error)


def test_with_registered_keys_no_one_can_sign_as_another_node() -> None:
    # Prepare: alice, mallory and bob have registered keys; ghost has none
    book = KeyBook()
    alice, mallory, bob = book.enrol("alice"), book.enrol("mallory"), book.enrol("bob")
    ghost = KeyBook().enrol("ghost")

    async def scenario() -> tuple[list[Envelope], dict[str, int], Envelope]:
        recorder = _Recorder("bob")
        server = TransportServer(recorder, auth=bob, host="127.0.0.1")
        await server.start()
        to = Address("127.0.0.1", server.port)
        try:
            # Execute: mallory signs with her own key but names alice; ghost is unknown
            await send(to, Envelope(sender="alice", kind="update", payload=b"evil"), auth=mallory)
            await send(to, Envelope(sender="ghost", kind="update", payload=b"who"), auth=ghost)
            await send(to, Envelope(sender="alice", kind="update", payload=b"real"), auth=alice)
            reply = await request(to, Envelope(sender="mallory", kind="ping"), auth=mallory)
            return recorder.got, server.stats.refused, reply
        finally:
            await server.stop()

    got, refused, reply = asyncio.run(scenario())

    # Assert
    assert [(e.sender, e.payload) for e in got] == [("alice", b"real"), ("mallory", b"")]
    assert refused == {"bad_signature": 1, "unknown_sender": 1}
    assert reply.kind == "pong"  # bob's reply verified against bob's registered key


def test_a_replay_guard_that_forgets_refuses_what_it_forgot() -> None:
    now = 1000.0
    guard = ReplayGuard(60, max_entries=2, clock=lambda: now)
    for i in range(3):
        guard.check("a", now - 10 + i, bytes([i]) * 16)

    with pytest.raises(FrameAuthError) as err:
        guard.check("a", now - 10, bytes([0]) * 16)  # forgotten to make room: still refused

    assert err.value.reason == "stale"


def test_the_signing_key_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "p2p_ed25519.key"

    first = load_or_create_signing_key(path)
    again = load_or_create_signing_key(path)

    assert path.stat().st_mode & 0o777 == 0o600
    assert first.private_bytes_raw() == again.private_bytes_raw()
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_signing_key(path)


def test_frames_cannot_go_unsigned_and_short_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"p2p\.shared_secret_file"):
        auth_from_config(P2PSection())
    with pytest.raises(ConfigError, match="too short"):
        auth_from_config(P2PSection(shared_secret="short"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="missing"):
        auth_from_config(P2PSection(shared_secret_file=tmp_path / "missing"))


@pytest.mark.usefixtures("no_peer_environment")
def test_the_peer_command_without_a_secret_says_what_to_set() -> None:
    app = typer.Typer()
    app.command()(peer_cli.peer)

    result = CliRunner().invoke(app, ["--config", str(ROOT / "configs" / "base.yaml")])

    assert result.exit_code == 2
    assert "--shared-secret-file" in result.output
    assert "Traceback" not in result.output


def test_registry_keys_cost_one_lookup_per_sender_and_period() -> None:
    # Prepare: a registry that knows alice (whose key changes) and not ghost
    now = [0.0]
    published = {"alice": base64.b64encode(bytes(32)).decode()}
    asked: list[str] = []

    def fetch(node_id: str) -> str | None:
        asked.append(node_id)
        return published.get(node_id)

    keys = RegistryKeys(fetch, ttl_s=300, miss_ttl_s=10, clock=lambda: now[0])

    async def scenario() -> list[bool]:
        found = [await keys.get("ghost") is None for _ in range(100)]
        first = await keys.get("alice")
        published["alice"] = base64.b64encode(bytes(range(32))).decode()
        cached = await keys.get("alice")
        now[0] = 301.0
        rotated = await keys.get("alice")
        assert first is not None and cached is not None and rotated is not None
        return [all(found), _raw(first) == _raw(cached), _raw(rotated) == bytes(range(32))]

    # Execute
    outcome = asyncio.run(scenario())

    # Assert: a flood naming a stranger asked the registry once; a new key is used after the TTL
    assert outcome == [True, True, True]
    assert asked == ["ghost", "alice", "alice"]


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

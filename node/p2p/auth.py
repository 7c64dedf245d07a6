"""Who sent a P2P or gossip frame: every frame is signed, and checked before a handler sees it.

Two schemes, one interface (``FrameAuth``: ``sign`` bytes, ``verify`` a sender's bytes):

- ``SharedSecretAuth`` (``hmac-sha256``): peers given only as ``--peers ip:port`` share a
  secret from the YAML (``p2p.shared_secret`` or ``p2p.shared_secret_file``). It proves a
  frame comes from *a holder of the secret*; every holder can name itself anything.
- ``Ed25519Auth`` (``ed25519``): with a registry, each node signs with its own private key
  (``load_or_create_signing_key``: a 0600 file under its data dir) and publishes the public
  key when it registers; a receiver checks a frame against the key the registry holds for
  the frame's sender (``RegistryKeys``, cached). A node cannot sign as another.

``ReplayGuard`` refuses frames whose timestamp is outside a window around the receiver's
clock, and frames whose (sender, nonce) it has already accepted within that window. Each
refusal raises ``FrameAuthError`` with the ``reason`` it is counted under.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import stat
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from node.errors import ConfigError, FrameAuthError, NotFoundError, RegistryClientError
from node.p2p.config import P2PSection

__all__ = [
    "DEFAULT_REPLAY_WINDOW_S",
    "KEY_FILE_NAME",
    "MIN_SECRET_BYTES",
    "REFUSED_REPLAYED",
    "REFUSED_SCHEME",
    "REFUSED_SIGNATURE",
    "REFUSED_STALE",
    "REFUSED_UNKNOWN_SENDER",
    "Ed25519Auth",
    "FrameAuth",
    "RegistryKeys",
    "ReplayGuard",
    "SharedSecretAuth",
    "auth_from_config",
    "load_or_create_signing_key",
    "load_shared_secret",
    "parse_public_key",
    "public_key_text",
    "registry_key_fetch",
]

logger = logging.getLogger(__name__)

REFUSED_SIGNATURE = "bad_signature"
REFUSED_UNKNOWN_SENDER = "unknown_sender"
REFUSED_STALE = "stale"
REFUSED_REPLAYED = "replayed"
REFUSED_SCHEME = "scheme"

MIN_SECRET_BYTES = 16
DEFAULT_REPLAY_WINDOW_S = 60.0
KEY_FILE_NAME = "p2p_ed25519.key"
_PUBLIC_KEY_BYTES = 32


class FrameAuth(ABC):
    """Signs this node's frames and verifies others'; ``scheme`` names it on the wire."""

    scheme: ClassVar[str]

    @abstractmethod
    def sign(self, message: bytes) -> bytes:
        """The signature of ``message`` (the frame's signed bytes)."""

    @abstractmethod
    async def verify(self, sender: str, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` proves ``sender`` signed ``message``; else ``FrameAuthError``."""


class SharedSecretAuth(FrameAuth):
    """HMAC-SHA256 with a secret every peer holds (at least ``MIN_SECRET_BYTES`` bytes).

    Raises ``ConfigError`` for a shorter secret. The secret never appears in ``repr``.
    """

    scheme = "hmac-sha256"

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes | bytearray):
            raise ConfigError(
                f"p2p.shared_secret must be bytes, got {type(secret).__name__} "
                "(encode a text secret: secret.encode())"
            )
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"p2p.shared_secret: {len(secret)} bytes is too short; use at least "
                f"{MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)"
            )
        self._key = secret

    def __repr__(self) -> str:
        return "SharedSecretAuth(<secret>)"

    def sign(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message``: 32 bytes."""
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def verify(self, sender: str, message: bytes, signature: bytes) -> None:
        """``FrameAuthError("bad_signature")`` unless the HMAC matches (constant time)."""
        if not hmac.compare_digest(self.sign(message), signature):
            raise FrameAuthError(
                REFUSED_SIGNATURE,
                f"frame from {sender!r} does not verify with the shared secret "
                "(do both peers use the same p2p.shared_secret?)",
            )


class _PublicKeys(Protocol):
    async def get(self, node_id: str) -> Ed25519PublicKey | None: ...


class Ed25519Auth(FrameAuth):
    """Signs with this node's Ed25519 key; verifies with the sender's key from ``keys``.

    ``keys.get(node_id)`` gives a sender's public key or None (``RegistryKeys`` fits).
    ``public_key`` is this node's public key as base64, what it registers.
    """

    scheme = "ed25519"

    def __init__(self, private_key: Ed25519PrivateKey, keys: _PublicKeys) -> None:
        self._private_key = private_key
        self.keys = keys
        self.public_key = public_key_text(private_key.public_key())

    def __repr__(self) -> str:
        return f"Ed25519Auth(public_key={self.public_key})"

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message``: 64 bytes."""
        return self._private_key.sign(message)

    async def verify(self, sender: str, message: bytes, signature: bytes) -> None:
        """``FrameAuthError``: ``unknown_sender`` without a registered key, else ``bad_signature``
        when the signature is not the sender's (a forged or impersonating frame)."""
        key = await self.keys.get(sender)
        if key is None:
            raise FrameAuthError(
                REFUSED_UNKNOWN_SENDER, f"no public key is registered for sender {sender!r}"
            )
        try:
            key.verify(signature, message)
        except InvalidSignature as exc:
            raise FrameAuthError(
                REFUSED_SIGNATURE, f"frame does not verify with {sender!r}'s registered key"
            ) from exc


def public_key_text(key: Ed25519PublicKey) -> str:
    """``key``'s 32 raw bytes as standard base64 (44 characters): the registry's form."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from 32 raw bytes as base64 (standard or URL-safe) or hex; ``ValueError``."""
    raw: bytes | None = None
    if len(text) == 2 * _PUBLIC_KEY_BYTES:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            plain = text.replace("-", "+").replace("_", "/").rstrip("=")
            raw = base64.b64decode(plain + "=" * (-len(plain) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("public key is neither base64 nor hex") from exc
    if len(raw) != _PUBLIC_KEY_BYTES:
        raise ValueError(f"public key has {len(raw)} bytes, not {_PUBLIC_KEY_BYTES}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """This node's Ed25519 key from ``path`` (PEM, PKCS#8), created with mode 0600 if absent.

    Raises ``ConfigError`` naming the file when it is readable by others than its owner
    (``chmod 600`` it), unreadable, or not an Ed25519 key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it just now: use theirs
            return load_or_create_signing_key(path)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        logger.info("Created this node's P2P signing key at %s", path)
        return key
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{path}: the private key is open to other users (mode {mode & 0o777:o}); "
                "run `chmod 600` on it"
            )
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the P2P signing key: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM private key: {exc}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return loaded


def load_shared_secret(section: P2PSection) -> bytes | None:
    """The secret ``p2p.shared_secret`` or the file ``p2p.shared_secret_file`` holds; None if unset.

    The file's content is used as is, less one trailing newline. Raises ``ConfigError``
    naming the file when it cannot be read; warns when others may read it.
    """
    if section.shared_secret is not None:
        return section.shared_secret.get_secret_value().encode()
    path = section.shared_secret_file
    if path is None:
        return None
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"p2p.shared_secret_file: cannot read {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s is readable by other users; chmod 600 it", path)
    return data.removesuffix(b"\n")


class RegistryKeys:
    """Senders' public keys as the registry publishes them, cached.

    ``fetch(node_id)`` is a blocking call returning the registered base64 key or None
    (``registry_key_fetch``); it runs in a worker thread. A key is kept ``ttl_s`` seconds
    (a node that re-registers a new key is trusted with it after at most that), an
    absent one ``miss_ttl_s`` (so a flood of frames naming strangers costs the registry
    one lookup per name and period), at most ``max_entries`` of each.
    """

    def __init__(
        self,
        fetch: Callable[[str], str | None],
        *,
        ttl_s: float = 300.0,
        miss_ttl_s: float = 10.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.ttl_s = ttl_s
        self.miss_ttl_s = miss_ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Ed25519PublicKey | None]] = OrderedDict()
        self.lookups = 0

    async def get(self, node_id: str) -> Ed25519PublicKey | None:
        """``node_id``'s registered key, or None when it has none (or the registry is away)."""
        now = self._clock()
        cached = self._cache.get(node_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        self.lookups += 1
        key: Ed25519PublicKey | None = None
        try:
            text = await asyncio.to_thread(self._fetch, node_id)
            key = parse_public_key(text) if text else None
        except RegistryClientError as exc:
            logger.warning("Could not look up %r's public key: %s", node_id, exc)
        except ValueError as exc:
            logger.warning("The registry's public key for %r is unusable: %s", node_id, exc)
        self._cache.pop(node_id, None)
        self._cache[node_id] = (now + (self.ttl_s if key else self.miss_ttl_s), key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return key


class _NodeLookup(Protocol):
    def get_node(self, node_id: str | None = None) -> _HasPublicKey: ...


class _HasPublicKey(Protocol):
    @property
    def public_key(self) -> str | None: ...


def registry_key_fetch(registry: _NodeLookup) -> Callable[[str], str | None]:
    """A ``RegistryKeys`` fetch through ``registry.get_node`` (``GET /nodes/{id}``).

    An unknown node is None; other registry failures raise ``RegistryClientError``.
    """

    def fetch(node_id: str) -> str | None:
        try:
            return registry.get_node(node_id).public_key
        except NotFoundError:
            return None

    return fetch


class ReplayGuard:
    """Refuses frames outside ``window_s`` of the local clock, and repeats within it.

    Remembers each accepted (sender, nonce) until it falls out of the window; beyond
    ``max_entries`` the oldest is forgotten and frames no newer than it count as stale,
    so nothing forgotten can be replayed.
    """

    def __init__(
        self,
        window_s: float = DEFAULT_REPLAY_WINDOW_S,
        *,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._floor = float("-inf")

    def check(self, sender: str, timestamp: float, nonce: bytes) -> None:
        """Accept (and remember) a verified frame, or raise ``FrameAuthError`` stale/replayed.

        ``timestamp``: the sender's clock, Unix seconds.
        """
        now = self._clock()
        if abs(now - timestamp) > self.window_s or timestamp <= self._floor:
            raise FrameAuthError(
                REFUSED_STALE,
                f"frame from {sender!r} is {now - timestamp:+.1f} s off this node's clock "
                f"(window {self.window_s:g} s)",
            )
        while self._seen:
            oldest_key, oldest_ts = next(iter(self._seen.items()))
            if oldest_ts >= now - self.window_s:
                break
            del self._seen[oldest_key]
        key = (sender, nonce)
        if key in self._seen:
            raise FrameAuthError(REFUSED_REPLAYED, f"frame from {sender!r} was already received")
        self._seen[key] = timestamp
        while len(self._seen) > self.max_entries:
            _, evicted_ts = self._seen.popitem(last=False)
            self._floor = max(self._floor, evicted_ts)


def auth_from_config(section: P2PSection, *, registry: _NodeLookup | None = None) -> FrameAuth:
    """The frame signing the ``p2p`` section asks for.

    With a ``registry``: ``Ed25519Auth`` with the key in ``p2p.data_dir`` (created there),
    senders' keys from the registry. Otherwise ``SharedSecretAuth`` from
    ``p2p.shared_secret`` / ``p2p.shared_secret_file``. Raises ``ConfigError`` when neither a
    registry nor a secret is configured, or a file is unusable.
    """
    if registry is not None:
        if section.data_dir is None:
            raise ConfigError(
                "p2p.data_dir: needed with a registry, to keep this node's signing key"
            )
        key = load_or_create_signing_key(section.data_dir / KEY_FILE_NAME)
        return Ed25519Auth(key, RegistryKeys(registry_key_fetch(registry)))
    secret = load_shared_secret(section)
    if secret is None:
        raise ConfigError(
            "p2p.shared_secret_file: peer frames are signed; give every peer the same secret "
            "(p2p.shared_secret_file, --shared-secret-file or p2p.shared_secret), "
            "or use a registry"
        )
    return SharedSecretAuth(secret)

"""Frame signing for tests: one shared secret every honest test peer holds, and Ed25519 keys."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from node.p2p.auth import Ed25519Auth, SharedSecretAuth

SECRET = b"tests-share-this-p2p-secret"
AUTH = SharedSecretAuth(SECRET)


def secret_file(directory: Path, secret: bytes = SECRET) -> Path:
    """A 0600 file holding ``secret``, as a peer's ``--shared-secret-file``."""
    path = directory / f"secret-{secret.hex()[:8]}"
    path.write_bytes(secret + b"\n")
    path.chmod(0o600)
    return path


class KeyBook:
    """Public keys by node id: a stand-in for the registry's (``RegistryKeys``' interface)."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PublicKey] = {}

    async def get(self, node_id: str) -> Ed25519PublicKey | None:
        return self.keys.get(node_id)

    def enrol(self, node_id: str) -> Ed25519Auth:
        """A fresh key for ``node_id``, its public half published here."""
        key = Ed25519PrivateKey.generate()
        self.keys[node_id] = key.public_key()
        return Ed25519Auth(key, self)

"""A node's registry credentials on disk: one 0600 file per registry and node id.

A node chooses its own secret (``secrets.token_urlsafe(32)``), writes it here *before* it
registers, and sends it as the bearer token of its first register: the registry stores
only its hash. A lost register answer, a restart or a second run with the same data
directory then finds the same secret, and the registry recognises the node.

Layout under the node's data directory::

    credentials/                      mode 0700
      <host>_<port>-<hash8>/          one folder per registry URL, mode 0700
        <node_id>.json                {"registry_url", "node_id", "token"}, mode 0600
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from node.errors import ConfigError
from node.names import check_node_id

__all__ = ["CredentialStore"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class CredentialStore:
    """The node credentials under ``data_dir`` (created on first write, mode 0700).

    Raises ``ConfigError`` naming the file when it cannot be read, written or parsed.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "credentials"

    def path(self, registry_url: str, node_id: str) -> Path:
        """The file holding ``node_id``'s token at ``registry_url`` (which may not exist).

        Raises ``ConfigError`` when ``node_id`` is not a node id the registry accepts
        (``registry.schemas.NODE_ID_PATTERN``): such a name could point outside the store.
        """
        check_node_id(node_id)
        url = registry_url.rstrip("/")
        parts = urlsplit(url)
        readable = _UNSAFE.sub("_", parts.netloc or url)[:64]
        digest = hashlib.sha256(url.encode()).hexdigest()[:8]
        return self.root / f"{readable}-{digest}" / f"{node_id}.json"

    def load(self, registry_url: str, node_id: str) -> str | None:
        """The stored token, or None when there is no file."""
        path = self.path(registry_url, node_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read node credential {path}: {exc}") from exc
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ConfigError(f"node credential {path} has no 'token' string")
        return token

    def save(self, registry_url: str, node_id: str, token: str) -> Path:
        """Write ``token``, replacing any stored one, atomically (a reader sees the old file
        or the new, whole); returns the file's path. Folders are 0700, the file 0600."""
        path = self.path(registry_url, node_id)
        try:
            tmp = self._write_temp(path, registry_url, node_id, token)
            os.replace(tmp, path)
        except OSError as exc:
            raise ConfigError(
                f"cannot write node credential {path}: {exc.strerror or exc}"
            ) from exc
        return path

    def load_or_create(self, registry_url: str, node_id: str) -> str:
        """The stored token, or a new secret stored first (so it is never sent unsaved).

        Two processes racing for the same node agree: the first file written wins."""
        token = self.load(registry_url, node_id)
        if token is not None:
            return token
        path = self.path(registry_url, node_id)
        token = secrets.token_urlsafe(32)
        try:
            tmp = self._write_temp(path, registry_url, node_id, token)
            try:
                os.link(tmp, path)  # fails when another process stored one first
                return token
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        except OSError as exc:
            raise ConfigError(
                f"cannot write node credential {path}: {exc.strerror or exc}"
            ) from exc
        stored = self.load(registry_url, node_id)
        if stored is None:
            raise ConfigError(f"node credential {path} vanished while it was being created")
        return stored

    def _write_temp(self, path: Path, registry_url: str, node_id: str, token: str) -> Path:
        """A complete 0600 file beside ``path``, its folders made 0700."""
        self.root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder in (self.root, path.parent):
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)
        record = {"registry_url": registry_url.rstrip("/"), "node_id": node_id, "token": token}
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mkstemp makes it 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(record, out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

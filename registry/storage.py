"""Model snapshot files under the data dir: size-limited, hashed, moved in atomically."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["ModelStore", "TooLargeError"]

log = logging.getLogger(__name__)


class TooLargeError(Exception):
    """The upload exceeded the configured size limit."""


class ModelStore:
    """Stores model bytes as files; the database keeps their metadata."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "incoming").mkdir(exist_ok=True)

    async def receive(self, chunks: AsyncIterator[bytes], limit: int) -> tuple[Path, str, int]:
        """Write a stream to a temporary file; returns (path, sha256, size)."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.root / "incoming", suffix=".part")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLargeError(f"model exceeds the limit of {limit} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, digest.hexdigest(), size

    def place(self, tmp: Path, *, group_id: int, round_: int, sha256: str) -> str:
        """Move a received file to its final place; returns the path relative to root."""
        rel = Path(str(group_id)) / f"{round_:010d}-{sha256[:16]}.bin"
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        return rel.as_posix()

    def path(self, rel: str) -> Path:
        """Absolute path of a stored snapshot."""
        return self.root / rel

    def delete(self, rels: list[str]) -> None:
        """Remove pruned snapshot files (best effort)."""
        for rel in rels:
            try:
                (self.root / rel).unlink(missing_ok=True)
            except OSError as exc:  # pragma: no cover - disk trouble only
                log.warning("could not delete %s: %s", rel, exc)

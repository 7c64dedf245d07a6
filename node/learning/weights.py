"""Weights to bytes and back with ``np.savez``: no pickle, order preserved."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from node.errors import SerializationError

__all__ = ["bytes_to_weights", "weights_to_bytes"]

_KEY_PREFIX = "w"


def _key(index: int) -> str:
    return f"{_KEY_PREFIX}{index}"


def weights_to_bytes(weights: list[np.ndarray]) -> bytes:
    """Encode a list of arrays as an ``.npz`` blob (no pickle; object arrays refused)."""
    buffer = io.BytesIO()
    arrays = {_key(i): np.asarray(w) for i, w in enumerate(weights)}
    try:
        np.savez(buffer, allow_pickle=False, **arrays)
    except ValueError as exc:
        raise SerializationError(f"Weights cannot be encoded without pickle: {exc}") from exc
    return buffer.getvalue()


def bytes_to_weights(blob: bytes) -> list[np.ndarray]:
    """Decode a blob made by ``weights_to_bytes``; a corrupt blob raises SerializationError."""
    try:
        loaded = np.load(io.BytesIO(blob), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise SerializationError("Not a weights blob: a bare array, not an .npz archive")
        with loaded as npz:
            expected = [_key(i) for i in range(len(npz.files))]
            if sorted(npz.files) != sorted(expected):
                raise SerializationError(
                    f"Not a weights blob: unexpected entries {sorted(npz.files)[:5]}"
                )
            return [npz[key] for key in expected]
    except SerializationError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise SerializationError(
            f"Corrupt weights blob ({len(blob)} bytes): {type(exc).__name__}: {exc}"
        ) from exc

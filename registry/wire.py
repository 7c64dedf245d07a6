"""The model snapshot format both sides share: weights as an uncompressed ``.npz`` without
pickle, the model signature, and bounded, checked decoding.

A snapshot is a zip archive of ``w0.npy, w1.npy, ...`` (one member per tensor, in
``state_dict`` order), every member stored (``ZIP_STORED``), every array of a plain numeric
dtype (``DTYPES``). Decoding reads every ``.npy`` header first and refuses, before a byte of
array data is read: compressed or encrypted members, object dtypes (pickle), structured
dtypes, headers that do not fit the expected ``ModelSignature``, arrays over the byte cap,
and members whose declared size is not what they hold.

Its errors are ``ValueError``s, so this module needs nothing but numpy::

    WireError                     a snapshot or signature that cannot be used
     ├── MalformedSnapshotError   bytes that are not a snapshot in this format
     │    └── OversizedSnapshotError  an array (or all of them) over the byte cap
     ├── SignatureMismatchError   tensors that do not fit the expected signature
     ├── NonFiniteError           NaN or infinity in a tensor
     └── InvalidSignatureError    a signature's JSON form that is not a signature

The node translates them into its own tree (``node.learning.weights``); the registry
answers them with 422.
"""

from __future__ import annotations

import io
import math
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DTYPES",
    "MAX_TENSORS",
    "InvalidSignatureError",
    "MalformedSnapshotError",
    "ModelSignature",
    "NonFiniteError",
    "OversizedSnapshotError",
    "SignatureMismatchError",
    "TensorSpec",
    "WireError",
    "bytes_to_weights",
    "check_finite",
    "weights_to_bytes",
]

# The dtypes a snapshot may carry, by numpy name (byte order is not part of the name).
DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
)
MAX_TENSORS = 4096
MAX_DIMS = 32
# Byte cap on the arrays of a snapshot decoded without a signature (the registry's default
# `max_model_bytes`).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# numpy's own default: longer .npy headers are refused before they are parsed.
MAX_HEADER_BYTES = 10_000
# Upper bounds of what np.savez adds around the array bytes: per member (local and central
# zip headers, a zip64 extra, the .npy header of up to MAX_DIMS dimensions) and per archive.
TENSOR_OVERHEAD_BYTES = 1024
ARCHIVE_OVERHEAD_BYTES = 1024
# Array data is read in pieces of this size into the array itself.
_READ_CHUNK = 1 << 20
# Tensor names of a signature that knows none: the snapshot's own member names.
_POSITIONAL = re.compile(r"w(\d+)")
# How many tensors a signature's description lists before "...".
_DESCRIBED = 3


class WireError(ValueError):
    """A snapshot or a signature that cannot be used; the message says why."""


class MalformedSnapshotError(WireError):
    """Bytes that are not a snapshot in this format (not a zip, compressed, pickle, torn)."""


class OversizedSnapshotError(MalformedSnapshotError):
    """An array's header (or all of them) declares more bytes than the cap allows."""


class SignatureMismatchError(WireError):
    """Tensors that do not fit the expected signature (count, name, shape or dtype).

    ``difference`` is ``ModelSignature.difference``'s wording, for callers that name the
    model (the registry: "domain 'digits' uses a model of ...").
    """

    def __init__(self, difference: str) -> None:
        super().__init__(f"weights do not fit a model of {difference}")
        self.difference = difference


class NonFiniteError(WireError):
    """A tensor holds NaN or infinity."""


class InvalidSignatureError(WireError):
    """A signature's JSON form that does not describe a signature."""


def _member(index: int) -> str:
    """The archive member holding tensor ``index``."""
    return f"w{index}.npy"


def _positional(index: int) -> str:
    return f"w{index}"


def _dtype_name(dtype: np.dtype[Any]) -> str:
    """``dtype``'s name when a snapshot may carry it; MalformedSnapshotError otherwise."""
    if dtype.hasobject:
        raise MalformedSnapshotError("Not a weights blob: it holds Python objects (pickle)")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.name not in DTYPES:
        raise MalformedSnapshotError(
            f"Not a weights blob: dtype {dtype.str!r} is not one of {', '.join(sorted(DTYPES))}"
        )
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
        # torch refuses to take non-native byte order: a node would die loading it.
        raise MalformedSnapshotError(
            f"Not a weights blob: dtype {dtype.str!r} is big-endian; snapshots are little-endian"
        )
    return dtype.name


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: its ``state_dict`` key, shape and exact dtype name.

    ``name`` is ``w<i>`` (the tensor's position) when the real key is unknown.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def kind(self) -> str:
        """The dtype's kind: ``"f"`` float, ``"i"`` signed int, ``"u"``, ``"b"``, ``"c"``."""
        return np.dtype(self.dtype).kind

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def __str__(self) -> str:
        return f"{self.name} [{', '.join(map(str, self.shape))}] {self.dtype}"


@dataclass(frozen=True)
class ModelSignature:
    """What a model's weights look like: one ``TensorSpec`` per tensor, in order.

    Hashable; equal when names, shapes and dtypes are. ``difference`` compares two
    signatures the way the registry (exact dtypes) or a node (dtype kinds) does.
    """

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def of(
        cls, weights: Sequence[np.ndarray], names: Sequence[str] | None = None
    ) -> ModelSignature:
        """The signature of ``weights`` (e.g. a learner's ``get_weights()``), with their
        ``state_dict`` keys when given (``names``, one per array) else ``w0, w1, ...``.

        Raises ``MalformedSnapshotError`` for an array no snapshot may carry (objects,
        strings) and ``ValueError`` when ``names`` does not have one name per array.
        """
        arrays = [np.asarray(w) for w in weights]
        keys = list(names) if names is not None else [_positional(i) for i in range(len(arrays))]
        if len(keys) != len(arrays):
            raise ValueError(f"{len(keys)} names for {len(arrays)} arrays")
        return cls(
            tuple(
                TensorSpec(key, tuple(int(d) for d in a.shape), _dtype_name(a.dtype))
                for key, a in zip(keys, arrays, strict=True)
            )
        )

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Each tensor's shape, in order."""
        return tuple(t.shape for t in self.tensors)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Each tensor's dtype kind, in order (see ``TensorSpec.kind``)."""
        return tuple(t.kind for t in self.tensors)

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors' data."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def max_blob_bytes(self) -> int:
        """An upper bound on the size of a snapshot of this signature (``weights_to_bytes``)."""
        return self.nbytes + len(self.tensors) * TENSOR_OVERHEAD_BYTES + ARCHIVE_OVERHEAD_BYTES

    def to_json(self) -> dict[str, Any]:
        """The JSON form: ``{"tensors": [{"name", "shape": [...], "dtype"}, ...]}``."""
        return {
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.tensors
            ]
        }

    @classmethod
    def from_json(cls, obj: object) -> ModelSignature:
        """The signature of a JSON form made by ``to_json``.

        Raises ``InvalidSignatureError`` naming the first thing wrong: no tensors, more
        than ``MAX_TENSORS`` or ``MAX_DIMS``, a negative or non-integer dimension, a dtype
        not in ``DTYPES``, an empty or repeated name.
        """
        tensors = obj.get("tensors") if isinstance(obj, Mapping) else None
        if not isinstance(tensors, list) or not 1 <= len(tensors) <= MAX_TENSORS:
            raise InvalidSignatureError(
                f"a model signature lists 1 to {MAX_TENSORS} tensors under 'tensors'"
            )
        specs = []
        for i, t in enumerate(tensors):
            if not isinstance(t, Mapping):
                raise InvalidSignatureError(f"tensor {i} is not an object")
            name, shape, dtype = t.get("name"), t.get("shape"), t.get("dtype")
            if not isinstance(name, str) or not name:
                raise InvalidSignatureError(f"tensor {i}: 'name' must be a non-empty string")
            if (
                not isinstance(shape, list)
                or len(shape) > MAX_DIMS
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
                or any(d < 0 for d in shape)
            ):
                raise InvalidSignatureError(
                    f"tensor {i} ({name}): 'shape' must list at most {MAX_DIMS} "
                    f"non-negative integers, got {shape!r}"
                )
            if dtype not in DTYPES:
                raise InvalidSignatureError(
                    f"tensor {i} ({name}): dtype {dtype!r} is not one of "
                    f"{', '.join(sorted(DTYPES))}"
                )
            specs.append(TensorSpec(name, tuple(shape), str(dtype)))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise InvalidSignatureError("tensor names must be unique")
        return cls(tuple(specs))

    def describe(self) -> str:
        """``"4 tensors (net.1.weight [64, 64] float32, net.1.bias [64] float32, ...)"``."""
        count = len(self.tensors)
        return f"{count} tensor{'' if count == 1 else 's'} {self._listing()}"

    def _listing(self) -> str:
        shown = ", ".join(str(t) for t in self.tensors[:_DESCRIBED])
        return f"({shown}{', ...' if len(self.tensors) > _DESCRIBED else ''})"

    def difference(
        self, other: ModelSignature, *, kinds_only: bool = False, reader: bool = False
    ) -> str | None:
        """None when ``other`` fits this signature, else the first difference, worded as the
        continuation of "... uses a model of ".

        Worded to whoever sent ``other`` ("its tensor 0 is ..., yours is ..."), or, with
        ``reader``, to whoever expects this signature of a model it received ("this node's
        tensor 0 is ..., the snapshot's is ...").

        Names are compared only when both sides know them (a positional ``w<i>`` fits any
        name); dtypes exactly, or by kind (float for float) with ``kinds_only``.
        """
        mine, theirs, they = (
            ("this node's", "the snapshot's", "the snapshot")
            if reader
            else ("its", "yours", "yours")
        )
        if len(other.tensors) != len(self.tensors):
            return f"{self.describe()}; {they} has {len(other.tensors)}: {other._listing()}"
        for i, (ours, got) in enumerate(zip(self.tensors, other.tensors, strict=True)):
            named = not (_is_positional(ours.name, i) or _is_positional(got.name, i))
            dtype_differs = ours.kind != got.kind if kinds_only else ours.dtype != got.dtype
            if (named and ours.name != got.name) or ours.shape != got.shape or dtype_differs:
                return f"{self.describe()}; {mine} tensor {i} is {ours}, {theirs} is {got}"
        return None


def _is_positional(name: str, index: int) -> bool:
    match = _POSITIONAL.fullmatch(name)
    return match is not None and int(match.group(1)) == index


def weights_to_bytes(weights: Sequence[np.ndarray]) -> bytes:
    """Encode arrays (any shapes, dtypes in ``DTYPES``) as a snapshot, in order.

    Raises ``MalformedSnapshotError`` for an array no snapshot may carry (objects need
    pickle, strings and records are refused when decoding).
    """
    arrays = [np.asarray(w) for w in weights]
    for i, a in enumerate(arrays):
        try:
            _dtype_name(a.dtype)
        except MalformedSnapshotError as exc:
            raise MalformedSnapshotError(
                f"Weights cannot be encoded without pickle: tensor {i}: {exc}"
            ) from exc
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{_positional(i): a for i, a in enumerate(arrays)})
    return buffer.getvalue()


@dataclass(frozen=True)
class _Header:
    """What a member's ``.npy`` header declares, and where its data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool
    data_offset: int


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Header:
    """The ``.npy`` header of a stored member, without reading its data."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise MalformedSnapshotError(
            f"Not a weights blob: member {info.filename} is compressed; only stored "
            "(uncompressed) members are accepted"
        )
    if info.flag_bits & 0x1:
        raise MalformedSnapshotError(f"Not a weights blob: member {info.filename} is encrypted")
    with archive.open(info) as fp:
        version = npy.read_magic(fp)
        if version == (1, 0):
            shape, fortran_order, dtype = npy.read_array_header_1_0(
                fp, max_header_size=MAX_HEADER_BYTES
            )
        elif version == (2, 0):
            shape, fortran_order, dtype = npy.read_array_header_2_0(
                fp, max_header_size=MAX_HEADER_BYTES
            )
        else:
            raise MalformedSnapshotError(
                f"Not a weights blob: member {info.filename} has .npy version {version}"
            )
        offset = fp.tell()
    if len(shape) > MAX_DIMS or any(not isinstance(d, int) or d < 0 for d in shape):
        raise MalformedSnapshotError(f"Not a weights blob: member {info.filename} shape {shape}")
    try:
        _dtype_name(dtype)
    except MalformedSnapshotError as exc:
        raise MalformedSnapshotError(f"{exc} (member {info.filename})") from exc
    return _Header(tuple(shape), dtype, bool(fortran_order), offset)


def _read_data(fp: IO[bytes], header: _Header, *, what: str) -> np.ndarray:
    """Read the array a header declares from ``fp`` (positioned at its data), in pieces,
    into the array itself: memory is the array plus one piece."""
    flat = np.empty(math.prod(header.shape), dtype=header.dtype)
    raw = flat.view(np.uint8)
    done = 0
    while done < raw.size:
        piece = fp.read(min(_READ_CHUNK, raw.size - done))
        if not piece:
            raise MalformedSnapshotError(
                f"Corrupt weights blob: {what} ends after {done} of {raw.size} bytes"
            )
        raw[done : done + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        done += len(piece)
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")


def bytes_to_weights(
    blob: bytes,
    signature: ModelSignature | None = None,
    *,
    max_bytes: int | None = None,
    exact_dtypes: bool = True,
    reader: bool = False,
) -> list[np.ndarray]:
    """Decode a snapshot made by ``weights_to_bytes``: its arrays, in order.

    ``reader``: word a signature mismatch to the node that received the snapshot
    (``ModelSignature.difference``), not to its sender.

    Every header is read and checked before any array data: against ``signature`` when
    given (count, shapes, and dtypes exactly or, without ``exact_dtypes``, by kind), and
    the arrays' bytes, each and in all, against ``max_bytes``. ``max_bytes`` None means
    no cap beyond the signature's shapes when one is given, else ``DEFAULT_MAX_BYTES``.
    Values are not checked (see ``check_finite``).

    Raises ``MalformedSnapshotError`` (not this format: not a zip, compressed or encrypted
    members, unexpected member names, object or structured dtypes, torn data),
    ``OversizedSnapshotError`` (arrays over ``max_bytes``) or ``SignatureMismatchError``.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise MalformedSnapshotError(
            f"Not a weights blob ({len(blob)} bytes): not a zip archive"
        ) from exc
    with archive:
        infos = archive.infolist()
        names = sorted(info.filename for info in infos)
        if len(infos) > MAX_TENSORS or names != sorted(_member(i) for i in range(len(infos))):
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise MalformedSnapshotError(
                f"Not a weights blob: {len(infos)} entries ({shown}); expected w0.npy, w1.npy, ..."
            )
        members = [archive.getinfo(_member(i)) for i in range(len(infos))]
        try:
            headers = [_read_header(archive, info) for info in members]
            _check_headers(
                members, headers, signature, max_bytes, exact_dtypes=exact_dtypes, reader=reader
            )
            arrays = []
            for info, header in zip(members, headers, strict=True):
                with archive.open(info) as fp:
                    fp.read(header.data_offset)
                    arrays.append(_read_data(fp, header, what=info.filename))
                    if fp.read(1):  # also checks the member's CRC
                        raise MalformedSnapshotError(
                            f"Corrupt weights blob: {info.filename} has bytes after its array"
                        )
        except WireError:
            raise
        except (
            ValueError,
            TypeError,
            SyntaxError,
            RecursionError,
            OSError,
            EOFError,
            KeyError,
            RuntimeError,
            NotImplementedError,
            zipfile.BadZipFile,
        ) as exc:
            raise MalformedSnapshotError(
                f"Corrupt weights blob ({len(blob)} bytes): {type(exc).__name__}: {exc}"
            ) from exc
    return arrays


def _check_headers(
    members: Sequence[zipfile.ZipInfo],
    headers: Sequence[_Header],
    signature: ModelSignature | None,
    max_bytes: int | None,
    *,
    exact_dtypes: bool,
    reader: bool = False,
) -> None:
    """Refuse, from the headers alone, what does not fit ``signature`` or ``max_bytes``
    (see ``bytes_to_weights``)."""
    if signature is not None:
        got = ModelSignature(
            tuple(TensorSpec(_positional(i), h.shape, h.dtype.name) for i, h in enumerate(headers))
        )
        diff = signature.difference(got, kinds_only=not exact_dtypes, reader=reader)
        if diff is not None:
            raise SignatureMismatchError(diff)
    elif max_bytes is None:
        max_bytes = DEFAULT_MAX_BYTES
    total = 0
    for info, header in zip(members, headers, strict=True):
        nbytes = math.prod(header.shape) * header.dtype.itemsize
        total += nbytes
        if max_bytes is not None and nbytes > max_bytes:
            raise OversizedSnapshotError(
                f"Weights blob too large: {info.filename} declares {header.shape} "
                f"{header.dtype.name} ({nbytes:,} bytes); the cap is {max_bytes:,} bytes"
            )
        if max_bytes is not None and total > max_bytes:
            raise OversizedSnapshotError(
                f"Weights blob too large: the arrays up to {info.filename} declare {total:,} "
                f"bytes; the cap is {max_bytes:,} bytes in all"
            )
        if info.file_size != header.data_offset + nbytes:
            raise MalformedSnapshotError(
                f"Corrupt weights blob: {info.filename} declares {nbytes:,} bytes of data "
                f"but holds {max(info.file_size - header.data_offset, 0):,}"
            )


def check_finite(weights: Sequence[np.ndarray]) -> None:
    """Raise ``NonFiniteError`` naming the first tensor holding NaN or infinity."""
    for i, w in enumerate(weights):
        if w.dtype.kind in "fc" and not np.isfinite(w).all():
            raise NonFiniteError(f"tensor {i} holds NaN or infinite values")

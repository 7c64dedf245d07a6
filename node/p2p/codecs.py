"""Update compression, as pure functions: top-k sparsification, 8/4-bit quantization, both.

A codec turns a list of arrays (a model's weights, or the update since the round's
start) into an ``EncodedUpdate``: one msgpack-ready record per tensor, whose
``to_bytes()`` is exactly what crosses the wire, so ``nbytes`` is the honest size.
Codecs hold no state; the one stateful part, error feedback (what top-k did not
send now is added to the next update, so it is sent later), is an explicit value
passed in and returned by ``compress_with_feedback``.

Quantization is affine with a scale and an integer zero-point per tensor:
``code = clip(round(x / scale) + zero_point, 0, 2**bits - 1)`` and
``x̂ = (code - zero_point) * scale`` with ``scale = (max - min) / (2**bits - 1)``.
Every value decodes within ``scale / 2`` of the original (``quantization_error_bound``),
up to float32 rounding. 4-bit codes are packed two to a byte.

Decoding is bounded, because the bytes come from strangers: before anything is
allocated, every record is checked against the receiver's ``WeightsSignature`` (the
shapes of its own weights: the tensor count and each shape must match) or, without
one, against ``MAX_UPDATE_ELEMENTS`` values in all; and each record's parts must agree
(byte lengths, index range and count, bit width, a finite positive scale, a zero-point
in range). So a few bytes can no longer ask for gigabytes. A record that does not fit
the receiver raises ``WeightsMismatchError``; one that is malformed or over the cap,
``SerializationError`` (both ``RemoteInputError``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

import msgpack
import numpy as np

from node.errors import SerializationError, WeightsMismatchError
from node.learning.weights import WeightsSignature

__all__ = [
    "COMPRESSION_MODES",
    "MAX_UPDATE_ELEMENTS",
    "Codec",
    "DenseCodec",
    "EncodedUpdate",
    "ErrorFeedback",
    "QuantizeCodec",
    "TopKCodec",
    "check_records",
    "compress_with_feedback",
    "dequantize",
    "make_codec",
    "quantization_error_bound",
    "quantize",
    "topk_indices",
]

CompressionMode = Literal["none", "gradients_topk", "weights_quantize"]
NONE = "none"
GRADIENTS_TOPK = "gradients_topk"
WEIGHTS_QUANTIZE = "weights_quantize"
COMPRESSION_MODES: tuple[str, ...] = (NONE, GRADIENTS_TOPK, WEIGHTS_QUANTIZE)
QUANT_BITS: tuple[int, ...] = (4, 8)

# Keys of one tensor's wire record.
KIND_KEY = "k"
SHAPE_KEY = "s"
DTYPE_KEY = "t"
DATA_KEY = "d"
INDEX_KEY = "i"
INDEX_DTYPE_KEY = "it"
SCALE_KEY = "sc"
ZERO_POINT_KEY = "zp"
BITS_KEY = "b"
COUNT_KEY = "n"
TENSORS_KEY = "tensors"
CODEC_KEY = "codec"

DENSE = "dense"
QUANT = "quant"
SPARSE = "sparse"
SPARSE_QUANT = "sparse_quant"

_UINT16_LIMIT = 1 << 16

# The most values an update may decode to when the receiver gives no signature:
# 2**25 (128 MiB as float32). With a signature the receiver's own model is the bound.
MAX_UPDATE_ELEMENTS = 1 << 25
# numpy's own limit on dimensions is 64; no model tensor comes near this.
_MAX_DIMS = 32
# Dtypes a dense record may carry: booleans, integers, floats, complex; never objects,
# strings or structured records.
_PLAIN_KINDS = frozenset("biufc")
_INDEX_KINDS = frozenset("iu")


# --- quantization -------------------------------------------------------------------


@dataclass(frozen=True)
class Quantized:
    """Integer codes of one flat array, with the scale and zero-point that decode them."""

    codes: np.ndarray  # uint8, one code per value (unpacked)
    scale: float
    zero_point: int
    bits: int


def quantize(values: np.ndarray, bits: int = 8) -> Quantized:
    """Quantize a flat float array to ``bits``-bit codes (affine, per array)."""
    if bits not in QUANT_BITS:
        raise ValueError(f"bits must be one of {QUANT_BITS}, got {bits}")
    x = np.asarray(values, dtype=np.float64).ravel()
    qmax = (1 << bits) - 1
    if x.size == 0:
        return Quantized(np.zeros(0, dtype=np.uint8), 1.0, 0, bits)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    # Including 0 in the range keeps zero exact, which sparse updates rely on.
    scale = (hi - lo) / qmax if hi > lo else 1.0
    zero_point = int(np.clip(round(-lo / scale), 0, qmax))
    codes = np.clip(np.rint(x / scale) + zero_point, 0, qmax).astype(np.uint8)
    return Quantized(codes, scale, zero_point, bits)


def dequantize(q: Quantized) -> np.ndarray:
    """Decode quantized codes back to float32."""
    return ((q.codes.astype(np.float64) - q.zero_point) * q.scale).astype(np.float32)


def quantization_error_bound(values: np.ndarray, bits: int) -> float:
    """The largest ``|x - x̂|`` quantizing ``values`` to ``bits`` bits can make: ``scale / 2``."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return 0.0
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    return (hi - lo) / ((1 << bits) - 1) / 2


def _pack_codes(codes: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    padded = codes if codes.size % 2 == 0 else np.append(codes, np.uint8(0))
    pairs = padded.reshape(-1, 2).astype(np.uint8)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).astype(np.uint8).tobytes()


def _unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        codes = raw
    else:
        codes = np.empty(raw.size * 2, dtype=np.uint8)
        codes[0::2] = raw & 0x0F
        codes[1::2] = raw >> 4
    if codes.size < count:
        raise SerializationError(f"Quantized tensor holds {codes.size} codes, needs {count}")
    return codes[:count]


def _quant_record(values: np.ndarray, bits: int) -> dict[str, Any]:
    q = quantize(values, bits)
    return {
        DATA_KEY: _pack_codes(q.codes, bits),
        SCALE_KEY: q.scale,
        ZERO_POINT_KEY: q.zero_point,
        BITS_KEY: bits,
        COUNT_KEY: int(q.codes.size),
    }


def _quant_values(record: dict[str, Any]) -> np.ndarray:
    """Dequantized values of a record that ``_check_quant`` accepted."""
    bits, count = int(record[BITS_KEY]), int(record[COUNT_KEY])
    codes = _unpack_codes(record[DATA_KEY], bits, count)
    return dequantize(Quantized(codes, float(record[SCALE_KEY]), int(record[ZERO_POINT_KEY]), bits))


# --- top-k --------------------------------------------------------------------------


def topk_count(size: int, ratio: float) -> int:
    """How many of ``size`` values top-k keeps at ``ratio`` (at least one, when any)."""
    return 0 if size == 0 else min(size, max(1, math.ceil(ratio * size)))


def topk_indices(values: np.ndarray, ratio: float) -> np.ndarray:
    """Sorted flat indices of the ``ratio`` share of ``values`` largest in magnitude."""
    flat = np.asarray(values).ravel()
    k = topk_count(flat.size, ratio)
    if k == flat.size:
        return np.arange(flat.size)
    part = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
    return np.sort(part)


# --- the encoded form ---------------------------------------------------------------


@dataclass
class EncodedUpdate:
    """What one codec made of a list of arrays: a wire record per tensor."""

    codec: str
    tensors: list[dict[str, Any]]

    def to_bytes(self) -> bytes:
        """The msgpack bytes that go on the wire."""
        packed: bytes = msgpack.packb(
            {CODEC_KEY: self.codec, TENSORS_KEY: self.tensors}, use_bin_type=True
        )
        return packed

    @property
    def nbytes(self) -> int:
        """Bytes on the wire for this update (before the transport's envelope)."""
        return len(self.to_bytes())

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        expected: WeightsSignature | None = None,
        *,
        max_elements: int = MAX_UPDATE_ELEMENTS,
    ) -> EncodedUpdate:
        """Parse bytes made by ``to_bytes`` and check every record (see ``check_records``).

        Allocates nothing beyond what msgpack makes of ``blob`` itself. Raises
        ``SerializationError`` for anything but an encoded update with well-formed
        records within ``max_elements`` (when ``expected`` is None), and
        ``WeightsMismatchError`` for records that do not fit ``expected``.
        """
        try:
            obj = msgpack.unpackb(blob, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise SerializationError(f"Not an encoded update: {exc}") from exc
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get(CODEC_KEY), str)
            or not isinstance(obj.get(TENSORS_KEY), list)
            or not all(isinstance(t, dict) for t in obj[TENSORS_KEY])
        ):
            raise SerializationError("Not an encoded update: wrong structure")
        check_records(obj[TENSORS_KEY], expected, max_elements=max_elements)
        return cls(codec=obj[CODEC_KEY], tensors=obj[TENSORS_KEY])


def _is_float(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.floating))


def _dense_record(array: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(array)
    if _is_float(a):
        a = a.astype(np.float32)
    return {
        KIND_KEY: DENSE,
        SHAPE_KEY: list(a.shape),
        DTYPE_KEY: a.dtype.str,
        DATA_KEY: a.tobytes(),
    }


# --- bounded decoding ----------------------------------------------------------------


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _record_shape(record: dict[str, Any], i: int) -> tuple[int, ...]:
    raw = record.get(SHAPE_KEY)
    if (
        not isinstance(raw, list)
        or len(raw) > _MAX_DIMS
        or not all(_whole(d) and d >= 0 for d in raw)
    ):
        raise SerializationError(f"Tensor {i}: shape {str(raw)[:80]} is not a list of sizes")
    return tuple(raw)


def _record_dtype(record: dict[str, Any], key: str, kinds: frozenset[str], i: int) -> np.dtype:
    raw = record.get(key)
    try:
        if not isinstance(raw, str) or len(raw) > 8:
            raise TypeError("not a short dtype string")
        dtype = np.dtype(raw)
    except TypeError as exc:
        raise SerializationError(f"Tensor {i}: dtype {str(raw)[:40]!r} unusable: {exc}") from exc
    if dtype.kind not in kinds or dtype.fields is not None or dtype.itemsize > 16:
        raise SerializationError(f"Tensor {i}: dtype {dtype} is not allowed here")
    return dtype


def _record_bytes(record: dict[str, Any], key: str, length: int, what: str, i: int) -> None:
    data = record.get(key)
    if not isinstance(data, bytes):
        raise SerializationError(f"Tensor {i}: {what} missing")
    if len(data) != length:
        raise SerializationError(f"Tensor {i}: {what} hold {len(data)} bytes, need {length}")


def _check_quant(record: dict[str, Any], count: int, i: int) -> None:
    """Bit width, code count and bytes, a finite positive scale, a zero-point in range."""
    bits, n = record.get(BITS_KEY), record.get(COUNT_KEY)
    if not _whole(bits) or bits not in QUANT_BITS:
        raise SerializationError(f"Tensor {i}: unsupported quantization width {bits!r}")
    if not _whole(n) or n != count:
        raise SerializationError(f"Tensor {i}: {n!r} quantized codes for {count} values")
    _record_bytes(record, DATA_KEY, count if bits == 8 else (count + 1) // 2, "codes", i)
    scale, zero_point = record.get(SCALE_KEY), record.get(ZERO_POINT_KEY)
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise SerializationError(f"Tensor {i}: scale {scale!r} is not finite and positive")
    if not _whole(zero_point) or not 0 <= zero_point < (1 << bits):
        raise SerializationError(f"Tensor {i}: zero-point {zero_point!r} out of range")


def _check_record(record: dict[str, Any], shape: tuple[int, ...], i: int) -> None:
    """Check one record's parts against its ``shape``; reads, never allocates."""
    size = math.prod(shape)
    kind = record.get(KIND_KEY)
    if kind == DENSE:
        dtype = _record_dtype(record, DTYPE_KEY, _PLAIN_KINDS, i)
        _record_bytes(record, DATA_KEY, size * dtype.itemsize, "values", i)
    elif kind == QUANT:
        _check_quant(record, size, i)
    elif kind in (SPARSE, SPARSE_QUANT):
        index_dtype = _record_dtype(record, INDEX_DTYPE_KEY, _INDEX_KINDS, i)
        index_bytes = record.get(INDEX_KEY)
        if not isinstance(index_bytes, bytes) or len(index_bytes) % index_dtype.itemsize:
            raise SerializationError(f"Tensor {i}: sparse indices missing or cut short")
        n = len(index_bytes) // index_dtype.itemsize
        if n > size:
            raise SerializationError(f"Tensor {i}: {n} sparse indices for {size} values")
        if kind == SPARSE:
            _record_bytes(record, DATA_KEY, 4 * n, "sparse values", i)
        else:
            _check_quant(record, n, i)
        index = np.frombuffer(index_bytes, dtype=index_dtype)  # a view: no copy
        if n and (int(index.min()) < 0 or int(index.max()) >= size):
            raise SerializationError(f"Tensor {i}: sparse index out of range for {size} values")
    else:
        raise SerializationError(f"Tensor {i}: unknown tensor kind {str(kind)[:40]!r}")


def check_records(
    tensors: list[dict[str, Any]],
    expected: WeightsSignature | None = None,
    *,
    max_elements: int = MAX_UPDATE_ELEMENTS,
) -> list[tuple[int, ...]]:
    """Check an update's records before anything is allocated; return their shapes.

    With ``expected`` (the receiver's own weights' signature) the records must be one
    per tensor with exactly its shapes; without, they may decode to at most
    ``max_elements`` values in all. Every record's parts must agree with its shape:
    byte lengths, sparse index dtype, count and range, quantization width, a finite
    positive scale and a zero-point in range. Raises ``WeightsMismatchError`` (count
    or shape differ from ``expected``) or ``SerializationError`` (malformed, over the cap).
    """
    if expected is not None and len(tensors) != len(expected.shapes):
        raise WeightsMismatchError(
            f"Got {len(tensors)} tensors for a model with {len(expected.shapes)}"
        )
    shapes, total = [], 0
    for i, record in enumerate(tensors):
        shape = _record_shape(record, i)
        if expected is not None:
            if shape != expected.shapes[i]:
                raise WeightsMismatchError(
                    f"Tensor {i}: shape {shape} does not match {expected.shapes[i]}"
                )
        else:
            total += math.prod(shape)
            if total > max_elements:
                raise SerializationError(
                    f"Update asks for more than {max_elements} values (tensor {i}: {shape})"
                )
        _check_record(record, shape, i)
        shapes.append(shape)
    return shapes


def _decode_record(record: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """Decode one record that ``check_records`` accepted with ``shape``."""
    kind = record[KIND_KEY]
    if kind == DENSE:
        out = np.frombuffer(record[DATA_KEY], dtype=np.dtype(record[DTYPE_KEY]))
        return out.reshape(shape).copy()
    if kind == QUANT:
        return _quant_values(record).reshape(shape)
    index = np.frombuffer(record[INDEX_KEY], dtype=np.dtype(record[INDEX_DTYPE_KEY]))
    if kind == SPARSE:
        values = np.frombuffer(record[DATA_KEY], dtype=np.float32)
    else:
        values = _quant_values(record)
    flat = np.zeros(math.prod(shape), dtype=np.float32)
    flat[index.astype(np.int64)] = values
    return flat.reshape(shape)


# --- codecs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """Base codec: arrays to an ``EncodedUpdate`` and back. Subclasses pick the records."""

    @property
    def name(self) -> str:
        """A short label for logs and benchmark tables."""
        return DENSE

    @property
    def lossy(self) -> bool:
        """Whether decode(encode(x)) may differ from x."""
        return False

    def encode_array(self, array: np.ndarray) -> dict[str, Any]:
        """One tensor's wire record."""
        return _dense_record(array)

    def encode(self, arrays: list[np.ndarray]) -> EncodedUpdate:
        """Encode every array; non-float arrays are always sent dense and exact."""
        return EncodedUpdate(
            codec=self.name,
            tensors=[
                self.encode_array(a) if _is_float(np.asarray(a)) else _dense_record(a)
                for a in arrays
            ],
        )

    def decode(
        self,
        encoded: EncodedUpdate,
        expected: WeightsSignature | None = None,
        *,
        max_elements: int = MAX_UPDATE_ELEMENTS,
    ) -> list[np.ndarray]:
        """Decode back to arrays, one per record in ``expected``'s shapes when given.

        Float tensors come back as float32 (quantized and sparse ones always), others in
        their dtype. Every record is checked first (``check_records``), so nothing larger
        than ``expected`` (or ``max_elements`` values, without it) is ever allocated.
        Raises ``WeightsMismatchError`` or ``SerializationError``.
        """
        shapes = check_records(encoded.tensors, expected, max_elements=max_elements)
        return [_decode_record(t, shape) for t, shape in zip(encoded.tensors, shapes, strict=True)]


@dataclass(frozen=True)
class DenseCodec(Codec):
    """No compression: float32 bytes."""


@dataclass(frozen=True)
class QuantizeCodec(Codec):
    """Affine ``bits``-bit quantization per tensor (8 or 4)."""

    bits: int = 8

    def __post_init__(self) -> None:
        if self.bits not in QUANT_BITS:
            raise ValueError(f"bits must be one of {QUANT_BITS}, got {self.bits}")

    @property
    def name(self) -> str:
        """E.g. ``q8``."""
        return f"q{self.bits}"

    @property
    def lossy(self) -> bool:
        """Always lossy."""
        return True

    def encode_array(self, array: np.ndarray) -> dict[str, Any]:
        """Codes plus scale and zero-point."""
        a = np.asarray(array)
        return {KIND_KEY: QUANT, SHAPE_KEY: list(a.shape), **_quant_record(a, self.bits)}


@dataclass(frozen=True)
class TopKCodec(Codec):
    """Keep the ``ratio`` share of values largest in magnitude; optionally quantize them.

    Indices are uint16 when the tensor has at most 65,536 values, else uint32.
    """

    ratio: float = 0.01
    bits: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.bits is not None and self.bits not in QUANT_BITS:
            raise ValueError(f"bits must be one of {QUANT_BITS} or None, got {self.bits}")

    @property
    def name(self) -> str:
        """E.g. ``top1%`` or ``top1%+q8``."""
        label = f"top{self.ratio * 100:g}%"
        return label if self.bits is None else f"{label}+q{self.bits}"

    @property
    def lossy(self) -> bool:
        """Lossy unless it keeps everything exactly."""
        return self.ratio < 1 or self.bits is not None

    def encode_array(self, array: np.ndarray) -> dict[str, Any]:
        """Sorted indices and their values (float32 or quantized)."""
        a = np.asarray(array)
        flat = a.ravel()
        index = topk_indices(flat, self.ratio)
        index_dtype = np.uint16 if flat.size <= _UINT16_LIMIT else np.uint32
        record: dict[str, Any] = {
            SHAPE_KEY: list(a.shape),
            INDEX_KEY: index.astype(index_dtype).tobytes(),
            INDEX_DTYPE_KEY: np.dtype(index_dtype).str,
        }
        values = flat[index]
        if self.bits is None:
            record[KIND_KEY] = SPARSE
            record[DATA_KEY] = values.astype(np.float32).tobytes()
        else:
            record[KIND_KEY] = SPARSE_QUANT
            record.update(_quant_record(values, self.bits))
        return record


def make_codec(mode: str, *, topk_ratio: float = 0.01, bits: int = 8) -> Codec:
    """The codec for a config's compression ``mode``.

    ``gradients_topk`` quantizes the kept values too when ``bits`` is 4 or 8 and
    sends them as float32 when ``bits`` is 32.
    """
    if mode == NONE:
        return DenseCodec()
    if mode == GRADIENTS_TOPK:
        return TopKCodec(ratio=topk_ratio, bits=None if bits == 32 else bits)
    if mode == WEIGHTS_QUANTIZE:
        return QuantizeCodec(bits=bits)
    raise ValueError(f"Unknown compression mode {mode!r}; choose one of {COMPRESSION_MODES}")


# --- error feedback -----------------------------------------------------------------


@dataclass
class ErrorFeedback:
    """What lossy compression left out so far, per tensor; starts empty (all zeros)."""

    residual: list[np.ndarray] = field(default_factory=list)

    def total(self) -> float:
        """Sum of absolute residuals, for logs and tests."""
        return float(sum(np.abs(r).sum() for r in self.residual))


def compress_with_feedback(
    codec: Codec, update: list[np.ndarray], feedback: ErrorFeedback
) -> tuple[EncodedUpdate, list[np.ndarray], ErrorFeedback]:
    """Encode ``update + residual``; return the encoding, what it decodes to, the new residual.

    The new residual is exactly ``update + residual - decoded``, so summed over
    rounds nothing is lost: what is not sent now is sent later. Non-float tensors
    carry no residual.
    """
    residual = feedback.residual or [np.zeros_like(np.asarray(u), dtype=np.float32) for u in update]
    if len(residual) != len(update):
        raise ValueError(f"Residual has {len(residual)} tensors, update has {len(update)}")
    corrected = [
        np.asarray(u, dtype=np.float32) + r if _is_float(np.asarray(u)) else np.asarray(u)
        for u, r in zip(update, residual, strict=True)
    ]
    encoded = codec.encode(corrected)
    decoded = codec.decode(encoded)
    new_residual = [
        (c - d).astype(np.float32) if _is_float(c) else np.zeros(c.shape, dtype=np.float32)
        for c, d in zip(corrected, decoded, strict=True)
    ]
    return encoded, decoded, ErrorFeedback(new_residual)

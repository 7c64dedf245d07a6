"""Codecs round-trip (property-based), report honest sizes, and error feedback loses nothing."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from node.errors import RemoteInputError, SerializationError, WeightsMismatchError
from node.learning.weights import WeightsSignature
from node.p2p.codecs import (
    BITS_KEY,
    COUNT_KEY,
    DATA_KEY,
    INDEX_DTYPE_KEY,
    INDEX_KEY,
    KIND_KEY,
    SCALE_KEY,
    SHAPE_KEY,
    SPARSE,
    SPARSE_QUANT,
    ZERO_POINT_KEY,
    DenseCodec,
    EncodedUpdate,
    ErrorFeedback,
    QuantizeCodec,
    TopKCodec,
    compress_with_feedback,
    make_codec,
    quantization_error_bound,
    topk_count,
)

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)
float_arrays = arrays(
    np.float32, array_shapes(min_dims=1, max_dims=3, max_side=12), elements=finite
)
models = st.lists(float_arrays, min_size=1, max_size=4)


def _wire_roundtrip(codec: object, arrays_: list[np.ndarray]) -> list[np.ndarray]:
    """Encode, then parse and decode as a receiver whose model has these arrays' shapes."""
    encoded = codec.encode(arrays_)  # type: ignore[attr-defined]
    signature = WeightsSignature.of(arrays_)
    received = EncodedUpdate.from_bytes(encoded.to_bytes(), signature)
    return codec.decode(received, signature)  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(models)
def test_dense_round_trips_exactly(model: list[np.ndarray]) -> None:
    decoded = _wire_roundtrip(DenseCodec(), model)

    for original, back in zip(model, decoded, strict=True):
        np.testing.assert_array_equal(original, back)


@settings(max_examples=60, deadline=None)
@given(models, st.sampled_from([8, 4]))
def test_quantization_decodes_within_half_a_step(model: list[np.ndarray], bits: int) -> None:
    decoded = _wire_roundtrip(QuantizeCodec(bits=bits), model)

    for original, back in zip(model, decoded, strict=True):
        assert back.shape == original.shape
        bound = quantization_error_bound(original, bits)
        slack = 1e-5 * (float(np.abs(original).max()) + 1.0)  # float32 rounding
        assert float(np.abs(original.astype(np.float64) - back).max()) <= bound + slack


@settings(max_examples=60, deadline=None)
@given(models, st.floats(min_value=0.001, max_value=1.0))
def test_topk_keeps_the_largest_values_exactly(model: list[np.ndarray], ratio: float) -> None:
    decoded = _wire_roundtrip(TopKCodec(ratio=ratio), model)

    for original, back in zip(model, decoded, strict=True):
        kept = back != 0
        assert int(kept.sum()) <= topk_count(original.size, ratio)
        np.testing.assert_array_equal(back[kept], original[kept])
        if kept.any() and (~kept).any():
            # nothing dropped is larger than anything kept
            assert np.abs(original[~kept]).max() <= np.abs(original[kept]).min()


@settings(max_examples=40, deadline=None)
@given(st.lists(models, min_size=1, max_size=5), st.sampled_from([None, 8]))
def test_error_feedback_sends_everything_eventually(
    updates: list[list[np.ndarray]], bits: int | None
) -> None:
    shapes = [a.shape for a in updates[0]]
    updates = [u for u in updates if [a.shape for a in u] == shapes]
    codec = TopKCodec(ratio=0.1, bits=bits)
    feedback = ErrorFeedback()
    sent = [np.zeros(s, dtype=np.float64) for s in shapes]

    for update in updates:
        _, decoded, feedback = compress_with_feedback(codec, update, feedback)
        sent = [s + d for s, d in zip(sent, decoded, strict=True)]

    # What was sent plus what is still owed equals everything that was to be sent.
    for i, shape in enumerate(shapes):
        total = np.sum([u[i].astype(np.float64) for u in updates], axis=0)
        np.testing.assert_allclose(
            sent[i] + feedback.residual[i], total, rtol=1e-4, atol=1e-2 * len(updates)
        )
        assert sent[i].shape == shape


def test_bytes_on_the_wire_shrink_as_promised() -> None:
    rng = np.random.default_rng(0)
    model = [rng.normal(size=(64, 64)).astype(np.float32), rng.normal(size=64).astype(np.float32)]
    dense = DenseCodec().encode(model).nbytes

    q8 = QuantizeCodec(bits=8).encode(model).nbytes
    q4 = QuantizeCodec(bits=4).encode(model).nbytes
    top1 = TopKCodec(ratio=0.01).encode(model).nbytes
    top1q8 = TopKCodec(ratio=0.01, bits=8).encode(model).nbytes

    assert dense > 4 * (64 * 64 + 64)
    assert 3.5 < dense / q8 < 4.1
    assert 7 < dense / q4 < 8.2
    assert dense / top1 > 20
    assert top1q8 < top1


def test_non_float_tensors_pass_through_unchanged() -> None:
    model = [np.arange(5, dtype=np.int64), np.ones(3, dtype=np.float32)]

    decoded = _wire_roundtrip(TopKCodec(ratio=0.01, bits=4), model)

    np.testing.assert_array_equal(decoded[0], model[0])
    assert decoded[0].dtype == np.int64


def test_make_codec_follows_the_config_modes() -> None:
    assert isinstance(make_codec("none"), DenseCodec)
    assert make_codec("gradients_topk", topk_ratio=0.1, bits=32) == TopKCodec(ratio=0.1)
    assert make_codec("weights_quantize", bits=4) == QuantizeCodec(bits=4)
    with pytest.raises(ValueError, match="compression mode"):
        make_codec("zip")


@pytest.mark.parametrize(
    "blob", [b"", b"\x00\x01garbage", b"\x92\x01\x02", b"\x82\xa5codec\xa1x\xa7tensors\x91\x80"]
)
def test_garbage_updates_raise_serialization_errors(blob: bytes) -> None:
    with pytest.raises(SerializationError):
        DenseCodec().decode(EncodedUpdate.from_bytes(blob))


# --- bounded decoding: what a stranger's bytes may ask of the receiver -------------------

_MODEL = [np.ones((8, 4), dtype=np.float32), np.ones(4, dtype=np.float32)]
_SIGNATURE = WeightsSignature.of(_MODEL)


def _bomb(kind: str) -> bytes:
    """An update of a few hundred bytes whose first record claims 10^10 values."""
    record: dict[str, Any] = {
        KIND_KEY: kind,
        SHAPE_KEY: [100_000, 100_000],
        INDEX_KEY: np.array([7], dtype=np.uint32).tobytes(),
        INDEX_DTYPE_KEY: "<u4",
    }
    if kind == SPARSE:
        record[DATA_KEY] = np.array([1.0], dtype=np.float32).tobytes()
    else:
        record.update({DATA_KEY: b"\x01", SCALE_KEY: 1.0, ZERO_POINT_KEY: 0, BITS_KEY: 8})
        record[COUNT_KEY] = 1
    tensors = [record, DenseCodec().encode([_MODEL[1]]).tensors[0]]
    return EncodedUpdate("top1%", tensors).to_bytes()


@pytest.mark.parametrize("kind", [SPARSE, SPARSE_QUANT])
@pytest.mark.parametrize(
    ("signature", "error"),
    [(_SIGNATURE, WeightsMismatchError), (None, SerializationError)],
    ids=["own-model-shapes", "hard-cap"],
)
def test_a_record_asking_for_ten_billion_values_is_refused_without_allocating(
    kind: str, signature: WeightsSignature | None, error: type[Exception]
) -> None:
    # Prepare
    blob = _bomb(kind)
    assert len(blob) < 500

    # Execute: decode as a receiver would, watching every Python and numpy allocation
    tracemalloc.start()
    try:
        with pytest.raises(error):
            DenseCodec().decode(EncodedUpdate.from_bytes(blob, signature), signature)
        with pytest.raises(error):  # and an update built in memory, not parsed, too
            in_memory = EncodedUpdate("top1%", msgpack.unpackb(blob, raw=False)["tensors"])
            DenseCodec().decode(in_memory, signature)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Assert: 10^10 float32 values would be 40 GB; the refusal took under 1 MiB
    assert peak < 2**20


def test_without_a_signature_the_cap_counts_every_tensor() -> None:
    # Prepare: two tensors of 60 values, each under a cap of 100, together over it
    update = DenseCodec().encode([np.zeros(60, dtype=np.float32)] * 2)

    # Execute / Assert
    assert len(DenseCodec().decode(update, max_elements=120)) == 2
    with pytest.raises(SerializationError, match="more than 100 values"):
        DenseCodec().decode(update, max_elements=100)


def _record(codec: object, **changes: object) -> bytes:
    """The encoding of ``_MODEL``'s first tensor by ``codec``, with some fields changed."""
    encoded = codec.encode(_MODEL)  # type: ignore[attr-defined]
    encoded.tensors[0].update(changes)
    return bytes(encoded.to_bytes())


_SPARSE8 = TopKCodec(ratio=0.25, bits=8)
_SPARSE32 = TopKCodec(ratio=0.25)
_Q4 = QuantizeCodec(bits=4)


@pytest.mark.parametrize(
    ("blob", "error"),
    [
        (_record(_SPARSE32, i=np.array([32], np.uint16).tobytes()), SerializationError),
        (_record(_SPARSE32, d=b"\x00" * 4), SerializationError),
        (_record(_SPARSE32, it="<f4"), SerializationError),
        (_record(_SPARSE32, i=b"\x00" * 3), SerializationError),
        (_record(_SPARSE32, i=np.arange(33, dtype=np.uint16).tobytes()), SerializationError),
        (_record(_SPARSE8, sc=float("nan")), SerializationError),
        (_record(_SPARSE8, sc=float("inf")), SerializationError),
        (_record(_SPARSE8, sc=0.0), SerializationError),
        (_record(_Q4, sc=-1.0), SerializationError),
        (_record(_Q4, zp=16), SerializationError),
        (_record(_Q4, n=31), SerializationError),
        (_record(_Q4, b=3), SerializationError),
        (_record(_Q4, d=b"\x00"), SerializationError),
        (_record(DenseCodec(), d=b"\x00" * 12), SerializationError),
        (_record(DenseCodec(), t="|O"), SerializationError),
        (_record(DenseCodec(), t="|V128"), SerializationError),
        (_record(DenseCodec(), t="<U1"), SerializationError),
        (_record(DenseCodec(), s=[8, -4]), SerializationError),
        (_record(DenseCodec(), s="8x4"), SerializationError),
        (_record(DenseCodec(), k="fancy"), SerializationError),
        (_record(DenseCodec(), s=[4, 8], d=b"\x00" * 128), WeightsMismatchError),
        (DenseCodec().encode([_MODEL[0]]).to_bytes(), WeightsMismatchError),
    ],
    ids=[
        "index-out-of-range",
        "values-fewer-than-indices",
        "float-indices",
        "indices-cut-short",
        "more-indices-than-values",
        "nan-scale",
        "infinite-scale",
        "zero-scale",
        "negative-scale",
        "zero-point-out-of-range",
        "code-count-not-the-shape",
        "three-bit-codes",
        "codes-cut-short",
        "dense-bytes-short",
        "object-dtype",
        "void-dtype",
        "string-dtype",
        "negative-dimension",
        "shape-not-a-list",
        "unknown-kind",
        "another-shape",
        "fewer-tensors",
    ],
)
def test_malformed_records_are_refused_as_remote_input(blob: bytes, error: type[Exception]) -> None:
    # Prepare: the same records as an update built in memory, not parsed
    in_memory = EncodedUpdate("x", msgpack.unpackb(blob, raw=False)["tensors"])

    # Execute / Assert: refused when parsed, and when decoded; both are remote input
    with pytest.raises(error):
        EncodedUpdate.from_bytes(blob, _SIGNATURE)
    with pytest.raises(error):
        DenseCodec().decode(in_memory, _SIGNATURE)
    assert issubclass(error, RemoteInputError)

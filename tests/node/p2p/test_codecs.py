"""Codecs round-trip (property-based), report honest sizes, and error feedback loses nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from node.errors import SerializationError
from node.p2p.codecs import (
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
    encoded = codec.encode(arrays_)  # type: ignore[attr-defined]
    return codec.decode(EncodedUpdate.from_bytes(encoded.to_bytes()))  # type: ignore[attr-defined]


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

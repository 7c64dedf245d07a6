"""Tests for node.learning.weights: safe, order-preserving weights blobs."""

import io
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from node.errors import (
    NodeError,
    NonFiniteWeightsError,
    SerializationError,
    WeightsMismatchError,
)
from node.learning.weights import (
    WeightsSignature,
    bytes_to_weights,
    decode_weights,
    weights_to_bytes,
)

_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)


@given(st.lists(_arrays, max_size=12))
def test_round_trip_keeps_order_dtype_shape_and_values(weights: list[np.ndarray]) -> None:
    # Execute
    back = bytes_to_weights(weights_to_bytes(weights))

    # Assert
    assert len(back) == len(weights)
    for a, b in zip(weights, back, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.parametrize(
    "blob",
    [b"", b"definitely not weights", b"PK\x03\x04garbage"],
)
def test_corrupt_blob_raises_a_clear_node_error(blob: bytes) -> None:
    # Execute / Assert
    with pytest.raises(SerializationError, match="weights blob") as info:
        bytes_to_weights(blob)
    assert isinstance(info.value, NodeError)


def test_truncated_blob_is_refused() -> None:
    # Prepare
    blob = weights_to_bytes([np.arange(100, dtype=np.float32)])

    # Execute / Assert
    with pytest.raises(SerializationError):
        bytes_to_weights(blob[: len(blob) // 2])


def test_pickled_objects_are_never_loaded() -> None:
    # Prepare
    buffer = io.BytesIO()
    np.savez(buffer, w0=np.array([{"evil": 1}], dtype=object))

    # Execute / Assert
    with pytest.raises(SerializationError):
        bytes_to_weights(buffer.getvalue())
    with pytest.raises(SerializationError, match="without pickle"):
        weights_to_bytes([np.array([object()], dtype=object)])


def test_a_foreign_npz_is_not_taken_for_weights() -> None:
    # Prepare
    buffer = io.BytesIO()
    np.savez(buffer, kernel=np.ones(3))

    # Execute / Assert
    with pytest.raises(SerializationError, match="Not a weights blob"):
        bytes_to_weights(buffer.getvalue())


def test_a_compressed_archive_is_refused_as_a_serialization_error() -> None:
    # Prepare: what np.savez_compressed makes, once decoded without bound
    buffer = io.BytesIO()
    np.savez_compressed(buffer, w0=np.zeros((64, 64), dtype=np.float32))

    # Execute / Assert
    with pytest.raises(SerializationError, match="compressed"):
        bytes_to_weights(buffer.getvalue())


def test_a_snapshot_is_checked_against_the_model_before_its_data_is_read() -> None:
    # Prepare: the model's signature, and a header claiming a 4 GB tensor over 16 bytes
    model = [np.zeros((4, 4), dtype=np.float32), np.zeros(4, dtype=np.float32)]
    signature = WeightsSignature.of(model)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("w0.npy", header.getvalue() + bytes(16))

    # Execute / Assert
    with pytest.raises(WeightsMismatchError, match="the snapshot has 1"):
        decode_weights(buffer.getvalue(), signature)
    with pytest.raises(SerializationError, match="too large"):
        bytes_to_weights(buffer.getvalue())


def test_the_node_takes_a_float64_aggregate_by_kind_and_refuses_nan() -> None:
    # Prepare
    model = [np.zeros((4, 4), dtype=np.float32), np.zeros(4, dtype=np.float32)]
    signature = WeightsSignature.of(model)
    float64 = [w.astype(np.float64) + 1 for w in model]
    nan = [np.full_like(w, np.nan) for w in model]

    # Execute
    taken = decode_weights(weights_to_bytes(float64), signature)

    # Assert: a float of another width fits (the node casts it); NaN and ints never do
    assert [w.dtype for w in taken] == [np.float64, np.float64]
    with pytest.raises(NonFiniteWeightsError):
        decode_weights(weights_to_bytes(nan), signature)
    with pytest.raises(WeightsMismatchError):
        decode_weights(weights_to_bytes([w.astype(np.int32) for w in model]), signature)


def test_a_refused_snapshot_is_described_from_the_receiving_node_s_side() -> None:
    # A node reads a snapshot of another architecture: the message must say which shape is
    # the node's and which the snapshot's (not address the node as the snapshot's sender).
    signature = WeightsSignature.of([np.zeros((16, 64), np.float32)])
    blob = weights_to_bytes([np.zeros((8, 64), np.float32)])

    with pytest.raises(WeightsMismatchError) as refused:
        decode_weights(blob, signature)

    assert "this node's tensor 0 is w0 [16, 64] float32" in str(refused.value)
    assert "the snapshot's is w0 [8, 64] float32" in str(refused.value)

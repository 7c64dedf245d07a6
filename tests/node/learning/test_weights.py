"""Tests for node.learning.weights: safe, order-preserving weights blobs."""

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from node.errors import NodeError, SerializationError
from node.learning.weights import bytes_to_weights, weights_to_bytes

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

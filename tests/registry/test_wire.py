"""registry.wire: the snapshot format, its signature, and decoding bounded before any data."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from registry.wire import (
    InvalidSignatureError,
    MalformedSnapshotError,
    ModelSignature,
    NonFiniteError,
    OversizedSnapshotError,
    SignatureMismatchError,
    bytes_to_weights,
    check_finite,
    weights_to_bytes,
)

MLP = [np.ones((64, 64), np.float32), np.zeros(64, np.float32)]
NAMES = ["net.1.weight", "net.1.bias"]


def _npz(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _header(descr: str, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


# --- the signature ----------------------------------------------------------------------


def test_a_signature_names_shapes_and_exact_dtypes_and_survives_json() -> None:
    # Execute
    signature = ModelSignature.of(MLP, NAMES)
    back = ModelSignature.from_json(signature.to_json())

    # Assert
    assert signature.to_json() == {
        "tensors": [
            {"name": "net.1.weight", "shape": [64, 64], "dtype": "float32"},
            {"name": "net.1.bias", "shape": [64], "dtype": "float32"},
        ]
    }
    assert back == signature and hash(back) == hash(signature)
    assert signature.shapes == ((64, 64), (64,)) and signature.kinds == ("f", "f")
    assert signature.nbytes == (64 * 64 + 64) * 4
    assert [t.name for t in ModelSignature.of(MLP).tensors] == ["w0", "w1"]


def test_the_first_difference_is_named() -> None:
    # Prepare
    ours = ModelSignature.of(MLP, NAMES)
    more = ModelSignature.of([*MLP, *MLP])
    narrower = ModelSignature.of([np.ones((64, 32), np.float32), MLP[1]], NAMES)
    wider_dtype = ModelSignature.of([m.astype(np.float64) for m in MLP])
    renamed = ModelSignature.of(MLP, ["fc.weight", "fc.bias"])

    # Execute / Assert
    assert ours.difference(more) == (
        "2 tensors (net.1.weight [64, 64] float32, net.1.bias [64] float32); yours has 4: "
        "(w0 [64, 64] float32, w1 [64] float32, w2 [64, 64] float32, ...)"
    )
    assert ours.difference(narrower) == (
        "2 tensors (net.1.weight [64, 64] float32, net.1.bias [64] float32); its tensor 0 "
        "is net.1.weight [64, 64] float32, yours is net.1.weight [64, 32] float32"
    )
    assert "yours is w0 [64, 64] float64" in str(ours.difference(wider_dtype))
    assert ours.difference(wider_dtype, kinds_only=True) is None
    assert "yours is fc.weight [64, 64] float32" in str(ours.difference(renamed))
    # a positional name (w<i>) fits any name: the snapshot does not carry names
    assert ours.difference(ModelSignature.of(MLP)) is None


@pytest.mark.parametrize(
    ("obj", "complaint"),
    [
        ({}, "1 to 4096 tensors"),
        ({"tensors": []}, "1 to 4096 tensors"),
        ({"tensors": [{"name": "a", "shape": [-1], "dtype": "float32"}]}, "non-negative"),
        ({"tensors": [{"name": "a", "shape": [2], "dtype": "float128"}]}, "float128"),
        ({"tensors": [{"name": "a", "shape": [2], "dtype": "object"}]}, "object"),
        ({"tensors": [{"name": "", "shape": [2], "dtype": "float32"}]}, "name"),
        ({"tensors": [{"name": "a", "shape": [1], "dtype": "int8"}] * 2}, "unique"),
    ],
)
def test_a_json_form_that_is_no_signature_is_refused(obj: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InvalidSignatureError, match=complaint):
        ModelSignature.from_json(obj)


_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.uint8]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
)


@settings(max_examples=50)
@given(st.lists(_arrays, min_size=1, max_size=12))
def test_round_trip_fits_the_signature_and_its_size_bound(weights: list[np.ndarray]) -> None:
    # Prepare
    signature = ModelSignature.of(weights)

    # Execute
    blob = weights_to_bytes(weights)
    back = bytes_to_weights(blob, signature)

    # Assert: order, shapes, exact dtypes and values; and the blob within the bound
    assert ModelSignature.of(back) == signature
    for a, b in zip(weights, back, strict=True):
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        assert b.flags.writeable
    assert len(blob) <= signature.max_blob_bytes


# --- bounded decoding ---------------------------------------------------------------------


def test_a_header_declaring_a_huge_array_is_refused_without_allocating_it() -> None:
    # Prepare: a 4 GB float32 array declared, 16 bytes present
    blob = _npz({"w0.npy": _header("<f4", (10**9,)) + bytes(16)})
    signature = ModelSignature.of([np.zeros(16, np.float32)])

    # Execute
    tracemalloc.start()
    try:
        with pytest.raises(OversizedSnapshotError, match="4,000,000,000 bytes") as capped:
            bytes_to_weights(blob)
        with pytest.raises(SignatureMismatchError, match=r"yours is w0 \[1000000000\]"):
            bytes_to_weights(blob, signature)
        with pytest.raises(MalformedSnapshotError, match="but holds 16") as torn:
            bytes_to_weights(blob, max_bytes=10**12)  # even when the cap would let it pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # Assert: refused from the header, never allocated
    assert "too large" in str(capped.value)
    assert isinstance(torn.value, MalformedSnapshotError)
    assert peak < 1_000_000


def test_the_byte_cap_counts_all_arrays_together() -> None:
    # Prepare: two arrays of 400 bytes each
    blob = weights_to_bytes([np.zeros(100, np.float32), np.zeros(100, np.float32)])

    # Execute / Assert
    assert len(bytes_to_weights(blob, max_bytes=800)) == 2
    with pytest.raises(OversizedSnapshotError, match="declare 800 bytes; the cap is 799"):
        bytes_to_weights(blob, max_bytes=799)


def test_compressed_members_are_refused() -> None:
    # Prepare
    buffer = io.BytesIO()
    np.savez_compressed(buffer, w0=MLP[0], w1=MLP[1])

    # Execute / Assert
    with pytest.raises(MalformedSnapshotError, match=r"w0\.npy is compressed"):
        bytes_to_weights(buffer.getvalue())


@pytest.mark.parametrize(
    ("descr", "payload"),
    [("|O", b"\x80\x04\x95 pickle of objects"), ([("a", "<f4"), ("b", "<i4")], bytes(8))],
    ids=["object", "structured"],
)
def test_objects_and_records_are_refused_before_their_data(descr: Any, payload: bytes) -> None:
    # Prepare
    blob = _npz({"w0.npy": _header(descr, (1,)) + payload})

    # Execute / Assert
    with pytest.raises(MalformedSnapshotError, match=r"w0\.npy"):
        bytes_to_weights(blob)


def test_objects_are_never_encoded() -> None:
    with pytest.raises(MalformedSnapshotError, match="without pickle"):
        weights_to_bytes([np.array([{"evil": 1}], dtype=object)])


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not a model" * 10,
        b"PK\x03\x04garbage",
        weights_to_bytes(MLP)[:5000],
        _npz({"kernel.npy": _header("<f4", (1,)) + bytes(4)}),
        _npz({"w0.npy": _header("<f4", (1,)) + bytes(4), "w2.npy": _header("<f4", (1,))}),
        _npz({"w0.npy": b"\x93NUMPY\x09\x00"}),
        _npz({"w0.npy": _header("<f4", (2,)) + bytes(12)}),
    ],
    ids=["empty", "text", "zip-magic", "truncated", "foreign", "gap", "bad-npy", "extra-bytes"],
)
def test_what_is_not_a_snapshot_is_refused_with_a_reason(blob: bytes) -> None:
    with pytest.raises(MalformedSnapshotError, match="weights blob"):
        bytes_to_weights(blob)


def test_a_flipped_data_byte_fails_the_checksum() -> None:
    # Prepare
    blob = bytearray(weights_to_bytes(MLP))
    blob[300] ^= 0xFF

    # Execute / Assert
    with pytest.raises(MalformedSnapshotError, match="CRC"):
        bytes_to_weights(bytes(blob))


def test_non_finite_values_are_named() -> None:
    # Prepare
    weights = [MLP[0], np.array([0.0, np.inf], np.float32)]

    # Execute / Assert
    check_finite(MLP)
    with pytest.raises(NonFiniteError, match="tensor 1"):
        check_finite(weights)

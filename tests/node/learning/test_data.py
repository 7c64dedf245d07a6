"""Tests for node.learning.data: the offline data sets and their errors."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from node.errors import DatasetFormatError, DatasetUnavailableError, NodeError
from node.learning.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_PACKAGE,
    FASHION_TRAIN_IMAGES,
    load_dataset,
    load_digits,
    load_fashion_mnist,
)


def test_digits_are_scaled_images_with_ten_classes() -> None:
    # Execute
    ds = load_digits()

    # Assert
    assert ds.x.shape == (1797, 1, 8, 8)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert set(np.unique(ds.y)) == set(range(10)) and ds.num_classes == 10


def test_missing_fashion_files_name_the_debian_package(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(DatasetUnavailableError) as info:
        load_fashion_mnist(tmp_path)

    # Assert
    message = str(info.value)
    assert FASHION_MNIST_PACKAGE in message
    assert f"apt-get install {FASHION_MNIST_PACKAGE}" in message
    assert isinstance(info.value, NodeError)


def test_a_file_that_is_not_idx_is_reported(tmp_path: Path) -> None:
    # Prepare
    with gzip.open(tmp_path / FASHION_TRAIN_IMAGES, "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + b"\x00" * 20)

    # Execute / Assert
    with pytest.raises(DatasetFormatError, match="magic"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason=f"Debian package {FASHION_MNIST_PACKAGE} absent"
)
def test_fashion_mnist_loads_from_the_debian_package() -> None:
    # Execute
    train, test = load_fashion_mnist()

    # Assert
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert len(train.y) == 60000 and len(test.y) == 10000
    assert set(np.unique(train.y)) == set(range(10))
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    # Class balance as published: 6,000 training images per class.
    assert np.bincount(train.y).tolist() == [6000] * 10


def test_unknown_data_set_lists_the_names() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"digits, fashion"):
        load_dataset("mnist")


def test_load_dataset_by_name_gives_digits() -> None:
    # Execute
    ds = load_dataset("digits")

    # Assert
    assert ds.name == "digits" and len(ds) == 1797

"""Offline data sets: scikit-learn's digits and Fashion-MNIST from a Debian package."""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn import datasets as sk_datasets

from node.errors import DatasetFormatError, DatasetUnavailableError

__all__ = [
    "DATASET_NAMES",
    "DIGITS",
    "FASHION",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_PACKAGE",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
]

logger = logging.getLogger(__name__)

DIGITS = "digits"
FASHION = "fashion"
DATASET_NAMES = (DIGITS, FASHION)

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
FASHION_TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
FASHION_TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
FASHION_TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_DIGITS_MAX_PIXEL = 16.0
_NUM_CLASSES = 10


@dataclass
class Dataset:
    """Images ``x`` (float32, ``[N, C, H, W]``, values in [0, 1]) and labels ``y`` (int64)."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __len__(self) -> int:
        """Return the number of examples."""
        return len(self.y)


def load_digits() -> Dataset:
    """Load scikit-learn's bundled 8x8 digits (1,797 examples), scaled to [0, 1]."""
    bunch = sk_datasets.load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / _DIGITS_MAX_PIXEL).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(x=np.ascontiguousarray(x), y=y, num_classes=_NUM_CLASSES, name=DIGITS)


def _missing_message(path: Path) -> str:
    return (
        f"Fashion-MNIST file {path} is missing. It comes from the Debian package "
        f"'{FASHION_MNIST_PACKAGE}': install it with "
        f"`sudo apt-get install {FASHION_MNIST_PACKAGE}`."
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzipped IDX file (big-endian header, unsigned bytes) into an array."""
    if not path.is_file():
        raise DatasetUnavailableError(_missing_message(path))
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetFormatError(f"{path} is not a readable gzip file: {exc}") from exc
    header_len = 4 + 4 * (magic - 2048)  # magic, then one uint32 per dimension
    if len(raw) < header_len:
        raise DatasetFormatError(f"{path} is too short to be an IDX file")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        raise DatasetFormatError(f"{path} has IDX magic {found_magic}, expected {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(magic - 2048)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
    if data.size != int(np.prod(dims)):
        raise DatasetFormatError(f"{path} holds {data.size} bytes, header says {dims}")
    return data.reshape(dims)


def _fashion_raw(
    root: Path, images_file: str, labels_file: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (uint8, ``[N, H, W]``) and labels (uint8, ``[N]``)."""
    images = _read_idx(root / images_file, _IDX_IMAGES_MAGIC)
    labels = _read_idx(root / labels_file, _IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetFormatError(f"{root}: {len(images)} images but {len(labels)} labels in {name}")
    return images, labels


def _scaled(parts: list[np.ndarray]) -> np.ndarray:
    """uint8 images ``[N_i, H, W]`` scaled to [0, 1], stacked: float32 ``[sum N_i, 1, H, W]``.

    Written straight into the one result (the values of ``images.astype(np.float32) /
    255.0``, bit for bit): no float copy of a part and no concatenated second copy, which
    for Fashion-MNIST added ~420 MB to the peak RSS for a 220 MB result.
    """
    height, width = parts[0].shape[1:]
    out = np.empty((sum(len(p) for p in parts), 1, height, width), dtype=np.float32)
    start = 0
    for part in parts:
        np.divide(part, np.float32(255.0), out=out[start : start + len(part), 0], dtype=np.float32)
        start += len(part)
    return out


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> tuple[Dataset, Dataset]:
    """Load Fashion-MNIST (train 60k, test 10k, 28x28) from the IDX ``.gz`` files in ``root``.

    Raises ``DatasetUnavailableError`` naming the Debian package when a file is missing.
    """
    splits = []
    for images_file, labels_file, name in (
        (FASHION_TRAIN_IMAGES, FASHION_TRAIN_LABELS, f"{FASHION}-train"),
        (FASHION_TEST_IMAGES, FASHION_TEST_LABELS, f"{FASHION}-test"),
    ):
        images, labels = _fashion_raw(root, images_file, labels_file, name)
        splits.append(
            Dataset(
                x=_scaled([images]),
                y=labels.astype(np.int64),
                num_classes=_NUM_CLASSES,
                name=name,
            )
        )
    train, test = splits
    logger.debug("Loaded Fashion-MNIST from %s: %d train, %d test", root, len(train), len(test))
    return train, test


def load_dataset(name: str) -> Dataset:
    """Load a data set by name: ``"digits"`` or ``"fashion"``.

    Fashion-MNIST's train and test files are concatenated (70,000 examples): the
    partitioner makes every node's own train/val/test split.
    """
    if name == DIGITS:
        return load_digits()
    if name == FASHION:
        root = FASHION_MNIST_DIR
        train = _fashion_raw(root, FASHION_TRAIN_IMAGES, FASHION_TRAIN_LABELS, f"{FASHION}-train")
        test = _fashion_raw(root, FASHION_TEST_IMAGES, FASHION_TEST_LABELS, f"{FASHION}-test")
        logger.debug(
            "Loaded Fashion-MNIST from %s: %d train, %d test", root, len(train[0]), len(test[0])
        )
        return Dataset(
            x=_scaled([train[0], test[0]]),
            y=np.concatenate([train[1], test[1]]).astype(np.int64),
            num_classes=_NUM_CLASSES,
            name=FASHION,
        )
    raise ValueError(f"Unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")

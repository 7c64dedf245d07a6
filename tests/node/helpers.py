"""Helpers shared by the node tests."""

import numpy as np

from node.learning.data import Dataset
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import NodeData


def digits_learner(data: NodeData, seed: int = 0, learning_rate: float = 0.05) -> Learner:
    """A learner with the digits MLP initialised from ``seed``."""
    return Learner(build_model("digits", seed), data, seed=seed, learning_rate=learning_rate)


def indexed_dataset(n: int = 400, num_classes: int = 4, side: int = 4) -> Dataset:
    """A synthetic data set whose pixel [0, 0, 0] holds the example's index, to track it."""
    rng = np.random.default_rng(123)
    x = rng.random((n, 1, side, side), dtype=np.float32)
    x[:, 0, 0, 0] = np.arange(n, dtype=np.float32)
    y = np.arange(n, dtype=np.int64) % num_classes
    return Dataset(x=x, y=y, num_classes=num_classes, name="indexed")

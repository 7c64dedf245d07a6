"""Fixtures for the node tests: digits loaded once, small partitions."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import pytest

from node.learning.data import Dataset, load_digits
from node.learning.partition import NodeData, partition


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """The bundled digits data set, loaded once."""
    return load_digits()


@pytest.fixture(scope="session")
def iid_digits_nodes(digits: Dataset) -> list[NodeData]:
    """Four IID shares of digits (about 315 train / 67 val examples each)."""
    return partition(digits, 4, "iid", seed=0)


@pytest.fixture
def no_peer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test sees only the MYCELIUM_PEER_* variables it sets itself."""
    for name in list(os.environ):
        if name.upper().startswith("MYCELIUM_PEER_"):
            monkeypatch.delenv(name)

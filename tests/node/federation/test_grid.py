"""Compatibility test for node.federation.grid: fails loudly when a Flower upgrade breaks it."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from node.federation.grid import FlowerCompatError, InMemoryGrid, check_flower_compat


def _constant_app(value: float) -> ClientApp:
    """A ClientApp whose training returns arrays filled with ``value``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = RecordDict(
            {
                "arrays": ArrayRecord([np.full(3, value, dtype=np.float32)]),
                "metrics": MetricRecord({"num-examples": 1}),
            }
        )
        return Message(content=reply, reply_to=msg)

    return app


def test_flower_internals_still_match() -> None:
    # Execute / Assert (raises FlowerCompatError naming what changed)
    check_flower_compat()


def test_a_flower_strategy_runs_on_the_in_memory_grid() -> None:
    # Prepare
    grid = InMemoryGrid({2: _constant_app(1.0), 3: _constant_app(3.0)})
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)

    # Execute
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord([np.zeros(3, dtype=np.float32)]), num_rounds=2
    )

    # Assert
    assert np.allclose(result.arrays.to_numpy_ndarrays()[0], 2.0)
    assert sorted(grid.get_node_ids()) == [2, 3]


def test_a_new_abstract_grid_method_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setattr(Grid, "__abstractmethods__", frozenset({"send_and_receive", "teleport"}))

    # Execute / Assert
    with pytest.raises(FlowerCompatError, match="teleport"):
        check_flower_compat()


def test_the_server_node_id_is_reserved() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="server"):
        InMemoryGrid({1: _constant_app(0.0)})

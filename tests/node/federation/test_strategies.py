"""Strategy names: the node's Flower strategies and the registry's group settings agree."""

from node.federation.strategies import STRATEGY_NAMES
from registry.schemas import AGGREGATIONS


def test_every_group_aggregation_the_registry_accepts_is_a_strategy_nodes_run() -> None:
    assert tuple(AGGREGATIONS) == tuple(STRATEGY_NAMES)

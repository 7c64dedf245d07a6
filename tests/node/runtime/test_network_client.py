"""The in-process network's nodes share one HTTP client and stay themselves (real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.learning.data import load_digits
from node.learning.partition import partition
from node.learning.weights import weights_to_bytes
from node.registry_client import ForbiddenError
from node.runtime.network import InProcessNetwork, NetworkConfig
from registry.server import BackgroundRegistry
from registry.settings import build_settings


@pytest.fixture
def registry_url(tmp_path: Path) -> Iterator[str]:
    with BackgroundRegistry(build_settings(data_dir=tmp_path / "registry")) as reg:
        yield reg.url


def test_nodes_sharing_one_client_each_act_only_as_themselves(registry_url: str) -> None:
    # Prepare: three registered nodes; a creates a group
    data = partition(load_digits(), 3, "clustered", seed=0, clusters=3)
    net = InProcessNetwork(registry_url, data, NetworkConfig(seed=0, warmup_epochs=0))
    net.start()
    a, b, c = net.agents
    group_a = a.choose_group(1)
    blob = weights_to_bytes(b.learner.get_weights())

    # Execute / Assert: one connection pool, three identities
    assert a.client._http is b.client._http is c.client._http
    assert [x.client.get_node().id for x in net.agents] == [x.node_id for x in net.agents]
    assert [x.client.heartbeat().id for x in (c, b, a)] == [c.node_id, b.node_id, a.node_id]
    assert group_a is not None
    with pytest.raises(ForbiddenError):  # b is no member of a's group: members-only writes
        b.client.upload_model(group_a, 1, blob)
    assert a.client.upload_model(group_a, 1, weights_to_bytes(a.learner.get_weights())).round == 1

    # Execute: shutdown closes the shared client once, after every node has left
    net.shutdown()

    # Assert
    assert all(x.group_id is None for x in net.agents)
    with pytest.raises(RuntimeError, match="closed"):
        a.client.get_node()


def test_a_bad_registry_url_is_refused_before_any_node_is_built() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="registry URL"):
        InProcessNetwork("ftp://nowhere", [], NetworkConfig())

"""The gossip API in one import, shaped like QuinkGL's: a member, model wrappers, options.

::

    from node.gossip import GossipNode, PyTorchModel, CyclonTopology, FedAvg

    node = GossipNode(node_id="alice", domain="digits", model=PyTorchModel(net), port=0,
                      topology=CyclonTopology(view_size=4), aggregation=FedAvg())
    await node.start()
    await node.run_continuous((X, y), max_cycles=100)
    await node.shutdown()

The parts live in ``node.p2p.gossip`` (the member), ``node.p2p.gossip_options`` (topology
and aggregation) and ``node.learning.wrappers`` (``ModelWrapper``, ``PyTorchModel``,
``KerasModel``, ``TrainingConfig``); Keras is imported only when a ``KerasModel`` is made.
"""

from __future__ import annotations

from node.learning.wrappers import (
    KerasModel,
    ModelWrapper,
    PyTorchModel,
    TrainingConfig,
    choose_keras_backend,
)
from node.p2p.auth import SharedSecretAuth
from node.p2p.gossip import REGISTRY_URL_ENV, GossipNode, GossipStats
from node.p2p.gossip_options import CyclonTopology, FedAvg, Median, RandomTopology, TrimmedMean

__all__ = [
    "REGISTRY_URL_ENV",
    "CyclonTopology",
    "FedAvg",
    "GossipNode",
    "GossipStats",
    "KerasModel",
    "Median",
    "ModelWrapper",
    "PyTorchModel",
    "RandomTopology",
    "SharedSecretAuth",
    "TrainingConfig",
    "TrimmedMean",
]

# A user who imports this before ``keras`` gets the backend that works without TensorFlow.
choose_keras_backend()

"""IFCA, the Iterative Federated Clustering Algorithm (Ghosh et al., NeurIPS 2020), central.

The baseline our decentralized group choice is measured against. A server holds ``k``
cluster models (``k`` known, random initialisation from a seed). Every round each node
evaluates all ``k`` models on its local training data, picks the one with the lowest
loss, trains it locally, and sends the result back; the server replaces each cluster
model by the mean of the models its nodes returned, weighted by their training examples
(Algorithm 2 with model averaging). A cluster no node picked keeps its model.

As the paper says, a random start can collapse: when one cluster model fits every node
best at first, the others are never trained (on digits with 2 label-permutation
clusters and 8 nodes, seeds 0-3 and 5 separate the clusters within 3 rounds, seed 4
does not). We run one initialisation, no restarts, as the baseline is stated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from node.learning.learner import Learner
from node.learning.merge import weighted_mean
from node.learning.models import build_model
from node.learning.partition import NodeData

__all__ = ["IFCAResult", "best_cluster", "run_ifca"]

log = logging.getLogger(__name__)


@dataclass
class IFCAResult:
    """What an IFCA run did.

    ``assignments[r][i]``: the cluster model node ``i`` picked in round ``r + 1``;
    ``cluster_models[j]``: cluster ``j``'s final weights (``state_dict`` order);
    ``final_assignment[i]``: the cluster model that fits node ``i``'s training data
    best at the end, the one it uses; ``test_accuracy[i]``: that model on node ``i``'s
    test split, in [0, 1]; ``round_accuracy[r][i]``: after round ``r + 1``, the
    averaged model node ``i`` picked, on its (then current) test split.
    """

    assignments: list[list[int]]
    cluster_models: list[list[np.ndarray]]
    final_assignment: list[int]
    test_accuracy: list[float]
    round_accuracy: list[list[float]]


def best_cluster(learner: Learner, models: Sequence[list[np.ndarray]]) -> int:
    """The index of the model with the lowest mean cross-entropy on ``learner``'s train split.

    Ties go to the lower index. Raises ``ValueError`` when ``models`` is empty.
    """
    if not models:
        raise ValueError("IFCA needs at least one cluster model")
    losses = [learner.evaluate("train", weights=w).loss for w in models]
    return int(np.argmin(losses))


def run_ifca(
    data: Sequence[NodeData],
    *,
    clusters: int,
    rounds: int,
    dataset: str = "digits",
    local_epochs: int = 2,
    learning_rate: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
    model_factory: Callable[[int], nn.Module] | None = None,
    drifted: Mapping[int, NodeData] | None = None,
    drift_after_round: int = 0,
) -> IFCAResult:
    """Run central IFCA for ``rounds`` rounds over the nodes' ``data``.

    Node ``i`` trains with a ``Learner`` seeded ``seed + i`` for ``local_epochs`` epochs
    of SGD (``learning_rate``, ``batch_size``) a round, as the network's nodes do.
    Cluster model ``j`` starts from ``model_factory(j)``, by default
    ``build_model(dataset, seed=seed + j)``. With ``drifted`` (``{node index: new
    data}``, e.g. ``PartitionSpec.drifted``), those nodes hold their new data from
    round ``drift_after_round + 1`` on. Raises ``ValueError`` for ``clusters`` or
    ``rounds`` below 1, no nodes, or a drifted index out of range.
    """
    if clusters < 1 or rounds < 1 or not data:
        raise ValueError(
            f"IFCA needs clusters >= 1, rounds >= 1 and nodes; got {clusters}, {rounds}, "
            f"{len(data)}"
        )

    def factory(j: int) -> nn.Module:
        return model_factory(j) if model_factory else build_model(dataset, seed=seed + j)

    learners = [
        Learner(
            factory(0),
            nd,
            learning_rate=learning_rate,
            batch_size=batch_size,
            epochs=local_epochs,
            seed=seed + i,
        )
        for i, nd in enumerate(data)
    ]
    if drifted and not all(0 <= i < len(data) for i in drifted):
        raise ValueError(f"drifted node indices {sorted(drifted)} out of range for {len(data)}")
    models = [Learner(factory(j), data[0]).get_weights() for j in range(clusters)]
    assignments: list[list[int]] = []
    round_accuracy: list[list[float]] = []
    for rnd in range(1, rounds + 1):
        if drifted and rnd == drift_after_round + 1:
            for i, nd in drifted.items():
                old = learners[i]
                learners[i] = Learner(
                    factory(0),
                    nd,
                    learning_rate=learning_rate,
                    batch_size=batch_size,
                    epochs=local_epochs,
                    seed=old.seed,
                )
        picks = [best_cluster(ln, models) for ln in learners]
        returned: dict[int, list[tuple[list[np.ndarray], int]]] = {}
        for ln, j in zip(learners, picks, strict=True):
            ln.set_weights(models[j])
            ln.train()
            returned.setdefault(j, []).append((ln.get_weights(), ln.num_train_examples))
        for j, pairs in returned.items():
            models[j] = weighted_mean([w for w, _ in pairs], [n for _, n in pairs])
        assignments.append(picks)
        round_accuracy.append(
            [
                ln.evaluate("test", weights=models[j]).accuracy
                for ln, j in zip(learners, picks, strict=True)
            ]
        )
        log.debug("IFCA round %d: cluster sizes %s", rnd, np.bincount(picks, minlength=clusters))
    final = [best_cluster(ln, models) for ln in learners]
    accuracy = [
        ln.evaluate("test", weights=models[j]).accuracy
        for ln, j in zip(learners, final, strict=True)
    ]
    return IFCAResult(assignments, models, final, accuracy, round_accuracy)

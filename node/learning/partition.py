"""Split a data set across nodes (IID, Dirichlet label skew, hidden clusters), from a seed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from node.learning.data import Dataset, load_dataset

__all__ = [
    "CLUSTER_MODES",
    "MIN_SAMPLES_PER_NODE",
    "SCHEMES",
    "ClusterMode",
    "NodeData",
    "PartitionSpec",
    "Scheme",
    "partition",
]

logger = logging.getLogger(__name__)

Scheme = Literal["iid", "dirichlet", "clustered"]
ClusterMode = Literal["rotation", "label_permutation"]
IID = "iid"
DIRICHLET = "dirichlet"
CLUSTERED = "clustered"
ROTATION = "rotation"
LABEL_PERMUTATION = "label_permutation"
SCHEMES: tuple[str, ...] = (IID, DIRICHLET, CLUSTERED)
CLUSTER_MODES: tuple[str, ...] = (ROTATION, LABEL_PERMUTATION)

# Each node needs at least one val and one test example and a few to train on.
MIN_SAMPLES_PER_NODE = 10


@dataclass
class NodeData:
    """One node's disjoint train/val/test splits and its hidden true cluster (0 when none)."""

    train: Dataset
    val: Dataset
    test: Dataset
    cluster: int
    index: int


def partition(
    dataset: Dataset,
    num_nodes: int,
    scheme: Scheme = "iid",
    *,
    seed: int,
    alpha: float = 0.5,
    clusters: int = 4,
    cluster_mode: ClusterMode = "rotation",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    samples_per_node: int | None = None,
) -> list[NodeData]:
    """Split ``dataset`` across ``num_nodes`` nodes; the same seed gives identical arrays.

    - ``iid``: a uniform random share per node.
    - ``dirichlet``: per class, shares drawn from Dirichlet(``alpha``); smaller alpha is
      more skewed. Every node gets at least ``MIN_SAMPLES_PER_NODE`` examples.
    - ``clustered``: IID shares; node ``i`` is in hidden cluster ``i % clusters`` whose
      images are rotated by ``cluster * 90`` degrees (``rotation``) or whose labels go
      through a fixed seeded permutation (``label_permutation``; cluster 0 keeps them).

    Nodes' examples are disjoint while ``num_nodes * samples_per_node`` fits in the data
    set; beyond that each node draws its own sample and nodes overlap (logged).
    """
    _check_arguments(
        dataset,
        num_nodes,
        scheme,
        alpha,
        clusters,
        cluster_mode,
        val_fraction,
        test_fraction,
        samples_per_node,
    )
    split_seq, transform_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(split_seq)
    if scheme == DIRICHLET:
        shares = _dirichlet_shares(dataset, num_nodes, alpha, samples_per_node, rng)
    else:
        shares = _iid_shares(len(dataset), num_nodes, samples_per_node, rng)

    permutations = _label_permutations(dataset.num_classes, clusters, transform_seq)
    nodes: list[NodeData] = []
    for index, share in enumerate(shares):
        cluster = index % clusters if scheme == CLUSTERED else 0
        x, y = dataset.x[share], dataset.y[share]
        if scheme == CLUSTERED:
            x, y = _apply_cluster(x, y, cluster, cluster_mode, permutations)
        nodes.append(_split_node(dataset, x, y, index, cluster, val_fraction, test_fraction, rng))
    logger.debug(
        "Partitioned %s into %d nodes (%s, seed %d)", dataset.name, num_nodes, scheme, seed
    )
    return nodes


def _check_arguments(
    dataset: Dataset,
    num_nodes: int,
    scheme: str,
    alpha: float,
    clusters: int,
    cluster_mode: str,
    val_fraction: float,
    test_fraction: float,
    samples_per_node: int | None = None,
) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if cluster_mode not in CLUSTER_MODES:
        raise ValueError(
            f"Unknown cluster_mode {cluster_mode!r}; choose one of {', '.join(CLUSTER_MODES)}"
        )
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
    # With samples_per_node, IID shares may overlap (more nodes than the data set
    # holds); Dirichlet shares are always disjoint, so they need enough examples.
    may_overlap = samples_per_node is not None and scheme != DIRICHLET
    needed = MIN_SAMPLES_PER_NODE if may_overlap else num_nodes * MIN_SAMPLES_PER_NODE
    if len(dataset) < needed:
        raise ValueError(
            f"{dataset.name} has {len(dataset)} examples: too few for {num_nodes} nodes "
            f"of at least {MIN_SAMPLES_PER_NODE}"
        )
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if clusters < 1:
        raise ValueError(f"clusters must be at least 1, got {clusters}")
    if val_fraction <= 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be positive and sum below 1")
    if (
        scheme == CLUSTERED
        and cluster_mode == ROTATION
        and dataset.x.shape[2] != dataset.x.shape[3]
    ):
        raise ValueError("rotation clusters need square images")


def _pool(total: int, wanted: int, rng: np.random.Generator) -> np.ndarray:
    """A random pool of ``wanted`` distinct indices out of ``total``."""
    return rng.permutation(total)[:wanted]


def _iid_shares(
    total: int, num_nodes: int, samples_per_node: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    per_node = samples_per_node if samples_per_node is not None else total // num_nodes
    if per_node < MIN_SAMPLES_PER_NODE:
        raise ValueError(f"samples_per_node must be at least {MIN_SAMPLES_PER_NODE}")
    if per_node * num_nodes <= total:
        pool = _pool(total, per_node * num_nodes, rng)
        return [np.sort(part) for part in np.split(pool, num_nodes)]
    logger.warning(
        "%d nodes x %d samples exceed %d examples: nodes' samples overlap",
        num_nodes,
        per_node,
        total,
    )
    return [np.sort(_pool(total, min(per_node, total), rng)) for _ in range(num_nodes)]


def _dirichlet_shares(
    dataset: Dataset,
    num_nodes: int,
    alpha: float,
    samples_per_node: int | None,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    total = len(dataset)
    wanted = total if samples_per_node is None else min(total, samples_per_node * num_nodes)
    pool = _pool(total, wanted, rng)
    buckets: list[list[int]] = [[] for _ in range(num_nodes)]
    for label in range(dataset.num_classes):
        members = pool[dataset.y[pool] == label]
        proportions = rng.dirichlet(np.full(num_nodes, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
        for node, part in enumerate(np.split(members, cuts)):
            buckets[node].extend(part.tolist())
    _top_up_small_nodes(buckets, rng)
    return [np.sort(np.asarray(bucket, dtype=np.int64)) for bucket in buckets]


def _top_up_small_nodes(buckets: list[list[int]], rng: np.random.Generator) -> None:
    """Move random examples from the largest nodes to nodes below the minimum."""
    for bucket in buckets:
        while len(bucket) < MIN_SAMPLES_PER_NODE:
            donor = max(buckets, key=len)
            bucket.append(donor.pop(int(rng.integers(len(donor)))))


def _label_permutations(
    num_classes: int, clusters: int, seq: np.random.SeedSequence
) -> list[np.ndarray]:
    rng = np.random.default_rng(seq)
    identity = np.arange(num_classes, dtype=np.int64)
    return [identity] + [rng.permutation(num_classes) for _ in range(clusters - 1)]


def _apply_cluster(
    x: np.ndarray,
    y: np.ndarray,
    cluster: int,
    mode: str,
    permutations: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    if mode == ROTATION:
        return np.ascontiguousarray(np.rot90(x, k=cluster, axes=(2, 3))), y
    return x, permutations[cluster][y]


def _split_node(
    dataset: Dataset,
    x: np.ndarray,
    y: np.ndarray,
    index: int,
    cluster: int,
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
) -> NodeData:
    n = len(y)
    order = rng.permutation(n)
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    val_idx, test_idx, train_idx = np.split(order, [n_val, n_val + n_test])

    def subset(idx: np.ndarray, split: str) -> Dataset:
        return Dataset(
            x=x[idx],
            y=y[idx],
            num_classes=dataset.num_classes,
            name=f"{dataset.name}/node{index}/{split}",
        )

    return NodeData(
        train=subset(train_idx, "train"),
        val=subset(val_idx, "val"),
        test=subset(test_idx, "test"),
        cluster=cluster,
        index=index,
    )


@dataclass(frozen=True)
class PartitionSpec:
    """How a data set is split across nodes: everyone holding the same spec (the demo,
    each node process, a peer, the simulator) computes the same shares from the seed.

    ``dataset`` is a name for ``load_dataset``; the rest are ``partition``'s arguments.
    """

    dataset: str = "digits"
    scheme: str = IID
    num_partitions: int = 4
    clusters: int = 2
    cluster_mode: str = ROTATION
    alpha: float = 0.5
    samples_per_node: int | None = None
    seed: int = 0

    def split(self, dataset: Dataset | None = None) -> list[NodeData]:
        """Every share, in order; ``dataset`` when given, else loaded by name.

        Raises ``ValueError`` for bad arguments and ``DatasetError`` for missing files.
        """
        return partition(
            dataset if dataset is not None else load_dataset(self.dataset),
            self.num_partitions,
            self.scheme,  # type: ignore[arg-type]  # checked by partition()
            seed=self.seed,
            alpha=self.alpha,
            clusters=self.clusters,
            cluster_mode=self.cluster_mode,  # type: ignore[arg-type]
            samples_per_node=self.samples_per_node,
        )

    def share(self, index: int) -> NodeData:
        """Share ``index`` of ``num_partitions``; ``ValueError`` when out of range."""
        if not 0 <= index < self.num_partitions:
            raise ValueError(
                f"partition id {index} is out of range for {self.num_partitions} partitions"
            )
        return self.split()[index]

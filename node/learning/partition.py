"""Split a data set across nodes (IID, Dirichlet label skew, hidden clusters), from a seed."""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from node.learning.data import Dataset, load_dataset

__all__ = [
    "CLUSTER_MODES",
    "MIN_SAMPLES_PER_NODE",
    "SCHEMES",
    "ClusterMode",
    "ClusterTransform",
    "NodeData",
    "PartitionSpec",
    "Scheme",
    "cluster_transforms",
    "drift",
    "mixed_rotations",
    "partition",
    "rotation_degrees",
]

logger = logging.getLogger(__name__)

Scheme = Literal["iid", "dirichlet", "clustered"]
ClusterMode = Literal["rotation", "label_permutation", "mixed"]
IID = "iid"
DIRICHLET = "dirichlet"
CLUSTERED = "clustered"
ROTATION = "rotation"
LABEL_PERMUTATION = "label_permutation"
MIXED = "mixed"
SCHEMES: tuple[str, ...] = (IID, DIRICHLET, CLUSTERED)
CLUSTER_MODES: tuple[str, ...] = (ROTATION, LABEL_PERMUTATION, MIXED)
_SPLITS = ("train", "val", "test")

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
    - ``clustered``: IID shares; node ``i`` is in hidden cluster ``i % clusters``, whose
      examples go through ``cluster_transforms``: images rotated (``rotation``; quarter
      turns up to 4 clusters, ``cluster * 360 / clusters`` degrees beyond), labels
      through a seeded permutation
      (``label_permutation``), or both (``mixed``); cluster 0 is left as it is.

    Nodes' examples are disjoint while ``num_nodes * samples_per_node`` fits in the data
    set; beyond that each node draws its own sample and nodes overlap (logged).
    Raises ``ValueError`` naming the bad argument.
    """
    raw, transforms = _raw_nodes(
        dataset,
        num_nodes,
        scheme,
        seed=seed,
        alpha=alpha,
        clusters=clusters,
        cluster_mode=cluster_mode,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        samples_per_node=samples_per_node,
    )
    nodes = []
    pending = deque(raw)
    del raw
    while pending:  # each node's untransformed copy goes as soon as it is transformed
        node = pending.popleft()
        nodes.append(_transformed(dataset, node, node.cluster, transforms))
    logger.debug(
        "Partitioned %s into %d nodes (%s, seed %d)", dataset.name, num_nodes, scheme, seed
    )
    return nodes


def drift(
    dataset: Dataset,
    num_nodes: int,
    *,
    seed: int,
    fraction: float,
    drift_seed: int,
    clusters: int = 4,
    cluster_mode: ClusterMode = "rotation",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    samples_per_node: int | None = None,
) -> dict[int, NodeData]:
    """Drifted shares of a ``clustered`` partition: ``{node index: its new NodeData}``.

    ``round(fraction * num_nodes)`` nodes, drawn with ``drift_seed``, each get another
    hidden cluster (drawn uniformly from the other ``clusters - 1``, also from
    ``drift_seed``). A drifted node keeps exactly the examples of its train/val/test
    splits under ``partition(..., seed=seed)``; only their cluster transform changes,
    so ``.cluster`` is the new cluster and ``.index`` the node's own.
    Raises ``ValueError`` when ``fraction`` is not in (0, 1], when it picks no node,
    when there are fewer than 2 clusters, or for any bad ``partition`` argument.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"drift fraction must be in (0, 1], got {fraction}")
    if clusters < 2:
        raise ValueError(f"drift needs at least 2 clusters to move between, got {clusters}")
    count = round(fraction * num_nodes)
    if count == 0:
        raise ValueError(f"drift fraction {fraction} of {num_nodes} nodes picks no node")
    raw, transforms = _raw_nodes(
        dataset,
        num_nodes,
        CLUSTERED,
        seed=seed,
        alpha=0.5,
        clusters=clusters,
        cluster_mode=cluster_mode,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        samples_per_node=samples_per_node,
    )
    rng = np.random.default_rng(drift_seed)
    chosen = sorted(int(i) for i in rng.choice(num_nodes, size=count, replace=False))
    out: dict[int, NodeData] = {}
    for index in chosen:
        node = raw[index]
        others = [c for c in range(clusters) if c != node.cluster]
        new_cluster = others[int(rng.integers(len(others)))]
        out[index] = _transformed(dataset, node, new_cluster, transforms)
    logger.debug("Drifted %d of %d nodes (drift seed %d)", count, num_nodes, drift_seed)
    return out


@dataclass(frozen=True)
class ClusterTransform:
    """What a hidden cluster does to an example: rotate the image, permute the label."""

    degrees: float
    permutation: np.ndarray  # int64, [num_classes]: new label = permutation[old label]


def rotation_degrees(cluster: int, rotations: int) -> float:
    """Degrees (counter-clockwise) of rotation number ``cluster`` out of ``rotations``.

    Up to 4 rotations are quarter turns, ``cluster * 90``: exact (no interpolation), and
    the arrays every seed gave before any number of clusters was allowed. Beyond 4 they
    split the circle evenly, ``cluster * 360 / rotations``.
    """
    return cluster * 90.0 if rotations <= 4 else cluster * 360.0 / rotations


def mixed_rotations(clusters: int) -> int:
    """How many rotations ``mixed`` mode uses for ``clusters`` clusters: ceil(sqrt(k)).

    Cluster ``c`` is rotated by ``rotation_degrees(c mod r, r)`` and its labels go
    through permutation number ``c div r`` (0 is the identity), so ``k`` clusters need
    ``r`` rotations and ``ceil(k / r)`` permutations; every cluster differs from every
    other in its rotation, its permutation or both.
    """
    return math.isqrt(clusters - 1) + 1 if clusters > 1 else 1


def cluster_transforms(
    num_classes: int, clusters: int, mode: str, seq: np.random.SeedSequence
) -> list[ClusterTransform]:
    """Each hidden cluster's transform under ``mode``; cluster 0 is the identity.

    ``rotation``: cluster ``c`` rotates by ``rotation_degrees(c, clusters)``: quarter
    turns for up to 4 clusters, ``c * 360 / clusters`` degrees beyond.
    ``label_permutation``: cluster ``c`` maps labels through the ``c``-th of distinct
    seeded permutations. ``mixed``: see ``mixed_rotations``. Raises ``ValueError`` when
    ``num_classes`` has fewer distinct permutations than needed.
    """
    identity = np.arange(num_classes, dtype=np.int64)
    if mode == ROTATION:
        return [ClusterTransform(rotation_degrees(c, clusters), identity) for c in range(clusters)]
    if mode == LABEL_PERMUTATION:
        perms = _label_permutations(num_classes, clusters, seq)
        return [ClusterTransform(0.0, perms[c]) for c in range(clusters)]
    r = mixed_rotations(clusters)
    perms = _label_permutations(num_classes, math.ceil(clusters / r), seq)
    return [ClusterTransform(rotation_degrees(c % r, r), perms[c // r]) for c in range(clusters)]


@dataclass
class _RawNode:
    """A node's examples before its cluster's transform: ``splits[name] = (x, y)``."""

    index: int
    cluster: int
    splits: dict[str, tuple[np.ndarray, np.ndarray]]


def _raw_nodes(
    dataset: Dataset,
    num_nodes: int,
    scheme: str,
    *,
    seed: int,
    alpha: float,
    clusters: int,
    cluster_mode: str,
    val_fraction: float,
    test_fraction: float,
    samples_per_node: int | None,
) -> tuple[list[_RawNode], list[ClusterTransform]]:
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
    transforms = (
        cluster_transforms(dataset.num_classes, clusters, cluster_mode, transform_seq)
        if scheme == CLUSTERED
        else [ClusterTransform(0.0, np.arange(dataset.num_classes, dtype=np.int64))]
    )
    raw = []
    for index, share in enumerate(shares):
        cluster = index % clusters if scheme == CLUSTERED else 0
        order = _split_order(len(share), val_fraction, test_fraction, rng)
        # One gather per split (x[share][idx] made a copy of the share first).
        splits = {
            name: (dataset.x[share[idx]], dataset.y[share[idx]])
            for name, idx in zip(_SPLITS, order, strict=True)
        }
        raw.append(_RawNode(index, cluster, splits))
    return raw, transforms


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
        and cluster_mode in (ROTATION, MIXED)
        and dataset.x.shape[2] != dataset.x.shape[3]
    ):
        raise ValueError("rotation clusters need square images")
    perms_needed = (
        clusters
        if cluster_mode == LABEL_PERMUTATION
        else math.ceil(clusters / mixed_rotations(clusters))
        if cluster_mode == MIXED
        else 1
    )
    if scheme == CLUSTERED and perms_needed > math.factorial(dataset.num_classes):
        raise ValueError(
            f"{clusters} {cluster_mode} clusters need {perms_needed} distinct label "
            f"permutations; {dataset.num_classes} classes have only "
            f"{math.factorial(dataset.num_classes)}"
        )


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
    num_classes: int, count: int, seq: np.random.SeedSequence
) -> list[np.ndarray]:
    """``count`` distinct permutations: the identity, then seeded draws (redrawn on a repeat)."""
    rng = np.random.default_rng(seq)
    perms = [np.arange(num_classes, dtype=np.int64)]
    seen = {perms[0].tobytes()}
    while len(perms) < count:
        perm = rng.permutation(num_classes)
        if perm.tobytes() not in seen:
            seen.add(perm.tobytes())
            perms.append(perm)
    return perms


def _rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate square images ``x`` (``[N, C, H, H]``) by ``degrees`` counter-clockwise.

    Quarter turns are exact (``np.rot90``); other angles interpolate bilinearly
    (``scipy.ndimage.rotate``, ``order=1``, same size, zeros outside).
    """
    rest = degrees % 90.0
    if math.isclose(rest, 0.0, abs_tol=1e-9) or math.isclose(rest, 90.0, abs_tol=1e-9):
        k = round(degrees / 90.0) % 4
        return np.ascontiguousarray(np.rot90(x, k=k, axes=(2, 3))) if k else x
    rotated = ndimage.rotate(x, degrees, axes=(2, 3), reshape=False, order=1, mode="constant")
    return np.ascontiguousarray(rotated, dtype=x.dtype)


def _split_order(
    n: int, val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Positions of a node's ``n`` examples in its train, val and test splits."""
    order = rng.permutation(n)
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    val_idx, test_idx, train_idx = np.split(order, [n_val, n_val + n_test])
    return [train_idx, val_idx, test_idx]


def _transformed(
    dataset: Dataset, node: _RawNode, cluster: int, transforms: list[ClusterTransform]
) -> NodeData:
    """``node``'s splits under ``cluster``'s transform, as a ``NodeData``."""
    transform = transforms[cluster]

    def subset(split: str) -> Dataset:
        x, y = node.splits[split]
        return Dataset(
            x=_rotate(x, transform.degrees) if transform.degrees else x,
            y=transform.permutation[y],
            num_classes=dataset.num_classes,
            name=f"{dataset.name}/node{node.index}/{split}",
        )

    return NodeData(
        train=subset("train"),
        val=subset("val"),
        test=subset("test"),
        cluster=cluster,
        index=node.index,
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

    def drifted(
        self, fraction: float, seed: int, dataset: Dataset | None = None
    ) -> dict[int, NodeData]:
        """Shares after a drift: ``{node index: NodeData in another hidden cluster}``.

        ``round(fraction * num_partitions)`` nodes, chosen with ``seed``, keep their
        examples and splits but take another cluster's transform (see ``drift``).
        Raises ``ValueError`` for a ``fraction`` outside (0, 1], a non-clustered spec or
        fewer than 2 clusters; ``DatasetError`` for missing files.
        """
        if self.scheme != CLUSTERED:
            raise ValueError(f"drift needs the clustered scheme, not {self.scheme!r}")
        return drift(
            dataset if dataset is not None else load_dataset(self.dataset),
            self.num_partitions,
            seed=self.seed,
            fraction=fraction,
            drift_seed=seed,
            clusters=self.clusters,
            cluster_mode=self.cluster_mode,  # type: ignore[arg-type]  # checked by drift()
            samples_per_node=self.samples_per_node,
        )

"""Tests for node.learning.partition: disjoint, reproducible, heterogeneous splits."""

import numpy as np
import pytest
from scipy import ndimage

from node.learning.data import Dataset
from node.learning.partition import (
    MIN_SAMPLES_PER_NODE,
    NodeData,
    PartitionSpec,
    mixed_rotations,
    partition,
    rotation_degrees,
)
from tests.node.helpers import indexed_dataset


def _indices(node: NodeData) -> list[np.ndarray]:
    """The original indices of a node's train/val/test examples (pixel [0,0,0])."""
    return [split.x[:, 0, 0, 0].astype(int) for split in (node.train, node.val, node.test)]


def test_iid_splits_are_disjoint_across_nodes_and_splits() -> None:
    # Prepare
    ds = indexed_dataset(400)

    # Execute
    nodes = partition(ds, 8, "iid", seed=1)

    # Assert
    everything = np.concatenate([idx for node in nodes for idx in _indices(node)])
    assert len(everything) == len(set(everything.tolist())) == 400
    assert [node.index for node in nodes] == list(range(8))
    assert all(node.cluster == 0 for node in nodes)
    assert all(len(node.val) > 0 and len(node.test) > 0 for node in nodes)


def test_digits_sixteen_nodes_get_about_a_hundred_examples_each(digits: Dataset) -> None:
    # Execute
    nodes = partition(digits, 16, "iid", seed=0)

    # Assert
    sizes = [len(n.train) + len(n.val) + len(n.test) for n in nodes]
    assert min(sizes) >= 110 and sum(sizes) <= len(digits)
    assert all(len(n.val) == round(0.15 * s) for n, s in zip(nodes, sizes, strict=True))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "clustered"])
def test_same_seed_same_arrays_other_seed_other_arrays(scheme: str, digits: Dataset) -> None:
    # Execute
    first = partition(digits, 6, scheme, seed=7)  # type: ignore[arg-type]
    again = partition(digits, 6, scheme, seed=7)  # type: ignore[arg-type]
    other = partition(digits, 6, scheme, seed=8)  # type: ignore[arg-type]

    # Assert
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.test.y, b.test.y)
    assert any(not np.array_equal(a.train.y, c.train.y) for a, c in zip(first, other, strict=True))


def test_samples_per_node_caps_each_node(digits: Dataset) -> None:
    # Execute
    nodes = partition(digits, 5, "iid", seed=0, samples_per_node=40)

    # Assert
    assert [len(n.train) + len(n.val) + len(n.test) for n in nodes] == [40] * 5


def test_dirichlet_skews_labels_yet_feeds_every_node(digits: Dataset) -> None:
    # Execute
    skewed = partition(digits, 10, "dirichlet", seed=3, alpha=0.1)
    iid = partition(digits, 10, "iid", seed=3)

    # Assert
    def dominant_share(nodes: list[NodeData]) -> float:
        return float(np.mean([np.bincount(n.train.y).max() / len(n.train) for n in nodes]))

    assert all(len(n.train) + len(n.val) + len(n.test) >= MIN_SAMPLES_PER_NODE for n in skewed)
    assert dominant_share(skewed) > 2 * dominant_share(iid)
    everything = np.concatenate([n.train.x for n in skewed]).reshape(-1, 64)
    assert len(np.unique(everything, axis=0)) > 0.9 * len(everything)


def test_rotation_clusters_rotate_images_by_quarter_turns() -> None:
    # Prepare
    ds = indexed_dataset(400)
    lookup = {ds.x[i].tobytes(): i for i in range(len(ds))}

    # Execute
    nodes = partition(ds, 8, "clustered", seed=2, clusters=4, cluster_mode="rotation")

    # Assert
    assert [n.cluster for n in nodes] == [0, 1, 2, 3, 0, 1, 2, 3]
    for node in nodes:
        unrotated = np.rot90(node.train.x, k=-node.cluster, axes=(2, 3))
        assert all(np.ascontiguousarray(img).tobytes() in lookup for img in unrotated)
        if node.cluster:
            assert not any(img.tobytes() in lookup for img in node.train.x)


def test_label_permutation_clusters_share_one_permutation_each(digits: Dataset) -> None:
    # Prepare
    by_image = {digits.x[i].tobytes(): int(digits.y[i]) for i in range(len(digits))}

    # Execute
    nodes = partition(digits, 8, "clustered", seed=4, clusters=4, cluster_mode="label_permutation")

    # Assert
    mappings: dict[int, dict[int, int]] = {}
    for node in nodes:
        mapping = mappings.setdefault(node.cluster, {})
        for img, label in zip(node.train.x, node.train.y, strict=True):
            original = by_image[img.tobytes()]
            assert mapping.setdefault(original, int(label)) == int(label)
    assert all(k == v for k, v in mappings[0].items())
    assert all(sorted(m.values()) == list(range(10)) for m in mappings.values())
    assert len({tuple(sorted(m.items())) for m in mappings.values()}) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "shards"}, "iid, dirichlet, clustered"),
        ({"scheme": "clustered", "cluster_mode": "noise"}, "rotation, label_permutation, mixed"),
        ({"num_nodes": 1000}, "too few"),
    ],
)
def test_bad_arguments_are_explained(kwargs: dict[str, object], message: str) -> None:
    # Prepare
    args: dict[str, object] = {"num_nodes": 4, "scheme": "iid"} | kwargs

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        partition(indexed_dataset(400), seed=0, **args)  # type: ignore[arg-type]


def test_more_nodes_than_the_data_set_holds_overlap_with_samples_per_node() -> None:
    # Prepare
    dataset = indexed_dataset(400)

    # Execute
    nodes = partition(dataset, 100, "iid", seed=0, samples_per_node=20)

    # Assert
    assert len(nodes) == 100
    assert all(len(n.train) + len(n.val) + len(n.test) == 20 for n in nodes)


def _original_pixels(ds: Dataset) -> dict[bytes, int]:
    return {ds.x[i].tobytes(): i for i in range(len(ds))}


def test_four_rotation_clusters_keep_todays_exact_quarter_turn_arrays(digits: Dataset) -> None:
    # Prepare: what partition() gave before any number of clusters: rot90 per cluster
    lookup = _original_pixels(digits)

    # Execute
    nodes = partition(digits, 8, "clustered", seed=5, clusters=4, cluster_mode="rotation")

    # Assert
    for node in nodes:
        unrotated = np.ascontiguousarray(np.rot90(node.train.x, k=-node.cluster, axes=(2, 3)))
        assert all(img.tobytes() in lookup for img in unrotated)


@pytest.mark.parametrize(("k", "step"), [(2, 90), (3, 90), (6, 60), (8, 45)])
def test_k_rotation_clusters_turn_images_by_quarter_turns_then_360_over_k(
    digits: Dataset, k: int, step: int
) -> None:
    # Execute
    nodes = partition(digits, 2 * k, "clustered", seed=1, clusters=k, cluster_mode="rotation")
    plain = partition(digits, 2 * k, "clustered", seed=1, clusters=1)

    # Assert: each node's images are its plain images turned by cluster * 360 / k degrees
    for node, base in zip(nodes, plain, strict=True):
        assert node.cluster == node.index % k
        angle = node.cluster * step
        expected = ndimage.rotate(base.train.x, angle, axes=(2, 3), reshape=False, order=1)
        assert np.allclose(node.train.x, expected, atol=1e-5)
        assert np.array_equal(node.train.y, base.train.y)
        assert node.train.x.shape == base.train.x.shape
    assert not np.allclose(nodes[1].train.x, plain[1].train.x)  # cluster 1 is turned


def test_scipy_quarter_turn_agrees_with_rot90_so_angles_share_one_direction(
    digits: Dataset,
) -> None:
    # Execute
    turned = ndimage.rotate(digits.x[:20], 90, axes=(2, 3), reshape=False, order=1)

    # Assert
    assert np.allclose(turned, np.rot90(digits.x[:20], k=1, axes=(2, 3)), atol=1e-5)


def test_many_label_permutation_clusters_get_distinct_permutations(digits: Dataset) -> None:
    # Execute
    nodes = partition(
        digits, 24, "clustered", seed=3, clusters=12, cluster_mode="label_permutation"
    )
    plain = partition(digits, 24, "clustered", seed=3, clusters=1)

    # Assert
    mapping: dict[int, tuple[int, ...]] = {}
    for node, base in zip(nodes, plain, strict=True):
        assert np.array_equal(node.train.x, base.train.x)
        perm = dict(zip(base.train.y.tolist(), node.train.y.tolist(), strict=True))
        assert len(perm) == 10  # every class present, so the map is the whole permutation
        as_tuple = tuple(perm[c] for c in range(10))
        assert mapping.setdefault(node.cluster, as_tuple) == as_tuple
    assert mapping[0] == tuple(range(10))
    assert len(set(mapping.values())) == 12


def test_mixed_clusters_combine_rotation_and_permutation(digits: Dataset) -> None:
    # Prepare: 9 clusters -> 3 rotations (quarter turns: 0, 90, 180 degrees) x 3 permutations
    assert mixed_rotations(9) == 3 and mixed_rotations(4) == 2 and mixed_rotations(1) == 1
    assert mixed_rotations(25) == 5 and rotation_degrees(2, 5) == 144

    # Execute
    nodes = partition(digits, 18, "clustered", seed=2, clusters=9, cluster_mode="mixed")
    plain = partition(digits, 18, "clustered", seed=2, clusters=1)

    # Assert
    perms: dict[int, tuple[int, ...]] = {}
    for node, base in zip(nodes, plain, strict=True):
        angle = (node.cluster % 3) * 90
        expected = ndimage.rotate(base.train.x, angle, axes=(2, 3), reshape=False, order=1)
        assert np.allclose(node.train.x, expected, atol=1e-5)
        perm = dict(zip(base.train.y.tolist(), node.train.y.tolist(), strict=True))
        assert perms.setdefault(node.cluster // 3, tuple(sorted(perm.items()))) == tuple(
            sorted(perm.items())
        )
    assert perms[0] == tuple((c, c) for c in range(10))
    assert len(set(perms.values())) == 3


def test_too_many_permutation_clusters_for_the_classes_are_refused() -> None:
    # Execute / Assert: 4 classes have 24 permutations
    with pytest.raises(ValueError, match="only 24"):
        partition(
            indexed_dataset(400),
            30,
            "clustered",
            seed=0,
            clusters=25,
            cluster_mode="label_permutation",
        )


def test_drift_moves_a_fraction_of_nodes_to_another_cluster_with_the_same_examples(
    digits: Dataset,
) -> None:
    # Prepare
    spec = PartitionSpec(
        scheme="clustered", num_partitions=12, clusters=4, cluster_mode="label_permutation"
    )
    before = spec.split(digits)
    plain = partition(digits, 12, "clustered", seed=0, clusters=1)

    # Execute
    drifted = spec.drifted(0.25, seed=9, dataset=digits)
    again = spec.drifted(0.25, seed=9, dataset=digits)

    # Assert
    assert len(drifted) == 3
    assert {i: n.cluster for i, n in drifted.items()} == {i: n.cluster for i, n in again.items()}
    for index, node in drifted.items():
        old = before[index]
        assert node.index == index and node.cluster != old.cluster
        for split in ("train", "val", "test"):
            assert np.array_equal(getattr(node, split).x, getattr(old, split).x)
        # its labels now go through the permutation of the nodes born in its new cluster
        peer = next(n for n in before if n.cluster == node.cluster)
        perm = dict(zip(plain[peer.index].train.y.tolist(), peer.train.y.tolist(), strict=True))
        for split in ("train", "val", "test"):
            relabelled = [perm[y] for y in getattr(plain[index], split).y.tolist()]
            assert relabelled == getattr(node, split).y.tolist()


@pytest.mark.parametrize(
    ("fraction", "message"), [(0.0, "in \\(0, 1\\]"), (1.5, "in \\(0, 1\\]"), (0.01, "no node")]
)
def test_bad_drift_fraction_is_explained(digits: Dataset, fraction: float, message: str) -> None:
    # Prepare
    spec = PartitionSpec(scheme="clustered", num_partitions=8, clusters=2)

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        spec.drifted(fraction, seed=0, dataset=digits)


def test_drift_of_an_unclustered_spec_is_refused(digits: Dataset) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="clustered"):
        PartitionSpec(scheme="iid", num_partitions=8).drifted(0.5, seed=0, dataset=digits)

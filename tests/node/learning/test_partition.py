"""Tests for node.learning.partition: disjoint, reproducible, heterogeneous splits."""

import numpy as np
import pytest

from node.learning.data import Dataset
from node.learning.partition import MIN_SAMPLES_PER_NODE, NodeData, partition
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
        ({"scheme": "clustered", "cluster_mode": "noise"}, "rotation, label_permutation"),
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

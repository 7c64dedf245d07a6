"""The shared data pool: nodes' splits are views into one array pair, mapped by workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.learning.data import load_digits
from node.learning.partition import partition
from node.learning.pool import DataPool


def test_nodes_read_their_own_examples_from_one_pool_without_copies() -> None:
    data = partition(load_digits(), 5, "clustered", seed=1, clusters=2)

    pool, slices = DataPool.of(data)
    views = [pool.node(s) for s in slices]

    for original, view in zip(data, views, strict=True):
        assert (view.cluster, view.index) == (original.cluster, original.index)
        for split in ("train", "val", "test"):
            a, b = getattr(original, split), getattr(view, split)
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.y, b.y)
            assert np.shares_memory(b.x, pool.x) and np.shares_memory(b.y, pool.y)
    assert len(pool.y) == sum(len(d.train) + len(d.val) + len(d.test) for d in data)


def test_a_pool_written_once_maps_back_identical_and_is_removed_on_close(tmp_path: Path) -> None:
    data = partition(load_digits(), 3, "iid", seed=0)
    pool, slices = DataPool.of(data)

    file = pool.to_file(tmp_path)
    mapped = DataPool.open(file)
    assert pool.to_file(tmp_path) == file  # written once

    np.testing.assert_array_equal(mapped.x, pool.x)
    np.testing.assert_array_equal(mapped.y, pool.y)
    node = mapped.node(slices[2])
    node.train.x[0] = -1.0  # copy-on-write: the writer's own page, not the file's
    assert DataPool.open(file).x.min() >= 0.0
    pool.close()
    assert not Path(file.path).exists()


def test_nodes_of_different_shapes_cannot_share_a_pool() -> None:
    data = partition(load_digits(), 2, "iid", seed=0)
    other = partition(load_digits(), 2, "iid", seed=0)[1]
    other.train.x = other.train.x[:, :, :4, :4]
    with pytest.raises(ValueError, match="differ in shape"):
        DataPool.of([data[0], other])

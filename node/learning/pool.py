"""Every node's examples in one read-only array pair, shared by the processes of a run.

A network of 1,000 small nodes must not copy its data per node or per worker. A
``DataPool`` holds the examples of all nodes back to back (``x`` float32
``[N, C, H, W]``, ``y`` int64 ``[N]``); a node's train/val/test splits are basic slices of
it (numpy views, no copies), described by ``NodeSlices``. ``DataPool.to_file`` writes the
pool once to a file (on Linux under ``/dev/shm``: memory, not disk) that worker processes
map copy-on-write (``DataPool.open``): the operating system shares its pages among all
processes of the machine.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.learning.data import Dataset
from node.learning.partition import NodeData

__all__ = ["DataPool", "NodeSlices", "PoolFile"]

_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class NodeSlices:
    """Where one node's splits lie in a ``DataPool``: ``[start, stop)`` row ranges."""

    index: int
    cluster: int
    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    num_classes: int
    name: str


@dataclass(frozen=True)
class PoolFile:
    """A pool written to disk (or ``/dev/shm``): enough to map it in another process."""

    path: str
    rows: int
    shape: tuple[int, ...]  # one example's shape, e.g. (1, 28, 28)


def _unlink(path: str) -> None:
    Path(path).unlink(missing_ok=True)


class DataPool:
    """Examples of many nodes: ``x`` float32 ``[N, ...]`` and ``y`` int64 ``[N]``."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows and y {len(y)}")
        self.x = x
        self.y = y
        self._file: PoolFile | None = None

    @classmethod
    def of(cls, nodes: Sequence[NodeData]) -> tuple[DataPool, list[NodeSlices]]:
        """Pool ``nodes``' splits (copied once, in node order) and say where each lies.

        Raises ``ValueError`` when the nodes' examples differ in shape.
        """
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        slices: list[NodeSlices] = []
        row = 0
        for nd in nodes:
            ranges: dict[str, tuple[int, int]] = {}
            for split in _SPLITS:
                ds: Dataset = getattr(nd, split)
                ranges[split] = (row, row + len(ds))
                row += len(ds)
                xs.append(np.asarray(ds.x, dtype=np.float32))
                ys.append(np.asarray(ds.y, dtype=np.int64))
            slices.append(
                NodeSlices(
                    nd.index,
                    nd.cluster,
                    ranges["train"],
                    ranges["val"],
                    ranges["test"],
                    nd.train.num_classes,
                    nd.train.name.rsplit("/", 1)[0],
                )
            )
        shapes = {x.shape[1:] for x in xs if len(x)}
        if len(shapes) > 1:
            raise ValueError(f"nodes' examples differ in shape: {sorted(shapes)}")
        x = np.concatenate(xs) if xs else np.zeros((0,), np.float32)
        y = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
        return cls(x, y), slices

    def node(self, s: NodeSlices) -> NodeData:
        """Node ``s``'s data as views into this pool (no copy)."""

        def split(name: str) -> Dataset:
            start, stop = getattr(s, name)
            return Dataset(
                self.x[start:stop], self.y[start:stop], s.num_classes, f"{s.name}/{name}"
            )

        return NodeData(split("train"), split("val"), split("test"), s.cluster, s.index)

    def to_file(self, directory: Path | None = None) -> PoolFile:
        """Write the pool once (x then y, raw) under ``directory`` (default: ``/dev/shm``
        when it exists, else the temp directory); later calls return the same file.
        ``close`` removes it."""
        if self._file is None:
            base = directory or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
            fd, path = tempfile.mkstemp(prefix="mycelium-pool-", suffix=".bin", dir=base)
            with os.fdopen(fd, "wb") as f:
                f.write(np.ascontiguousarray(self.x, np.float32).tobytes())
                f.write(np.ascontiguousarray(self.y, np.int64).tobytes())
            self._file = PoolFile(path, len(self.y), tuple(self.x.shape[1:]))
            # Removed by close(), or when the pool is collected or the process exits.
            self._remove = weakref.finalize(self, _unlink, path)
        return self._file

    @classmethod
    def open(cls, f: PoolFile) -> DataPool:
        """Map a pool written by ``to_file`` copy-on-write: pages are shared among the
        processes that map it, and a write stays private to the writer."""
        rows = f.rows
        x_bytes = rows * int(np.prod(f.shape, dtype=np.int64)) * 4
        x = np.memmap(f.path, np.float32, "c", 0, (rows, *f.shape))
        y = np.memmap(f.path, np.int64, "c", x_bytes, (rows,))
        return cls(x, y)

    def close(self) -> None:
        """Remove the file ``to_file`` wrote (the pool itself stays usable)."""
        if self._file is not None:
            self._remove()
            self._file = None

"""A node's learner: its weights in flat buffers and its data; trains and evaluates them.

Between calls a learner holds no torch module, only its ``state_dict`` parked in one
contiguous numpy buffer per dtype (float32 for our models; 0.22 MB for the Fashion-MNIST
CNN's 54k parameters): a thousand learners need no thousand modules. While it trains or
evaluates it borrows a module of its architecture from a per-thread workspace, loads the
buffer into it, runs, and (train only) writes the result back. A thread's workspace lends
each module to one borrower at a time, and no module crosses threads: two threads training
one torch model at once crashed the process (DESIGN.md, pitfalls).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from node.errors import WeightsMismatchError
from node.learning.data import Dataset
from node.learning.partition import NodeData

__all__ = [
    "LOSS",
    "NUM_EXAMPLES",
    "EvalResult",
    "Learner",
    "Split",
    "evaluate_model",
    "load_weights",
    "model_weights",
    "sgd_epochs",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
LOSS = "loss"
NUM_EXAMPLES = "num_examples"
_EVAL_BATCH = 1024


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy loss and accuracy over ``num_examples`` examples."""

    loss: float
    accuracy: float
    num_examples: int


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(dataset.x, dtype=np.float32)), torch.from_numpy(
        np.ascontiguousarray(dataset.y, dtype=np.int64)
    )


# An architecture: the module's class, its repr (layer sizes, kernel sizes, ...) and its
# state's (name, shape, dtype) in state_dict order. Equal keys build equal modules.
_Key = tuple[type, str, tuple[tuple[str, tuple[int, ...], str], ...]]


@dataclass(frozen=True)
class _Layout:
    """Where each ``state_dict`` entry of an architecture lives in the flat buffers."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    offsets: tuple[int, ...]  # into the buffer of the entry's dtype, in elements
    sizes: tuple[tuple[np.dtype, int], ...]  # elements per dtype's buffer

    @classmethod
    def of(cls, state: dict[str, torch.Tensor]) -> _Layout:
        used: dict[np.dtype, int] = {}
        shapes, dtypes, offsets = [], [], []
        for name, tensor in state.items():
            try:
                dtype = torch.empty((), dtype=tensor.dtype).numpy().dtype
            except TypeError as exc:  # bfloat16 and the like: numpy has no such dtype
                raise ValueError(f"Tensor {name!r} has dtype {tensor.dtype}, unsupported") from exc
            shapes.append(tuple(tensor.shape))
            dtypes.append(dtype)
            offsets.append(used.get(dtype, 0))
            used[dtype] = used.get(dtype, 0) + tensor.numel()
        return cls(tuple(state), tuple(shapes), tuple(dtypes), tuple(offsets), tuple(used.items()))

    def empty(self) -> dict[np.dtype, np.ndarray]:
        """New flat buffers for this layout (uninitialised)."""
        return {dtype: np.empty(size, dtype=dtype) for dtype, size in self.sizes}

    def views(self, buffers: dict[np.dtype, np.ndarray]) -> list[np.ndarray]:
        """Each entry as an array of its shape, a view into ``buffers``."""
        return [
            buffers[dtype][offset : offset + math.prod(shape)].reshape(shape)
            for shape, dtype, offset in zip(self.shapes, self.dtypes, self.offsets, strict=True)
        ]

    def check(self, weights: list[np.ndarray]) -> list[np.ndarray]:
        """``weights`` as arrays, after checking their count and shapes against this layout.

        Raises ``WeightsMismatchError`` naming the first difference.
        """
        if len(weights) != len(self.names):
            raise WeightsMismatchError(
                f"Got {len(weights)} arrays for a model with {len(self.names)} tensors"
            )
        arrays = [np.asarray(w) for w in weights]
        for name, array, shape in zip(self.names, arrays, self.shapes, strict=True):
            if tuple(array.shape) != shape:
                raise WeightsMismatchError(
                    f"Tensor {name!r}: got shape {tuple(array.shape)}, model has {shape}"
                )
        return arrays


@dataclass
class _Slot:
    """A workspace module and its ``state_dict`` tensors (they share its storage)."""

    module: nn.Module
    tensors: list[torch.Tensor]


class _Workspace:
    """Modules to borrow, per thread and architecture; one template per architecture.

    A borrower gets a module no one else holds: each thread has its own free list per
    architecture, and a nested borrow on one thread gets a second module. A thread's
    modules go with the thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[_Key, _Key] = {}
        self._templates: dict[_Key, nn.Module] = {}
        self._layouts: dict[_Key, _Layout] = {}
        self._local = threading.local()

    def register(self, model: nn.Module) -> tuple[_Key, _Layout]:
        """The architecture of ``model`` (kept as its template when new) and its layout."""
        state = model.state_dict()
        signature = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in state.items())
        key: _Key = (type(model), repr(model), signature)
        with self._lock:
            if key not in self._templates:
                self._keys[key] = key
                self._layouts[key] = _Layout.of(state)
                self._templates[key] = copy.deepcopy(model)
            # The stored key: a thousand learners hold one repr string, not a thousand.
            return self._keys[key], self._layouts[key]

    @contextmanager
    def borrow(self, key: _Key) -> Iterator[_Slot]:
        """A module of architecture ``key`` for this thread alone until the block ends."""
        free: dict[_Key, list[_Slot]] = self._local.__dict__.setdefault("free", {})
        slots = free.setdefault(key, [])
        if slots:
            slot = slots.pop()
        else:
            with self._lock:
                module = copy.deepcopy(self._templates[key])
            slot = _Slot(module, list(module.state_dict().values()))
        try:
            yield slot
        finally:
            slots.append(slot)


_WORKSPACE = _Workspace()


class Learner:
    """Trains and evaluates one model on one node's data.

    ``model`` gives the architecture and the initial weights: the learner copies its
    state into flat buffers and keeps no reference to it (see the module docstring).
    Modules are rebuilt from their class, repr and state: a model whose forward pass
    depends on anything else is not supported. Every method holds the learner's lock
    while it reads or writes the buffers; ``get_weights`` hands out copies.
    ``epochs_done``: epochs this learner's weights have already been trained for (the
    next epoch's shuffle is seeded with it); give it to rebuild a learner elsewhere.
    Raises ``ValueError`` for a ``batch_size`` below 1, a negative ``epochs_done`` or a
    state tensor of a dtype numpy lacks.
    """

    def __init__(
        self,
        model: nn.Module,
        data: NodeData,
        *,
        learning_rate: float = 0.05,
        batch_size: int = 32,
        epochs: int = 1,
        seed: int = 0,
        momentum: float = 0.9,
        epochs_done: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if epochs_done < 0:
            raise ValueError(f"epochs_done must be at least 0, got {epochs_done}")
        self.data = data
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.momentum = momentum
        self._lock = threading.RLock()
        self._epochs_done = epochs_done
        self._splits = {
            "train": _tensors(data.train),
            "val": _tensors(data.val),
            "test": _tensors(data.test),
        }
        self._key, self._layout = _WORKSPACE.register(model)
        self._buffers = self._layout.empty()
        with torch.no_grad():
            for view, tensor in zip(
                self._layout.views(self._buffers), model.state_dict().values(), strict=True
            ):
                np.copyto(view, tensor.detach().cpu().numpy())
        self.weight_names: list[str] = list(self._layout.names)

    @property
    def num_train_examples(self) -> int:
        """Number of examples ``train`` runs over per epoch."""
        return len(self.data.train)

    @property
    def epochs_done(self) -> int:
        """Epochs of training these weights have had in this learner (and before it, as
        given to the constructor); the next epoch's shuffle is seeded from it."""
        return self._epochs_done

    @epochs_done.setter
    def epochs_done(self, value: int) -> None:
        with self._lock:
            self._epochs_done = value

    def get_weights(self) -> list[np.ndarray]:
        """Return copies of the model's state, in ``state_dict`` order."""
        with self._lock:
            return [view.copy() for view in self._layout.views(self._buffers)]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Load ``weights`` (``state_dict`` order; each cast to its tensor's dtype).

        Raises ``WeightsMismatchError`` when the count or a shape differs; the weights are
        then unchanged.
        """
        arrays = self._layout.check(weights)
        with self._lock:
            for view, array in zip(self._layout.views(self._buffers), arrays, strict=True):
                # torch casts as load_state_dict did (float64 -> float32, nearest).
                torch.from_numpy(view).copy_(torch.as_tensor(array))

    @contextmanager
    def module(self, weights: list[np.ndarray] | None = None) -> Iterator[nn.Module]:
        """A module of this learner's architecture holding its weights (or ``weights``),
        this thread's alone until the block ends. Changes made to it are discarded.

        Raises ``WeightsMismatchError`` when ``weights`` do not fit the architecture.
        """
        with _WORKSPACE.borrow(self._key) as slot:
            self._load(slot, weights)
            yield slot.module

    def _load(self, slot: _Slot, weights: list[np.ndarray] | None) -> None:
        """Copy the learner's weights, or the checked ``weights``, into ``slot``'s module."""
        with torch.no_grad():
            if weights is None:
                with self._lock:
                    views = self._layout.views(self._buffers)
                    for tensor, view in zip(slot.tensors, views, strict=True):
                        tensor.copy_(torch.from_numpy(view))
            else:
                for tensor, array in zip(slot.tensors, self._layout.check(weights), strict=True):
                    tensor.copy_(torch.as_tensor(array))

    def train(self, epochs: int | None = None) -> dict[str, float]:
        """Run SGD for ``epochs`` (default: the learner's) and return loss and num_examples.

        Shuffling is seeded from the learner's seed and how many epochs it has run, so
        two learners built alike train alike.
        """
        epochs = self.epochs if epochs is None else epochs
        x, y = self._splits["train"]
        n = len(y)
        with self._lock, _WORKSPACE.borrow(self._key) as slot:
            self._load(slot, None)
            mean_loss = sgd_epochs(
                slot.module,
                x,
                y,
                learning_rate=self.learning_rate,
                batch_size=self.batch_size,
                epochs=epochs,
                seed=self.seed,
                first_epoch=self._epochs_done,
                momentum=self.momentum,
            )
            slot.module.zero_grad(set_to_none=True)  # the next borrower starts clean
            for view, tensor in zip(self._layout.views(self._buffers), slot.tensors, strict=True):
                np.copyto(view, tensor.numpy())
            self._epochs_done += epochs
        logger.debug("Node %d trained %d epochs: loss %.4f", self.data.index, epochs, mean_loss)
        return {LOSS: mean_loss, NUM_EXAMPLES: float(n)}

    def evaluate(self, split: Split = "val", weights: list[np.ndarray] | None = None) -> EvalResult:
        """Evaluate on the node's ``split``; with ``weights``, evaluate those instead.

        Given weights go into a borrowed module, so the learner's own weights are left
        exactly as they were. Raises ``ValueError`` for an unknown or empty split and
        ``WeightsMismatchError`` when ``weights`` do not fit.
        """
        if split not in self._splits:
            raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(self._splits)}")
        x, y = self._splits[split]
        if len(y) == 0:
            raise ValueError(f"Node {self.data.index} has no examples in its {split!r} split")
        with self.module(weights) as model:
            return evaluate_model(model, x, y)


def model_weights(model: nn.Module) -> list[np.ndarray]:
    """Copies of ``model``'s state as arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def load_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load ``weights`` (one array per ``state_dict`` entry, in order) into ``model``.

    Each array is cast to its tensor's dtype. Raises ``WeightsMismatchError`` when the
    count or a shape differs; the model is then unchanged.
    """
    state = model.state_dict()
    names = list(state)
    if len(weights) != len(names):
        raise WeightsMismatchError(
            f"Got {len(weights)} arrays for a model with {len(names)} tensors"
        )
    new_state = {}
    for name, array in zip(names, weights, strict=True):
        if tuple(array.shape) != tuple(state[name].shape):
            raise WeightsMismatchError(
                f"Tensor {name!r}: got shape {tuple(array.shape)}, "
                f"model has {tuple(state[name].shape)}"
            )
        new_state[name] = torch.as_tensor(np.asarray(array)).to(state[name].dtype)
    model.load_state_dict(new_state)


def sgd_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    seed: int,
    first_epoch: int = 0,
    momentum: float = 0.9,
) -> float:
    """Train ``model`` in place with SGD for ``epochs`` passes over ``(x, y)``; the mean loss.

    ``x``: float32 inputs, ``[N, ...]`` as the model takes them; ``y``: int64 class labels,
    ``[N]``. Epoch ``e`` shuffles with ``(seed, first_epoch + e)``, so equal calls train
    alike. The caller owns the model (no two threads may train one model at once).
    Returns the mean cross-entropy over every example seen (0.0 when there were none).
    """
    n = len(y)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    total_loss, seen = 0.0, 0
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, first_epoch + epoch])
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total_loss += float(loss.item()) * len(idx)
            seen += len(idx)
    return total_loss / seen if seen else 0.0


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` (``y``: int64, ``[N]``, N > 0)."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), _EVAL_BATCH):
            xb, yb = x[start : start + _EVAL_BATCH], y[start : start + _EVAL_BATCH]
            logits = model(xb)
            total_loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    n = len(y)
    return EvalResult(loss=total_loss / n, accuracy=correct / n, num_examples=n)

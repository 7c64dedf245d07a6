"""A node's learner: owns one torch model and its data; trains and evaluates it."""

from __future__ import annotations

import copy
import logging
import threading
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


class Learner:
    """Trains and evaluates one model on one node's data.

    The learner owns its model: two threads training one torch model at once can
    crash the process, so every method holds the learner's lock, and
    ``get_weights`` hands out copies. Do not share the model with anyone else.
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
        self.model = model
        self.data = data
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.momentum = momentum
        self._lock = threading.RLock()
        self._scratch: nn.Module | None = None
        self._epochs_done = epochs_done
        self._splits = {
            "train": _tensors(data.train),
            "val": _tensors(data.val),
            "test": _tensors(data.test),
        }
        self.weight_names: list[str] = list(model.state_dict().keys())

    @property
    def num_train_examples(self) -> int:
        """Number of examples ``train`` runs over per epoch."""
        return len(self.data.train)

    @property
    def epochs_done(self) -> int:
        """Epochs trained so far; the next epoch's shuffle is seeded from it."""
        return self._epochs_done

    @epochs_done.setter
    def epochs_done(self, value: int) -> None:
        with self._lock:
            self._epochs_done = value

    def get_weights(self) -> list[np.ndarray]:
        """Return copies of the model's state, in ``state_dict`` order."""
        with self._lock:
            return model_weights(self.model)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Load ``weights`` (``state_dict`` order) into the model."""
        with self._lock:
            load_weights(self.model, weights)

    def train(self, epochs: int | None = None) -> dict[str, float]:
        """Run SGD for ``epochs`` (default: the learner's) and return loss and num_examples.

        Shuffling is seeded from the learner's seed and how many epochs it has run, so
        two learners built alike train alike.
        """
        epochs = self.epochs if epochs is None else epochs
        x, y = self._splits["train"]
        n = len(y)
        with self._lock:
            mean_loss = sgd_epochs(
                self.model,
                x,
                y,
                learning_rate=self.learning_rate,
                batch_size=self.batch_size,
                epochs=epochs,
                seed=self.seed,
                first_epoch=self._epochs_done,
                momentum=self.momentum,
            )
            self._epochs_done += epochs
        logger.debug("Node %d trained %d epochs: loss %.4f", self.data.index, epochs, mean_loss)
        return {LOSS: mean_loss, NUM_EXAMPLES: float(n)}

    def evaluate(self, split: Split = "val", weights: list[np.ndarray] | None = None) -> EvalResult:
        """Evaluate on the node's ``split``; with ``weights``, evaluate those instead.

        Given weights go into a scratch copy of the module, so the learner's own
        model is left exactly as it was.
        """
        if split not in self._splits:
            raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(self._splits)}")
        x, y = self._splits[split]
        if len(y) == 0:
            raise ValueError(f"Node {self.data.index} has no examples in its {split!r} split")
        with self._lock:
            model = self.model
            if weights is not None:
                if self._scratch is None:
                    self._scratch = copy.deepcopy(self.model)
                load_weights(self._scratch, weights)
                model = self._scratch
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

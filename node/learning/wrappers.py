"""Framework wrappers: one small protocol over a model of any framework, trained on arrays.

A ``ModelWrapper`` is what gossip needs of a model: its weights as float32 arrays (get and
set, in a fixed order), one training pass over ``(x, y)`` and an evaluation on ``(x, y)``.
``PyTorchModel`` wraps an ``nn.Module`` (SGD with momentum, cross-entropy on logits);
``KerasModel`` wraps a Keras 3 model. Keras is imported only by ``KerasModel`` and
``load_keras``; without TensorFlow, ``choose_keras_backend`` points Keras at its torch
backend (``KERAS_BACKEND=torch``) unless the variable is already set.

``labelled_arrays`` checks the ``(x, y)`` a user hands in and ``split_arrays`` holds out a
validation share of them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from node.errors import WeightsMismatchError
from node.learning.learner import LOSS, NUM_EXAMPLES, evaluate_model, sgd_epochs

__all__ = [
    "ACCURACY",
    "VAL_FRACTION",
    "KerasModel",
    "LabelledArrays",
    "ModelWrapper",
    "PyTorchModel",
    "TrainingConfig",
    "choose_keras_backend",
    "labelled_arrays",
    "load_keras",
    "split_arrays",
]

logger = logging.getLogger(__name__)

ACCURACY = "accuracy"
KERAS_BACKEND = "KERAS_BACKEND"
# The share of a node's (x, y) held out to measure the accuracy it reports.
VAL_FRACTION = 0.2
_EVAL_BATCH = 1024


@dataclass(frozen=True)
class TrainingConfig:
    """Local training: ``epochs`` passes of mini-batches of ``batch_size`` at ``learning_rate``."""

    batch_size: int = 32
    epochs: int = 1
    learning_rate: float = 0.05

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 0 or not self.learning_rate > 0:
            raise ValueError(
                "TrainingConfig needs batch_size >= 1, epochs >= 0 and learning_rate > 0, got "
                f"batch_size={self.batch_size}, epochs={self.epochs}, "
                f"learning_rate={self.learning_rate}"
            )


@runtime_checkable
class ModelWrapper(Protocol):
    """A model of any framework as gossip uses it.

    ``get_weights``: copies of every weight as float32 arrays, always in the same order and
    shapes. ``set_weights``: load such a list (``WeightsMismatchError`` when the count or a
    shape differs). ``train(x, y, config)``: ``config.epochs`` passes over ``x``
    (``[N, ...]`` float32) and ``y`` (``[N]`` int64 class labels); returns at least
    ``loss`` (mean cross-entropy) and ``num_examples``. ``evaluate(x, y)``: ``accuracy``
    (in [0, 1]), ``loss`` and ``num_examples``, leaving the weights as they were.
    """

    def get_weights(self) -> list[np.ndarray]: ...
    def set_weights(self, weights: Sequence[np.ndarray]) -> None: ...
    def train(self, x: np.ndarray, y: np.ndarray, config: TrainingConfig) -> dict[str, float]: ...
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]: ...


def _check_shapes(weights: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]) -> None:
    if len(weights) != len(shapes):
        raise WeightsMismatchError(
            f"Got {len(weights)} arrays for a model with {len(shapes)} weights"
        )
    for i, (array, shape) in enumerate(zip(weights, shapes, strict=True)):
        if tuple(np.shape(array)) != tuple(shape):
            raise WeightsMismatchError(
                f"Weight {i}: got shape {tuple(np.shape(array))}, model has {tuple(shape)}"
            )


class PyTorchModel:
    """A torch ``nn.Module`` classifier as a ``ModelWrapper``; weights in ``state_dict`` order.

    ``module`` maps ``[N, ...]`` float32 inputs to ``[N, classes]`` logits. Training is
    SGD with momentum 0.9 on cross-entropy, shuffled from ``seed``. The wrapper owns the
    module: every method holds its lock (two threads training one torch model can crash
    the process). Floating weights travel as float32 and are cast back to each tensor's
    dtype on ``set_weights``.
    """

    def __init__(self, module: nn.Module, device: str = "cpu", *, seed: int = 0) -> None:
        self.module = module.to(device)
        self.device = torch.device(device)
        self.seed = seed
        self._epochs_done = 0
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"PyTorchModel({type(self.module).__name__}, device={str(self.device)!r})"

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the ``state_dict`` tensors as arrays (float32 for floating ones)."""
        with self._lock:
            out = []
            for tensor in self.module.state_dict().values():
                array = tensor.detach().cpu().numpy().copy()
                out.append(array.astype(np.float32) if tensor.is_floating_point() else array)
            return out

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Load ``weights`` (``state_dict`` order); ``WeightsMismatchError`` leaves it unchanged."""
        with self._lock:
            state = self.module.state_dict()
            _check_shapes(weights, [tuple(t.shape) for t in state.values()])
            self.module.load_state_dict(
                {
                    name: torch.as_tensor(np.asarray(array)).to(tensor.dtype)
                    for (name, tensor), array in zip(state.items(), weights, strict=True)
                }
            )

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)
        yt = torch.as_tensor(np.ascontiguousarray(y, dtype=np.int64), device=self.device)
        return xt, yt

    def train(self, x: np.ndarray, y: np.ndarray, config: TrainingConfig) -> dict[str, float]:
        """``config.epochs`` SGD passes over ``(x, y)``; returns ``loss`` and ``num_examples``."""
        xt, yt = self._tensors(x, y)
        with self._lock:
            loss = sgd_epochs(
                self.module,
                xt,
                yt,
                learning_rate=config.learning_rate,
                batch_size=config.batch_size,
                epochs=config.epochs,
                seed=self.seed,
                first_epoch=self._epochs_done,
            )
            self._epochs_done += config.epochs
        return {LOSS: loss, NUM_EXAMPLES: float(len(y))}

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``accuracy``, ``loss`` (mean cross-entropy) and ``num_examples`` on ``(x, y)``."""
        xt, yt = self._tensors(x, y)
        with self._lock:
            result = evaluate_model(self.module, xt, yt)
        return {ACCURACY: result.accuracy, LOSS: result.loss, NUM_EXAMPLES: float(len(y))}


def choose_keras_backend() -> str | None:
    """Point Keras at its torch backend when TensorFlow is absent and none is chosen.

    Sets ``KERAS_BACKEND=torch`` unless the variable is set or TensorFlow is installed;
    only has an effect before Keras is first imported. Returns the variable's value.
    """
    if KERAS_BACKEND not in os.environ and importlib.util.find_spec("tensorflow") is None:
        os.environ[KERAS_BACKEND] = "torch"
    return os.environ.get(KERAS_BACKEND)


def load_keras() -> Any:
    """The ``keras`` module (Keras 3), after ``choose_keras_backend``.

    Raises ``ImportError`` naming the extra to install when Keras is missing.
    """
    choose_keras_backend()
    try:
        import keras
    except ImportError as exc:
        raise ImportError("KerasModel needs Keras 3: pip install 'mycelium-net[keras]'") from exc
    return keras


class KerasModel:
    """A Keras 3 classifier as a ``ModelWrapper``; weights in ``model.get_weights()`` order.

    ``model`` maps ``[N, ...]`` float32 inputs to ``[N, classes]`` class scores: softmax
    probabilities when its last layer's activation is softmax, else logits (say which with
    ``from_logits``). A model the user compiled trains with its own optimizer and loss;
    an uncompiled one is compiled with SGD (momentum 0.9, the config's learning rate) and
    sparse categorical cross-entropy. Every method holds the wrapper's lock.
    """

    def __init__(self, model: Any, *, from_logits: bool | None = None) -> None:
        keras = load_keras()
        if not isinstance(model, keras.Model):
            raise TypeError(f"KerasModel wraps a keras.Model, got {type(model).__name__}")
        self.model = model
        if from_logits is None:
            last = model.layers[-1] if model.layers else None
            activation = getattr(last, "activation", None)
            from_logits = activation is not keras.activations.softmax
        self.from_logits = from_logits
        self._user_compiled = bool(getattr(model, "compiled", False))
        self._compiled_rate: float | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"KerasModel({self.model.name!r}, from_logits={self.from_logits})"

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the model's weights as float32 arrays."""
        with self._lock:
            return [np.array(w, dtype=np.float32) for w in self.model.get_weights()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Load ``weights``; ``WeightsMismatchError`` (count or shape) leaves it unchanged."""
        with self._lock:
            _check_shapes(weights, [tuple(w.shape) for w in self.model.weights])
            self.model.set_weights([np.asarray(w) for w in weights])

    def _compile_for(self, config: TrainingConfig) -> None:
        if self._user_compiled or self._compiled_rate == config.learning_rate:
            return
        keras = load_keras()
        self.model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=self.from_logits),
        )
        self._compiled_rate = config.learning_rate

    def train(self, x: np.ndarray, y: np.ndarray, config: TrainingConfig) -> dict[str, float]:
        """``config.epochs`` passes of ``model.fit``; returns the last epoch's ``loss``."""
        with self._lock:
            self._compile_for(config)
            history = self.model.fit(
                np.asarray(x, dtype=np.float32),
                np.asarray(y, dtype=np.int64),
                batch_size=config.batch_size,
                epochs=config.epochs,
                shuffle=True,
                verbose=0,
            )
        losses = history.history.get(LOSS) or [float("nan")]
        return {LOSS: float(losses[-1]), NUM_EXAMPLES: float(len(y))}

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``accuracy``, ``loss`` (mean cross-entropy) and ``num_examples`` on ``(x, y)``."""
        with self._lock:
            scores = np.asarray(
                self.model.predict(
                    np.asarray(x, dtype=np.float32), batch_size=_EVAL_BATCH, verbose=0
                ),
                dtype=np.float64,
            )
        labels = np.asarray(y, dtype=np.int64)
        if self.from_logits:
            shifted = scores - scores.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        else:
            log_probs = np.log(np.clip(scores, 1e-12, 1.0))
        loss = float(-log_probs[np.arange(len(labels)), labels].mean())
        accuracy = float((scores.argmax(axis=1) == labels).mean())
        return {ACCURACY: accuracy, LOSS: loss, NUM_EXAMPLES: float(len(labels))}


# --- the arrays a user hands in ------------------------------------------------------


@dataclass(frozen=True)
class LabelledArrays:
    """Inputs ``x`` (float32, ``[N, ...]``) and integer class labels ``y`` (int64, ``[N]``)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.y)


def _as_array(value: object, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{what} must be a NumPy array or a torch tensor, got {type(value).__name__}")


def labelled_arrays(x: object, y: object) -> LabelledArrays:
    """Check ``(x, y)`` as a user's training data and return them as float32 / int64 arrays.

    ``x``: NumPy array or torch tensor ``[N, ...]`` of numbers, all finite; ``y``: ``[N]``
    integer class labels (an integer dtype, values >= 0). Raises ``ValueError`` naming
    the problem: not arrays, no examples, X rows != y rows, y not 1-D integer labels,
    non-numeric or non-finite X.
    """
    xa, ya = _as_array(x, "X"), _as_array(y, "y")
    if xa.ndim == 0 or len(xa) == 0:
        raise ValueError("X is empty: training needs at least one example")
    if ya.ndim != 1:
        raise ValueError(f"y must be 1-D class labels, got shape {ya.shape}")
    if len(xa) != len(ya):
        raise ValueError(f"X has {len(xa)} rows but y has {len(ya)}: they must match")
    if not np.issubdtype(ya.dtype, np.integer):
        raise ValueError(f"y must be integer class labels, got dtype {ya.dtype}")
    if ya.min() < 0:
        raise ValueError(f"y must be class labels >= 0, got {int(ya.min())}")
    if not (np.issubdtype(xa.dtype, np.number) or xa.dtype == np.bool_):
        raise ValueError(f"X must hold numbers, got dtype {xa.dtype}")
    xf = np.ascontiguousarray(xa, dtype=np.float32)
    if not np.isfinite(xf).all():
        raise ValueError("X holds NaN or infinite values")
    return LabelledArrays(xf, np.ascontiguousarray(ya, dtype=np.int64))


def split_arrays(
    data: LabelledArrays, val_fraction: float = VAL_FRACTION, *, seed: int = 0
) -> tuple[LabelledArrays, LabelledArrays]:
    """(train, validation): a seeded random ``val_fraction`` of the examples held out.

    At least one example goes to each side; ``ValueError`` when there are fewer than two.
    """
    n = len(data)
    if n < 2:
        raise ValueError(f"need at least 2 examples to hold one out for validation, got {n}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return LabelledArrays(data.x[train], data.y[train]), LabelledArrays(data.x[val], data.y[val])

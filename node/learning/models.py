"""Small torch models for the offline data sets, built deterministically from a seed."""

from __future__ import annotations

import torch
from torch import nn

from node.learning.data import DIGITS, FASHION

__all__ = ["MODEL_NAMES", "DigitsMLP", "FashionCNN", "build_model"]

_NUM_CLASSES = 10


class DigitsMLP(nn.Module):
    """A one-hidden-layer perceptron for 8x8 digits (``[N, 1, 8, 8]``)."""

    def __init__(self, num_classes: int = _NUM_CLASSES, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * 8, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        out: torch.Tensor = self.net(x)
        return out


class FashionCNN(nn.Module):
    """Two conv layers and two linear layers for 28x28 images, quick on a CPU."""

    def __init__(self, num_classes: int = _NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out


MODEL_NAMES: dict[str, type[nn.Module]] = {DIGITS: DigitsMLP, FASHION: FashionCNN}


def build_model(dataset_name: str, seed: int) -> nn.Module:
    """Build the model for ``dataset_name`` with weights initialised from ``seed``.

    The global torch random state is left as it was.
    """
    if dataset_name not in MODEL_NAMES:
        raise ValueError(
            f"No model for data set {dataset_name!r}; choose one of {', '.join(MODEL_NAMES)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODEL_NAMES[dataset_name]()

"""Attacking members, for studying how a group stands up to them (benchmarks, tests).

An ``AdversarialMember`` takes part in group rounds like any ``GroupMember`` but sends a
poisoned update. The kinds are the usual ones in the robust-aggregation literature
(Blanchard et al. 2017, "Machine learning with adversaries"; Fang et al. 2020, "Local
model poisoning attacks"):

- ``label_flip``: trains honestly on data whose labels were permuted (data poisoning);
- ``sign_flip``: sends ``start - scale * (trained - start)``: its update reversed, scaled;
- ``noise``: sends its trained weights plus Gaussian noise of standard deviation ``scale``;
- ``nan``: sends weights that are all NaN;
- ``huge_count``: sends the sign-flipped update and claims ``1e12`` training examples.

Evaluations are answered honestly: the attacks are on the model, not on the reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from node.federation.round import GroupMember, MemberUpdate, PerformanceReporter
from node.learning.data import Dataset
from node.learning.learner import Learner
from node.learning.partition import NodeData
from node.rejections import Rejections

__all__ = ["ATTACKS", "AdversarialMember", "flip_labels"]

LABEL_FLIP = "label_flip"
SIGN_FLIP = "sign_flip"
NOISE = "noise"
NAN = "nan"
HUGE_COUNT = "huge_count"
ATTACKS: tuple[str, ...] = (LABEL_FLIP, SIGN_FLIP, NOISE, NAN, HUGE_COUNT)
HUGE = 10**12


def flip_labels(data: NodeData, seed: int = 0) -> NodeData:
    """``data`` with every split's labels sent through one fixed random permutation
    (a label-flipping member's data)."""
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(data.train.num_classes)

    def flipped(d: Dataset) -> Dataset:
        return dataclasses.replace(d, y=permutation[d.y].astype(np.int64))

    return dataclasses.replace(
        data, train=flipped(data.train), val=flipped(data.val), test=flipped(data.test)
    )


class AdversarialMember(GroupMember):
    """A member that sends a poisoned update of kind ``attack`` (see the module docstring).

    For ``label_flip`` build its learner on ``flip_labels(data)``; it then trains like an
    honest member. ``scale`` sets the sign flip's factor or the noise's deviation.
    Raises ``ValueError`` for an unknown attack.
    """

    def __init__(
        self,
        node_id: str,
        learner: Learner,
        attack: str,
        *,
        scale: float = 10.0,
        seed: int = 0,
        reporter: PerformanceReporter | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
        super().__init__(node_id, learner, reporter=reporter, rejections=rejections)
        self.attack = attack
        self.scale = scale
        self._rng = np.random.default_rng(seed)

    def train(self, weights: Sequence[np.ndarray], local_epochs: int) -> MemberUpdate:
        """Train as a member would, then poison what is sent."""
        honest = super().train(weights, local_epochs)
        start = [np.asarray(w) for w in weights]
        if self.attack == LABEL_FLIP:
            return honest
        if self.attack == NAN:
            sent = [np.full_like(w, np.nan) for w in honest.weights]
        elif self.attack == NOISE:
            sent = [
                (w + self._rng.normal(0.0, self.scale, w.shape)).astype(w.dtype)
                for w in honest.weights
            ]
        else:  # sign_flip, huge_count
            sent = [
                (s - self.scale * (w - s)).astype(w.dtype)
                for s, w in zip(start, honest.weights, strict=True)
            ]
        count = HUGE if self.attack == HUGE_COUNT else honest.num_examples
        return MemberUpdate(self.node_id, sent, count, honest.train_loss)

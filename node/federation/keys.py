"""Key strings of the messages a group's host and members exchange, on either transport."""

from __future__ import annotations

__all__ = [
    "ACCURACIES_KEY",
    "ACCURACY_KEY",
    "ARRAYS_KEY",
    "CONFIG_KEY",
    "EXTRA_SECONDS_KEY",
    "GROUP_ID_KEY",
    "LABELS_KEY",
    "LOCAL_EPOCHS_KEY",
    "LOSSES_KEY",
    "METRICS_KEY",
    "MODELS_KEY",
    "MODEL_KEY",
    "NODE_ID_KEY",
    "NUM_EXAMPLES_KEY",
    "OWN_ACCURACY_KEY",
    "ROUND_KEY",
    "TRAIN_LOSS_KEY",
]

# Record names inside a Flower message (message API).
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
MODEL_KEY = "model-{}"  # the j-th model of an evaluation instruction

# Config a host sends with every instruction.
ROUND_KEY = "round"
GROUP_ID_KEY = "group-id"
LOCAL_EPOCHS_KEY = "local-epochs"
MODELS_KEY = "models"  # how many models an evaluation instruction carries
LABELS_KEY = "labels"  # their labels (new, start, all, without:<member>)

# Metrics a member sends back.
NUM_EXAMPLES_KEY = "num-examples"  # the key Flower's message strategies weight by
TRAIN_LOSS_KEY = "train-loss"
NODE_ID_KEY = "node-id"
LOSSES_KEY = "losses"
ACCURACIES_KEY = "accuracies"
ACCURACY_KEY = "accuracy"
EXTRA_SECONDS_KEY = "extra-seconds"  # time spent evaluating the contribution models
OWN_ACCURACY_KEY = "own-accuracy"  # the member's own update, before aggregation

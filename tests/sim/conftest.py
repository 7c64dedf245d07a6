"""Simulator tests run torch on one thread, as `mycelium sim` does by default."""

import torch

torch.set_num_threads(1)

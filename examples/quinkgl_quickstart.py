"""QuinkGL's README quick start on Mycelium Net: the same code, only the imports differ.

Three gossip nodes in one asyncio program learn sklearn's digits (8x8 images, 64 inputs),
each from its own third of the data as NumPy arrays. They find each other through the
registry at ``MYCELIUM_REGISTRY_URL`` (start one with ``mycelium registry``), which also
gives each node's signing key to its peers. Prints each node's accuracy on the 20 % of
its data it held out.

    MYCELIUM_REGISTRY_URL=http://127.0.0.1:8000 python examples/quinkgl_quickstart.py
"""

import asyncio
import logging

import numpy as np
import torch.nn as nn
from sklearn.datasets import load_digits

# QuinkGL: from quinkgl import GossipNode, PyTorchModel, CyclonTopology, FedAvg
from node.gossip import CyclonTopology, FedAvg, GossipNode, PyTorchModel

CYCLES = 30  # QuinkGL's run_continuous runs until stopped; max_cycles bounds ours


class SimpleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
shares = np.array_split(np.random.default_rng(0).permutation(len(y)), 3)


async def run_node(name: str, share: np.ndarray) -> None:
    model = PyTorchModel(SimpleNet(), device="cpu")
    node = GossipNode(
        node_id=name,
        domain="digits",
        model=model,
        port=0,
        topology=CyclonTopology(view_size=2, shuffle_length=1),
        aggregation=FedAvg(),
    )
    await node.start()
    training_data = (X[share], y[share])
    await node.run_continuous(training_data, max_cycles=CYCLES)
    print(f"{name}: held-out accuracy {node.evaluate()['accuracy']:.3f}", flush=True)
    await node.shutdown()


async def main() -> None:
    names = ["alice", "bob", "carol"]
    await asyncio.gather(*(run_node(n, s) for n, s in zip(names, shares, strict=True)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(main())

"""``python -m node``: the same as ``mycelium node``."""

import typer

from node.cli.node import node

if __name__ == "__main__":
    typer.run(node)

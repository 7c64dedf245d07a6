"""The `mycelium` console command: one subcommand per component."""

from __future__ import annotations

import typer

from mycelium.demo_cli import demo
from node.cli.gossip import gossip
from node.cli.node import node
from node.cli.peer import peer
from registry.cli import registry
from sim.cli import sim
from viz.cli import viz

app = typer.Typer(
    help="Mycelium Net: a network of federated-learning groups.", no_args_is_help=True
)
app.command()(registry)
app.command()(demo)
app.command()(viz)
app.command()(peer)
app.command()(gossip)
app.command()(node)
app.command()(sim)


@app.callback()
def _root() -> None:
    """Mycelium Net: a network of federated-learning groups."""


def main() -> None:
    """Entry point of the `mycelium` console script."""
    app()


if __name__ == "__main__":
    main()

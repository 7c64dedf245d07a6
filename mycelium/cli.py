"""The `mycelium` console command: one subcommand per component."""

from __future__ import annotations

import typer

from node.demo_cli import demo
from registry.cli import registry

app = typer.Typer(
    help="Mycelium Net: a network of federated-learning groups.", no_args_is_help=True
)
app.command()(registry)
app.command()(demo)


@app.callback()
def _root() -> None:
    """Mycelium Net: a network of federated-learning groups."""


def main() -> None:
    """Entry point of the `mycelium` console script."""
    app()

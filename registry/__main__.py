"""`python -m registry`: the same as `mycelium registry`."""

from registry.cli import app

app(prog_name="python -m registry")

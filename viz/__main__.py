"""`python -m viz`: the same as `mycelium viz`."""

from viz.cli import app

app(prog_name="python -m viz")

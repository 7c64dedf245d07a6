"""`python demo.py [flags]`: the same as `mycelium demo`."""

import typer

from mycelium.demo_cli import demo

if __name__ == "__main__":
    typer.run(demo)

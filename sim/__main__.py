"""`python -m sim`: the step-by-step simulator."""

from sim.cli import main

main()

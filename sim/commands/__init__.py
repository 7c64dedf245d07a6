"""The simulator's commands: one module per family, assembled into one table in `table`."""

from sim.commands.completion import complete
from sim.commands.core import (
    MAX_STEPS,
    Command,
    Session,
    UsageError,
    format_nodes,
    format_table,
    split_line,
    split_line_or_keep,
)
from sim.commands.nodes import MAX_NEW_NODES
from sim.commands.stats import STATS_HEADERS, StatsLog, stats_cells
from sim.commands.table import ALIASES, COMMANDS

__all__ = [
    "ALIASES",
    "COMMANDS",
    "MAX_NEW_NODES",
    "MAX_STEPS",
    "STATS_HEADERS",
    "Command",
    "Session",
    "StatsLog",
    "UsageError",
    "complete",
    "format_nodes",
    "format_table",
    "split_line",
    "split_line_or_keep",
    "stats_cells",
]

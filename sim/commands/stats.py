"""The stats row: its printed cells, the `stats` command and the CSV / JSON Lines log."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO

from sim.commands.core import Command, Session, check_arity, format_table
from sim.state import StatsRow

__all__ = ["COMMANDS", "STATS_HEADERS", "StatsLog", "stats_cells"]

STATS_HEADERS = (
    "step",
    "time_ms",
    "nodes",
    "groups",
    "sent",
    "dropped",
    "delivered",
    "in_flight",
    "bytes",
    "mean_acc",
    "worst_acc",
)


def stats_cells(row: StatsRow) -> list[str]:
    """One stats row as printed."""
    return [
        str(row.step),
        f"{row.time_ms:g}",
        str(row.nodes),
        str(row.groups),
        str(row.sent),
        str(row.dropped),
        str(row.delivered),
        str(row.in_flight),
        str(row.bytes_sent),
        f"{row.mean_accuracy:.4f}",
        f"{row.worst_accuracy:.4f}",
    ]


class StatsLog:
    """Appends one stats row per step to a CSV file or a JSON Lines file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._fh: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh) if fmt == "csv" else None
        if self._csv:
            self._csv.writerow(STATS_HEADERS)

    def write(self, row: StatsRow) -> None:
        """Append one row and flush, so the file is readable while the simulation runs."""
        if self._csv:
            self._csv.writerow(stats_cells(row))
        else:
            self._fh.write(json.dumps(row.as_dict()) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def _stats(s: Session, args: list[str]) -> None:
    check_arity(args, 0, 0)
    for line in format_table(STATS_HEADERS, [stats_cells(s.sim.stats())]):
        s.out(line)


COMMANDS: list[Command] = [
    Command("stats", "stats", "step, groups, messages, bytes, mean/worst accuracy", _stats),
]

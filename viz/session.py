"""A visualization session: record a running network, show it live if a display exists,
and write the GIF, the final PNG and the snapshots file when it ends.

The recorder streams snapshots to the snapshots file and keeps only the latest
`keep_snapshots` in memory; the GIF and PNG are drawn from the file (`export_file`), so a
long session costs bounded memory. `run_session` runs in the calling process (the `viz`
command). `VizProcess` runs the same session in a child process, so drawing never
competes with training for the GIL.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from viz.export import (
    DEFAULT_FPS,
    DEFAULT_GIF,
    DEFAULT_MAX_BYTES,
    DEFAULT_PNG,
    ExportResult,
    FrameSource,
    export_stream,
)
from viz.frames import FrameBuilder, iter_frames
from viz.recorder import DEFAULT_KEEP, Recorder
from viz.render import DEFAULT_SIZE, Renderer
from viz.snapshot import Snapshot, iter_snapshots

__all__ = [
    "SNAPSHOTS_FILE",
    "SUMMARY_FILE",
    "VizOptions",
    "VizProcess",
    "export_file",
    "export_snapshots",
    "has_display",
    "run_session",
]

log = logging.getLogger(__name__)

SNAPSHOTS_FILE = "snapshots.jsonl"
SUMMARY_FILE = "viz_summary.json"


class _Waitable(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class _Settable(_Waitable, Protocol):
    def clear(self) -> None: ...


@dataclass
class VizOptions:
    """Where and how a session writes its outputs."""

    output: Path = Path("output")
    fps: float = DEFAULT_FPS
    interval: float = 1.0
    size: tuple[int, int] = DEFAULT_SIZE
    max_bytes: int = DEFAULT_MAX_BYTES
    live: bool | None = None  # None: a live window when a display exists
    gif_name: str = DEFAULT_GIF
    png_name: str = DEFAULT_PNG
    keep_snapshots: int = DEFAULT_KEEP  # held in memory while recording; the file has all
    ca_cert: Path | None = None  # PEM CA that an https registry's certificate chains to
    extra: dict[str, Any] = field(default_factory=dict)


def has_display() -> bool:
    """True when a window can be opened (an X11 or Wayland display is set)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _LiveWindow:
    """Shows already-rendered frames in a window; draws nothing itself, so output is identical."""

    def __init__(self, size: tuple[int, int]) -> None:
        import matplotlib.pyplot as plt

        plt.ion()
        w, h = size
        self._plt = plt
        self._fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
        self._fig.canvas.manager.set_window_title("Mycelium Net")  # type: ignore[union-attr]
        ax = self._fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        self._image = ax.imshow(np.zeros((h, w, 3), dtype=np.uint8))

    def show(self, rgb: np.ndarray) -> None:
        self._image.set_data(rgb)
        self._plt.pause(0.001)

    def pump(self) -> None:
        """Keep the window responsive between frames."""
        self._plt.pause(0.001)

    def alive(self) -> bool:
        return bool(self._plt.fignum_exists(self._fig.number))

    def close(self) -> None:
        self._plt.close(self._fig)


def export_snapshots(snapshots: Sequence[Snapshot], options: VizOptions) -> dict[str, Any]:
    """Frames from snapshots → GIF + PNG in options.output; returns (and writes) a summary."""
    if not snapshots:
        raise ValueError("no snapshots to export")
    return _export(lambda: iter_frames(snapshots), len(snapshots), snapshots[-1], options)


def export_file(path: Path, options: VizOptions) -> dict[str, Any]:
    """As export_snapshots, for the snapshots in a file, read as a stream (three passes:
    count, sample, draw), so memory does not grow with the recording's length. Raises
    ValueError when the file is not a snapshots file or holds no snapshots."""
    total, last = 0, None
    for snap in iter_snapshots(path):
        total, last = total + 1, snap
    if last is None:
        raise ValueError(f"{path} holds no snapshots")

    def frames() -> Iterator[Any]:
        return iter_frames(iter_snapshots(path))

    return _export(frames, total, last, options)


def _export(frames: FrameSource, total: int, last: Snapshot, options: VizOptions) -> dict[str, Any]:
    result: ExportResult = export_stream(
        frames,
        total,
        options.output,
        fps=options.fps,
        size=options.size,
        max_bytes=options.max_bytes,
        gif_name=options.gif_name,
        png_name=options.png_name,
    )
    summary: dict[str, Any] = {
        **result.to_json(),
        "snapshots": total,
        "final": {
            "round": last.round,
            "groups": {g.name: list(g.members) for g in last.groups},
            "nodes_active": len(last.active_nodes),
            "mean_accuracy": last.mean_accuracy,
        },
        **options.extra,
    }
    (options.output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_session(
    registry_url: str,
    options: VizOptions,
    *,
    stop: _Waitable | None = None,
    duration: float | None = None,
    on_ready: Callable[[Recorder], None] | None = None,
    poke: _Settable | None = None,
) -> dict[str, Any]:
    """Record until `stop` is set, `duration` passes or Ctrl+C; then export everything.

    The snapshots file is written as the run goes, so it survives a crash; the GIF and PNG
    are drawn from it at the end, or live in a window (and again at the end) when there is a
    display. Memory holds only the latest `options.keep_snapshots` snapshots. Raises
    RuntimeError when no snapshot could be taken.
    """
    options.output.mkdir(parents=True, exist_ok=True)
    stop_event: _Waitable = stop if stop is not None else threading.Event()
    path = options.output / SNAPSHOTS_FILE
    recorder = Recorder(
        registry_url,
        options.interval,
        path=path,
        keep=options.keep_snapshots,
        ca_cert=options.ca_cert,
    )
    live = has_display() if options.live is None else options.live
    window: _LiveWindow | None = None
    if live:
        try:
            window = _LiveWindow(options.size)
        except Exception as exc:  # no usable GUI backend: carry on headless
            log.warning("no live window (%s); recording headless", exc)
    deadline = None if duration is None else time.monotonic() + duration
    recorder.start()
    if on_ready is not None:
        on_ready(recorder)
    live_ms: list[float] = []
    try:
        if window is None:
            while not stop_event.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if poke is not None and poke.is_set():  # the caller wants this moment recorded
                    poke.clear()
                    recorder.snapshot()
                stop_event.wait(0.02 if left is None else min(0.02, left))
        else:
            builder, renderer, seen = FrameBuilder(), Renderer(options.size), 0
            while not stop_event.is_set() and window.alive():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if poke is not None and poke.is_set():
                    poke.clear()
                    recorder.snapshot()
                frame = None
                for snap in recorder.snapshots_since(seen):
                    frame = builder.add(snap)
                    seen = snap.index + 1
                if frame is not None:
                    window.show(renderer.render(frame))
                else:
                    window.pump()
                stop_event.wait(min(0.2, options.interval))
            live_ms = [1000 * t for t in renderer.timings]
    except KeyboardInterrupt:
        log.info("interrupted: writing what was recorded")
    finally:
        recorder.stop()
        if window is not None:
            window.close()
    if not recorder.taken:
        raise RuntimeError(f"no snapshot could be taken from {registry_url}")
    summary = export_file(path, options)
    summary["recorder_errors"] = recorder.errors
    if live_ms:
        summary["live_ms_per_frame"] = round(sum(live_ms) / len(live_ms), 2)
    summary["snapshots_file"] = str(path)
    (options.output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _child(
    registry_url: str, options: dict[str, Any], stop: Any, results: Any, ready: Any, poke: Any
) -> None:
    # Ctrl+C goes to the whole process group: the parent decides when the session ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    opts = VizOptions(**{**options, "output": Path(options["output"])})
    try:
        summary = run_session(
            registry_url, opts, stop=stop, on_ready=lambda _rec: ready.set(), poke=poke
        )
        results.put(("ok", summary))
    except Exception as exc:  # report to the parent rather than dying silently
        log.exception("viz session failed")
        results.put(("error", f"{type(exc).__name__}: {exc}"))


class VizProcess:
    """A session in a child process: start() when the registry is up, stop() at the end."""

    def __init__(self, registry_url: str, options: VizOptions) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that may hold torch threads
        self._stop = ctx.Event()
        self._results: Any = ctx.Queue()
        self._ready = ctx.Event()
        self._poke = ctx.Event()
        self._proc = ctx.Process(
            target=_child,
            args=(
                registry_url,
                asdict(options),
                self._stop,
                self._results,
                self._ready,
                self._poke,
            ),
            name="mycelium-viz",
            daemon=False,
        )
        self._outcome: tuple[str, Any] | None = None

    @property
    def started(self) -> bool:
        """True once start() ran."""
        return self._proc.pid is not None

    def start(self, timeout: float = 120.0) -> VizProcess:
        """Start recording; returns once the child records, so no early moment is missed."""
        self._proc.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                break  # stop() will report the child's error, if any
        return self

    def snapshot_now(self) -> None:
        """Ask the child for a snapshot at once (e.g. after each round)."""
        self._poke.set()

    def stop(self, timeout: float = 600.0) -> dict[str, Any]:
        """End the session and wait for its GIF and PNG; returns its summary (again if repeated)."""
        outcome = self._outcome
        if outcome is None:
            self._stop.set()
            outcome = self._outcome = self._results.get(timeout=timeout)
            self._proc.join(timeout=30)
        status, payload = outcome
        if status != "ok":
            raise RuntimeError(f"visualization failed: {payload}")
        result: dict[str, Any] = payload
        return result

"""Frame data → one matplotlib figure (topology, performance, statistics) → RGB pixels.

Drawing always goes through an Agg canvas of its own (no pyplot, no window backend), so
the pixels are the same with or without a display; a live window only shows them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import MaxNLocator, PercentFormatter

from viz.frames import HIGHLIGHT_FRAMES, Frame
from viz.layout import GROUP_RADIUS, LOBBY_ROWS, LOBBY_SPACING, MARGIN

__all__ = ["DEFAULT_SIZE", "PALETTE", "Renderer", "group_colour", "render_frames"]

DEFAULT_SIZE = (1280, 720)
_BASE_WIDTH_IN = 12.8  # the figure is laid out at this width; `size` only sets resolution

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#17becf",
    "#e377c2",
    "#8c564b",
    "#bcbd22",
    "#393b79",
)
BG = "#f6f7f9"
PANEL = "#ffffff"
INK = "#1d2330"
MUTED = "#6b7280"
GRID = "#e5e7eb"
NEW = "#f5b700"
EXPIRED = "#c0392b"
INACTIVE = "#9ca3af"
LOBBY_NODE = "#94a3b8"
SIBLING = "#475569"
SIBLING_STYLE = (0, (5, 3))  # dashed: a link between groups, not a move
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": PANEL, "ec": "none", "alpha": 0.8}
DASH = "\u2013"  # shown for a figure not known yet


def group_colour(index: int) -> str:
    """The colour of a group's colour index (stable for the group's life)."""
    return PALETTE[index % len(PALETTE)]


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def _clock(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fit(
    extent: tuple[float, float, float, float], ax: Axes, fig: Figure
) -> tuple[float, float, float, float]:
    """Widen the extent along one axis so it fills the panel at equal scale."""
    xmin, xmax, ymin, ymax = extent
    box = ax.get_position(original=True)
    fig_w, fig_h = fig.get_size_inches()
    panel = (box.width * fig_w) / (box.height * fig_h)
    w, h = xmax - xmin, ymax - ymin
    if w / h < panel:
        pad = (h * panel - w) / 2
        return (xmin - pad, xmax + pad, ymin, ymax)
    pad = (w / panel - h) / 2
    return (xmin, xmax, ymin - pad, ymax + pad)


def _fade(age: int) -> float:
    return max(0.25, 1.0 - age / HIGHLIGHT_FRAMES)


class Renderer:
    """Draws frames on one reusable figure; keeps the time each frame took."""

    def __init__(self, size: tuple[int, int] = DEFAULT_SIZE) -> None:
        width, height = size
        if width < 160 or height < 90:
            raise ValueError("frame size must be at least 160x90 pixels")
        self.size = (int(width), int(height))
        dpi = width / _BASE_WIDTH_IN
        self.figure = Figure(figsize=(_BASE_WIDTH_IN, height / dpi), dpi=dpi, facecolor=BG)
        self.canvas = FigureCanvasAgg(self.figure)
        self.timings: list[float] = []
        self._build()

    def _build(self) -> None:
        """Create the panels and everything that never changes, once."""
        fig = self.figure
        grid = fig.add_gridspec(
            2,
            2,
            width_ratios=(1.12, 1.0),
            height_ratios=(1.45, 1.0),
            left=0.025,
            right=0.975,
            top=0.875,
            bottom=0.07,
            wspace=0.12,
            hspace=0.32,
        )
        self._topo = fig.add_subplot(grid[:, 0])
        self._perf = fig.add_subplot(grid[0, 1])
        self._stats = fig.add_subplot(grid[1, 1])
        fig.text(
            0.025, 0.955, "Mycelium Net", fontsize=19, fontweight="bold", color=INK, va="center"
        )
        fig.text(
            0.2,
            0.953,
            "federated-learning groups · nodes move to the group whose model fits their data",
            fontsize=10,
            color=MUTED,
            va="center",
        )
        self._clock = fig.text(
            0.975, 0.955, "", fontsize=13, color=INK, va="center", ha="right", fontweight="bold"
        )

        topo = self._topo
        self._panel(topo, "Network topology")
        topo.set_aspect("equal", adjustable="box")
        topo.set_xticks([])
        topo.set_yticks([])
        handles = [
            Line2D([], [], ls="", marker="o", ms=7, mfc=PALETTE[0], mec="white", label="node"),
            Line2D([], [], ls="", marker="o", ms=10, mfc="none", mec=NEW, mew=2, label="new"),
            Line2D([], [], color=INK, lw=2, marker=">", ms=6, label="migration"),
            Line2D([], [], color=SIBLING, lw=1.6, ls=SIBLING_STYLE, label="sibling groups"),
            Line2D([], [], ls="", marker="X", ms=8, mfc=EXPIRED, mec="white", label="expired"),
            Line2D([], [], ls="", marker="x", ms=7, mec=INACTIVE, mew=1.5, label="inactive"),
        ]
        topo.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.005),
            ncol=6,
            frameon=False,
            fontsize=8.5,
            handletextpad=0.4,
            columnspacing=1.4,
        )

        perf = self._perf
        self._panel(perf, "Group accuracy per round")
        perf.set_ylim(0, 1.02)
        perf.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        perf.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        perf.set_xlabel("round", fontsize=9, color=MUTED)
        perf.tick_params(labelsize=8.5, colors=MUTED)
        perf.grid(True, color=GRID, lw=0.8)
        perf.set_axisbelow(True)

        stats = self._stats
        self._panel(stats, "Statistics")
        stats.set_xticks([])
        stats.set_yticks([])
        stats.set_xlim(0, 1)
        stats.set_ylim(0, 1)
        stats.plot([0.04, 0.96], [0.235, 0.235], color=GRID, lw=1)
        stats.text(0.05, 0.13, "best group", fontsize=8.5, color=MUTED, va="center")

        self._static = {id(a) for ax in self.figure.axes for a in ax.get_children()}

    def _clear(self) -> None:
        """Remove what the previous frame added, keeping the static parts."""
        for ax in self.figure.axes:
            for artist in ax.get_children():
                if id(artist) not in self._static:
                    artist.remove()

    @property
    def ms_per_frame(self) -> float | None:
        """Mean milliseconds per rendered frame so far."""
        return 1000 * sum(self.timings) / len(self.timings) if self.timings else None

    def render(self, frame: Frame) -> np.ndarray:
        """The frame as an (height, width, 3) uint8 array."""
        t0 = time.perf_counter()
        self.draw(frame)
        self.canvas.draw()
        rgba = np.asarray(self.canvas.buffer_rgba())
        out = np.ascontiguousarray(rgba[..., :3])
        self.timings.append(time.perf_counter() - t0)
        return out

    def draw(self, frame: Frame) -> None:
        """Put `frame` on the figure (without rasterising)."""
        self._clear()
        s = frame.stats
        self._clock.set_text(f"round {s.round}   ·   {_clock(s.elapsed)}")
        self._topology(self._topo, frame)
        self._performance(self._perf, frame)
        self._statistics(self._stats, frame)

    # --- panels -----------------------------------------------------------------------

    @staticmethod
    def _panel(ax: Axes, title: str) -> None:
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.set_title(title, loc="left", fontsize=12, fontweight="bold", color=INK, pad=8)

    def _topology(self, ax: Axes, frame: Frame) -> None:
        lay = frame.layout
        snap = frame.snapshot
        xmin, xmax, ymin, ymax = _fit(lay.extent, ax, self.figure)
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        ax.apply_aspect()
        bbox = ax.get_position()
        fig_w = self.figure.get_size_inches()[0]
        x0, x1 = ax.get_xlim()
        pts_per_unit = bbox.width * fig_w * 72 / (x1 - x0)

        def marker_area(spacing: float, scale: float = 0.78) -> float:
            d = max(2.0, spacing * scale * pts_per_unit)
            return d * d

        # The lobby: nodes in no group (not joined yet, left, or expired).
        lobby_top = lay.lobby_top
        height = LOBBY_SPACING * LOBBY_ROWS
        ax.add_patch(
            FancyBboxPatch(
                (-lay.half_width + MARGIN / 2, lobby_top - height + LOBBY_SPACING / 2),
                2 * lay.half_width - MARGIN,
                height,
                boxstyle="round,pad=0.02,rounding_size=0.05",
                fc="#f1f3f6",
                ec=GRID,
                lw=1,
                zorder=0,
            )
        )
        ax.text(
            -lay.half_width + MARGIN / 2,
            lobby_top + LOBBY_SPACING / 2 + 0.05,
            "no group (waiting, left or expired)",
            fontsize=8,
            color=MUTED,
            va="bottom",
        )

        groups = {g.id: g for g in snap.groups}
        zoom = 1.0 if lay.rings == 1 else 0.72  # labels shrink with the drawing
        for group_id, g in groups.items():
            cx, cy = lay.centre(group_id)
            colour = group_colour(lay.group_colours[group_id])
            ax.add_patch(Circle((cx, cy), GROUP_RADIUS, fc=colour, alpha=0.09, ec="none", zorder=1))
            ax.add_patch(
                Circle((cx, cy), GROUP_RADIUS, fc="none", ec=colour, lw=1.6, alpha=0.9, zorder=1)
            )
            cap = f"/{g.capacity}" if g.capacity else ""
            ax.annotate(
                f"{len(g.members)}{cap} nodes · round {g.round}",
                (cx, cy + GROUP_RADIUS),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7.5 * zoom,
                color=MUTED,
                zorder=8,
                bbox=_LABEL_BOX,
            )
            ax.annotate(
                f"{g.name}  {_pct(g.accuracy)}",
                (cx, cy + GROUP_RADIUS),
                xytext=(0, 3 + 10 * zoom),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9.5 * zoom,
                fontweight="bold",
                color=colour,
                zorder=8,
                bbox=_LABEL_BOX,
            )

        self._sibling_links(ax, frame, zoom)

        # Nodes, one scatter per (group, state) so each batch draws in one call.
        batches: dict[tuple[int | None, bool], list[tuple[float, float]]] = {}
        for n in snap.nodes:
            if n.id not in lay.positions:
                continue
            gid = lay.node_slots[n.id][0]
            batches.setdefault((gid, n.active), []).append(lay.positions[n.id])
        for (gid, active), pts in sorted(batches.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
            xs, ys = zip(*pts, strict=True)
            spacing = lay.spacing(gid)
            if not active:
                ax.scatter(
                    xs,
                    ys,
                    s=marker_area(spacing, 0.55),
                    marker="x",
                    c=INACTIVE,
                    linewidths=1.2,
                    zorder=3,
                )
                continue
            colour = LOBBY_NODE if gid is None else group_colour(lay.group_colours[gid])
            ax.scatter(
                xs,
                ys,
                s=marker_area(spacing),
                c=colour,
                edgecolors="white",
                linewidths=0.8,
                zorder=3,
            )

        # Highlights: new nodes (gold ring), expiries (red cross), migrations (arrows).
        for nid, age in sorted(frame.new_nodes.items()):
            if nid in lay.positions:
                gid = lay.node_slots[nid][0]
                x, y = lay.positions[nid]
                ax.scatter(
                    [x],
                    [y],
                    s=marker_area(lay.spacing(gid), 1.6),
                    facecolors="none",
                    edgecolors=NEW,
                    linewidths=2.0,
                    alpha=_fade(age),
                    zorder=4,
                )
        for _nid, ((x, y), age) in sorted(frame.expired.items()):
            ax.scatter(
                [x],
                [y],
                s=marker_area(lay.spacing(None), 1.2),
                marker="X",
                c=EXPIRED,
                edgecolors="white",
                linewidths=0.6,
                alpha=_fade(age),
                zorder=6,
            )
        for mark in frame.migrations:
            to = mark.migration.to_group
            colour = group_colour(lay.group_colours[to]) if to in lay.group_colours else INK
            alpha = _fade(mark.age)
            ax.add_patch(
                FancyArrowPatch(
                    mark.source,
                    mark.target,
                    connectionstyle="arc3,rad=0.28",
                    arrowstyle="-|>",
                    mutation_scale=16,
                    lw=2.4,
                    color=colour,
                    alpha=alpha,
                    zorder=7,
                    shrinkA=2,
                    shrinkB=6,
                )
            )
            ax.scatter(
                [mark.source[0]],
                [mark.source[1]],
                s=40,
                facecolors="none",
                edgecolors=colour,
                linestyle=":",
                linewidths=1.2,
                alpha=alpha,
                zorder=7,
            )
            if (
                mark.migration.node_id in lay.positions
                and lay.node_slots[mark.migration.node_id][0] == to
            ):
                x, y = lay.positions[mark.migration.node_id]
                ax.scatter(
                    [x],
                    [y],
                    s=marker_area(lay.spacing(to), 1.7),
                    facecolors="none",
                    edgecolors=INK,
                    linewidths=1.8,
                    alpha=alpha,
                    zorder=7,
                )

    @staticmethod
    def _sibling_links(ax: Axes, frame: Frame, zoom: float) -> None:
        """A dashed line between the rims of every two sibling groups, labelled with the fit."""
        lay = frame.layout
        for a, b, fit in frame.snapshot.sibling_pairs:
            if a not in lay.group_slots or b not in lay.group_slots:
                continue
            (ax_, ay), (bx, by) = lay.centre(a), lay.centre(b)
            length = math.hypot(bx - ax_, by - ay)
            if length <= 2 * GROUP_RADIUS:
                continue
            ux, uy = (bx - ax_) / length, (by - ay) / length
            start = (ax_ + ux * GROUP_RADIUS, ay + uy * GROUP_RADIUS)
            end = (bx - ux * GROUP_RADIUS, by - uy * GROUP_RADIUS)
            ax.add_line(
                Line2D(
                    [start[0], end[0]],
                    [start[1], end[1]],
                    color=SIBLING,
                    lw=1.6,
                    ls=SIBLING_STYLE,
                    alpha=0.85,
                    zorder=2,
                    gid=f"sibling-link:{a}-{b}",
                )
            )
            if fit is not None:
                ax.annotate(
                    f"fit {_pct(fit)}",
                    ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2),
                    ha="center",
                    va="center",
                    fontsize=7.5 * zoom,
                    color=SIBLING,
                    zorder=2,
                    bbox=_LABEL_BOX,
                )

    def _performance(self, ax: Axes, frame: Frame) -> None:
        lay = frame.layout
        names = {g.id: g.name for g in frame.snapshot.groups}
        last_round = 1
        for gid, series in frame.group_series.items():
            if not series:
                continue
            xs, ys = zip(*series, strict=True)
            last_round = max(last_round, xs[-1])
            ax.plot(
                xs,
                ys,
                color=group_colour(lay.group_colours[gid]),
                lw=2,
                marker="o",
                ms=3 if len(xs) < 40 else 0,
                label=names.get(gid, str(gid)),
            )
        if frame.mean_series:
            xs, ys = zip(*frame.mean_series, strict=True)
            last_round = max(last_round, xs[-1])
            ax.plot(xs, ys, color=INK, lw=1.6, ls="--", label="mean node accuracy")
        ax.set_xlim(0, max(last_round, 1) * 1.02 + 0.2)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            keep = 9
            ax.legend(
                handles[:keep] if len(handles) <= keep else [*handles[: keep - 1], handles[-1]],
                labels[:keep] if len(labels) <= keep else [*labels[: keep - 1], labels[-1]],
                loc="lower right",
                fontsize=8,
                ncol=2 if len(handles) > 4 else 1,
                frameon=True,
                framealpha=0.85,
                edgecolor=GRID,
            )
        else:
            ax.text(
                0.5,
                0.5,
                "waiting for the first round…",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color=MUTED,
                fontsize=10,
            )

    def _statistics(self, ax: Axes, frame: Frame) -> None:
        s = frame.stats
        best = DASH if s.best_group is None else f"{s.best_group}  ({_pct(s.best_accuracy)})"
        cells = [
            ("nodes active", f"{s.nodes_active} / {s.nodes_total}"),
            ("groups", str(s.groups)),
            ("migrations so far", str(s.migrations)),
            ("mean node accuracy", _pct(s.mean_accuracy)),
            ("round", str(s.round)),
            ("elapsed", _clock(s.elapsed)),
        ]
        # Two columns of three big numbers, then the best group across the bottom.
        for k, (label, value) in enumerate(cells):
            col, row = divmod(k, 3)
            x = 0.05 + 0.5 * col
            y = 0.86 - 0.25 * row
            ax.text(x, y, value, fontsize=17, fontweight="bold", color=INK, va="center")
            ax.text(x, y - 0.1, label, fontsize=8.5, color=MUTED, va="center")
        best_colour = INK
        for g in frame.snapshot.groups:
            if g.name == s.best_group and g.id in frame.layout.group_colours:
                best_colour = group_colour(frame.layout.group_colours[g.id])
                break
        ax.text(0.3, 0.13, best, fontsize=13, fontweight="bold", color=best_colour, va="center")


def render_frames(
    frames: Sequence[Frame], size: tuple[int, int] = DEFAULT_SIZE
) -> list[np.ndarray]:
    """Render every frame (convenience for tests and small runs)."""
    renderer = Renderer(size)
    return [renderer.render(f) for f in frames]

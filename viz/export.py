"""Export: frames → an animated GIF that stays under a size limit, plus a PNG of the last frame.

Frames are drawn one at a time and kept as 8-bit palette images (one byte per pixel) that
share one palette, so memory stays modest and colours do not flicker between frames. A
long session is thinned evenly (the last frame always kept) to fit `max_bytes`.
`export_stream` draws from frames made on demand (twice, in order), so a recording too long
to hold in memory exports from its file.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from PIL import Image

from viz.frames import Frame
from viz.render import DEFAULT_SIZE, Renderer

__all__ = [
    "DEFAULT_FPS",
    "DEFAULT_GIF",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_PNG",
    "ExportResult",
    "FrameSource",
    "export",
    "export_stream",
    "select_indices",
]

log = logging.getLogger(__name__)

DEFAULT_GIF = "mycelium_net_demo.gif"
DEFAULT_PNG = "mycelium_net_final.png"
DEFAULT_FPS = 4.0
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
_HEADROOM = 0.92  # aim below the limit: the estimate is per frame, the file has overhead

# Makes the same frames, in the same order, each time it is called.
FrameSource = Callable[[], Iterable[Frame]]


@dataclass(frozen=True)
class ExportResult:
    """What export wrote and what it cost."""

    gif: Path
    png: Path
    frames_total: int
    frames_written: int  # frames chosen for the GIF
    gif_frames: int  # frames in the file (Pillow merges identical neighbours)
    frame_indices: tuple[int, ...]
    gif_bytes: int
    fps: float
    size: tuple[int, int]
    ms_per_frame: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["gif"], d["png"] = str(self.gif), str(self.png)
        d["frame_indices"] = list(self.frame_indices)
        return d


def select_indices(total: int, keep: int) -> list[int]:
    """`keep` indices spread evenly over range(total), always with the first and last."""
    if total <= 0:
        return []
    keep = max(1, min(keep, total))
    if keep == 1:
        return [total - 1]
    step = (total - 1) / (keep - 1)
    return sorted({round(i * step) for i in range(keep)} | {total - 1})


def _palette_image(samples: Sequence[np.ndarray]) -> Image.Image:
    """One 255-colour palette fitted to a few sample frames (shared by every frame)."""
    mosaic = Image.fromarray(np.concatenate(list(samples), axis=0))
    return mosaic.quantize(colors=255, method=Image.Quantize.MEDIANCUT)


def _to_palette(rgb: np.ndarray, palette: Image.Image) -> Image.Image:
    return Image.fromarray(rgb).quantize(palette=palette, dither=Image.Dither.NONE)


def _encode(images: Sequence[Image.Image], fps: float) -> bytes:
    buf = io.BytesIO()
    duration = max(20, round(1000 / fps))
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=list(images[1:]),
        duration=duration,
        loop=0,
        optimize=False,
    )
    return buf.getvalue()


def _count_frames(data: bytes) -> int:
    """Frames in the encoded GIF: identical neighbours are merged into one longer frame."""
    with Image.open(io.BytesIO(data)) as im:
        return int(getattr(im, "n_frames", 1))


def export(
    frames: Sequence[Frame],
    output_dir: Path,
    *,
    fps: float = DEFAULT_FPS,
    size: tuple[int, int] = DEFAULT_SIZE,
    max_bytes: int = DEFAULT_MAX_BYTES,
    gif_name: str = DEFAULT_GIF,
    png_name: str = DEFAULT_PNG,
    renderer: Renderer | None = None,
) -> ExportResult:
    """Write the GIF of `frames` (thinned to fit `max_bytes`) and a PNG of the last frame."""
    return export_stream(
        lambda: frames,
        len(frames),
        output_dir,
        fps=fps,
        size=size,
        max_bytes=max_bytes,
        gif_name=gif_name,
        png_name=png_name,
        renderer=renderer,
    )


def export_stream(
    frames: FrameSource,
    total: int,
    output_dir: Path,
    *,
    fps: float = DEFAULT_FPS,
    size: tuple[int, int] = DEFAULT_SIZE,
    max_bytes: int = DEFAULT_MAX_BYTES,
    gif_name: str = DEFAULT_GIF,
    png_name: str = DEFAULT_PNG,
    renderer: Renderer | None = None,
) -> ExportResult:
    """As `export`, for `total` frames that `frames()` makes on demand: called twice (to
    fit the palette and the size estimate, then to draw), so only the frames chosen for
    the GIF are held, as 8-bit images. Raises ValueError when there are no frames, `fps`
    is not positive, or `frames()` yields fewer than `total`."""
    if total <= 0:
        raise ValueError("no frames to export: the recording is empty")
    if fps <= 0:
        raise ValueError("fps must be positive")
    t0 = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    renderer = renderer or Renderer(size)
    gif_path, png_path = output_dir / gif_name, output_dir / png_name

    middle = total // 2 if total > 2 else None
    kept: dict[int, Frame] = {}
    for i, frame in enumerate(frames()):
        if i == middle or i == total - 1:
            kept[i] = frame
        if i == total - 1:
            break
    if total - 1 not in kept:
        raise ValueError(f"expected {total} frames to export, got fewer")
    last = renderer.render(kept[total - 1])
    iio.imwrite(png_path, last)
    samples = [last]
    if middle is not None:
        samples.insert(0, renderer.render(kept[middle]))
    kept.clear()
    palette = _palette_image(samples)

    # Estimate bytes per frame from the densest sample, then keep what fits.
    per_frame = max(len(_encode([_to_palette(s, palette)], fps)) for s in samples)
    keep = max(1, min(total, math.floor(max_bytes * _HEADROOM / per_frame)))
    indices = select_indices(total, keep)
    if keep < total:
        log.info("thinning %s frames to %s to stay under %s bytes", total, keep, max_bytes)

    chosen = set(indices)
    images: list[Image.Image] = []
    for i, frame in enumerate(frames()):
        if i >= total - 1:
            break
        if i in chosen:
            images.append(_to_palette(renderer.render(frame), palette))
    images.append(_to_palette(last, palette))  # the last index is always chosen
    if len(images) != len(indices):
        raise ValueError(f"expected {total} frames to export, got fewer the second time")
    data = _encode(images, fps)
    # The estimate can miss (busier middle frames): thin what is rendered until it fits.
    while len(data) > max_bytes and len(images) > 1:
        ratio = max_bytes * _HEADROOM / len(data)
        sub = select_indices(len(images), max(1, min(len(images) - 1, int(len(images) * ratio))))
        images = [images[k] for k in sub]
        indices = [indices[k] for k in sub]
        data = _encode(images, fps)
    gif_path.write_bytes(data)
    return ExportResult(
        gif=gif_path,
        png=png_path,
        frames_total=total,
        frames_written=len(images),
        gif_frames=_count_frames(data),
        frame_indices=tuple(indices),
        gif_bytes=len(data),
        fps=fps,
        size=renderer.size,
        ms_per_frame=round(renderer.ms_per_frame or 0.0, 2),
        seconds=round(time.perf_counter() - t0, 3),
    )

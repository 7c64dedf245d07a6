"""The demo with live visualization: registry + nodes + a viz session in its own process.

The registry is started here (unless a URL is given) so that it outlives the nodes: the
viz session takes its last snapshot after training ends and before the registry stops.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from viz.session import VizOptions, VizProcess

if TYPE_CHECKING:
    from mycelium.demo import DemoConfig
    from node.runtime.network import RoundStats

__all__ = ["run_demo_with_viz"]


def run_demo_with_viz(
    cfg: DemoConfig, options: VizOptions, stop: threading.Event | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the demo while a child process records and draws it; returns both summaries.

    Ctrl+C ends the demo after its current round (mycelium.demo's handling); the viz session
    then writes the GIF and PNG of everything recorded.
    """
    from mycelium.demo import run_demo
    from registry.server import BackgroundRegistry
    from registry.settings import RegistrySettings

    stop = stop or threading.Event()
    registry: BackgroundRegistry | None = None
    data_dir: Path | None = None
    if cfg.registry_url is None:
        data_dir = Path(tempfile.mkdtemp(prefix="mycelium-registry-"))
        registry = BackgroundRegistry(RegistrySettings(data_dir=data_dir)).start()
        cfg.registry_url = registry.url
    session = VizProcess(cfg.registry_url, options)
    outer_finish = cfg.on_finish

    def on_finish() -> None:
        # After the last round the nodes leave their groups: end the recording first,
        # so the final frame shows the trained network.
        session.stop()
        if outer_finish is not None:
            outer_finish()

    outer_round = cfg.on_round

    def on_round(stats: RoundStats) -> None:
        session.snapshot_now()  # one frame per round, however fast rounds are
        if outer_round is not None:
            outer_round(stats)

    cfg.on_finish, cfg.on_round = on_finish, on_round
    try:
        session.start()
        summary = run_demo(cfg, stop)
    finally:
        cfg.on_finish, cfg.on_round = outer_finish, outer_round
        viz_summary = session.stop() if session.started else {}
        if registry is not None:
            registry.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
    return summary, viz_summary

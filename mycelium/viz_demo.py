"""The demo with live visualization: registry + nodes + a viz session in its own process.

The registry is started here (unless a URL is given) so that it outlives the nodes: the
viz session takes its last snapshot after training ends and before the registry stops.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


def run_demo_with_viz(
    cfg: DemoConfig, options: VizOptions, stop: threading.Event | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the demo while a child process records and draws it; returns both summaries.

    Ctrl+C ends the demo after its current round (mycelium.demo's handling); the viz session
    then writes the GIF and PNG of everything recorded. Raises what run_demo raises (bad
    flags, a registry that does not answer) before the recording starts; RuntimeError
    when the recording failed although the run did not.
    """
    from mycelium.demo import check_registry, run_demo
    from registry.server import BackgroundRegistry
    from registry.settings import RegistrySettings

    cfg.check()
    stop = stop or threading.Event()
    registry: BackgroundRegistry | None = None
    data_dir: Path | None = None
    if cfg.registry_url is not None:
        check_registry(cfg.registry_url, cfg.ca_cert)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="mycelium-registry-"))
        registry = BackgroundRegistry(RegistrySettings(data_dir=data_dir)).start()
        cfg.registry_url, cfg.registry_is_ours = registry.url, True
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
    failed = True
    try:
        session.start()
        summary = run_demo(cfg, stop)
        failed = False
    finally:
        cfg.on_finish, cfg.on_round = outer_finish, outer_round
        viz_summary: dict[str, Any] = {}
        try:
            viz_summary = session.stop() if session.started else {}
        except RuntimeError:
            if not failed:
                raise
            log.warning("the recording failed too", exc_info=True)  # the run's error wins
        if registry is not None:
            registry.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
    return summary, viz_summary

"""Run the registry inside this process on a background thread (demos, simulations)."""

from __future__ import annotations

import threading
import time

import uvicorn

from registry.main import create_app
from registry.settings import RegistrySettings

__all__ = ["BackgroundRegistry"]


class BackgroundRegistry:
    """A real uvicorn server on a loopback port (0 = a free one), in a daemon thread."""

    def __init__(self, settings: RegistrySettings, *, host: str = "127.0.0.1", port: int = 0):
        self.settings = settings
        config = uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="registry", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> BackgroundRegistry:
        """Start serving; returns once the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the registry did not start")
            time.sleep(0.02)
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Shut down and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> BackgroundRegistry:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

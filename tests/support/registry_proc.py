"""Runs `python -m registry` as a real process on a free loopback port."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from node.addresses import free_port


class RegistryProcess:
    """A registry subprocess; `url` once started; stop() sends SIGTERM and waits."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None = None,
        workers: int = 1,
        extra: list[str] | None = None,
        port: int | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        # How the registry is started: `python -m registry`, or e.g. the `mycelium` script.
        self.command = command or [sys.executable, "-m", "registry"]
        self.database_url = database_url
        self.workers = workers
        self.extra = extra or []
        self.port = port or free_port()
        self.tls = tls  # (CA, certificate, key) PEM files: serve HTTPS, checked with the CA
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"registry-{self.port}.log"

    def start(self, timeout: float = 30.0) -> RegistryProcess:
        """Start and wait until /healthz answers 200."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *self.command,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
            *self.extra,
        ]
        if self.tls:
            cmd += ["--ssl-certfile", str(self.tls[1]), "--ssl-keyfile", str(self.tls[2])]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIUM_REGISTRY_")}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited early:\n{self.log_path.read_text()}")
            try:
                verify = ssl.create_default_context(cafile=self.tls[0]) if self.tls else True
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"registry did not become healthy:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the process (and its workers) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

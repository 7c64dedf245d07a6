"""The Ray backend on a local Ray instance: the same network as serial, clear errors."""

from __future__ import annotations

import http.server
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from mycelium.cli import app  # noqa: E402
from mycelium.demo import DemoConfig, run_demo  # noqa: E402
from node.learning.data import load_digits  # noqa: E402
from node.learning.partition import partition  # noqa: E402
from node.runtime.backends import BackendError, SerialBackend, make_backend  # noqa: E402
from node.runtime.network import InProcessNetwork, NetworkConfig  # noqa: E402
from node.runtime.ray_backend import (  # noqa: E402
    LOCAL_START_ATTEMPTS,
    RayBackend,
    _outcome,
    start_local_ray,
)
from registry.server import BackgroundRegistry  # noqa: E402
from registry.settings import RegistrySettings  # noqa: E402


@pytest.fixture(scope="module")
def _ray_down_after_module() -> Iterator[None]:
    yield
    ray.shutdown()


@pytest.fixture
def local_ray(_ray_down_after_module: None) -> None:
    """A local Ray instance of 2 CPUs, started by the test (once for the module)."""
    if not ray.is_initialized():
        start_local_ray(2, log_to_driver=False)


@pytest.fixture
def without_ray(_ray_down_after_module: None) -> None:
    ray.shutdown()  # a backend reuses an initialised Ray and would never dial the address


def test_an_unreachable_cluster_address_is_a_backend_error_naming_it(without_ray: None) -> None:
    backend = make_backend("ray", address="127.0.0.1:9")  # nothing listens on port 9

    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9"):
        backend.start(None, None)  # type: ignore[arg-type]


def test_an_address_where_no_ray_answers_is_refused_without_ray_retrying(
    without_ray: None,
) -> None:
    # Prepare: a plain HTTP/1 server listens where the cluster should be
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    backend = make_backend("ray", address=address)

    # Execute / Assert: refused at once, naming the address (ray.init would retry for minutes)
    try:
        with pytest.raises(BackendError, match=rf"{re.escape(address)} answers, but not as a Ray"):
            backend.start(None, None)  # type: ignore[arg-type]
    finally:
        server.shutdown()
    assert not ray.is_initialized()


# Ray's own message when its new node misses Ray's fixed 30 s start-up wait.
_RAY_STARTUP_TIMEOUT = (
    "The current node timed out during startup. This could happen because some of the "
    "raylet failed to startup or the GCS has become overloaded."
)


def test_a_local_start_that_times_out_is_cleaned_up_and_tried_again(
    without_ray: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the first start leaves a process running Ray's code and times out, as a
    # loaded machine made Ray do (a fault that needs that load to happen for real)
    real_init = ray.init
    half_started: list[subprocess.Popen[bytes]] = []

    def init_timing_out_once(*args: object, **kwargs: object) -> object:
        if not half_started:
            ray_dir = os.path.dirname(ray.__file__)
            stray = subprocess.Popen(
                [sys.executable, "-c", "print(flush=True); import time; time.sleep(600)", ray_dir],
                stdout=subprocess.PIPE,
            )
            assert stray.stdout is not None
            stray.stdout.readline()  # running, with Ray's directory in its command line
            half_started.append(stray)
            raise Exception(_RAY_STARTUP_TIMEOUT)  # what Ray raises
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", init_timing_out_once)

    # Execute
    with caplog.at_level(logging.WARNING, logger="node.runtime.ray_backend"):
        start_local_ray(2, log_to_driver=False)

    # Assert: Ray runs, what the failed start left is stopped, and the retry was said
    assert ray.is_initialized()
    assert ray.cluster_resources()["CPU"] == 2
    assert half_started[0].wait(timeout=60) == -signal.SIGKILL
    assert f"attempt 1 of {LOCAL_START_ATTEMPTS}" in caplog.text


def test_a_local_start_that_keeps_timing_out_is_a_backend_error_giving_rays_reason(
    without_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def init_timing_out(*args: object, **kwargs: object) -> None:
        calls.append(kwargs)
        raise Exception(_RAY_STARTUP_TIMEOUT)

    monkeypatch.setattr(ray, "init", init_timing_out)

    with pytest.raises(BackendError, match="cannot start Ray locally: The current node timed"):
        make_backend("ray").start(None, None)  # type: ignore[arg-type]
    assert len(calls) == LOCAL_START_ATTEMPTS


def test_a_local_start_failing_otherwise_is_not_retried(
    without_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def init_refusing(*args: object, **kwargs: object) -> None:
        calls.append(kwargs)
        raise ValueError("num_cpus must be a non-negative integer")

    monkeypatch.setattr(ray, "init", init_refusing)

    with pytest.raises(BackendError, match="cannot start Ray locally: num_cpus must be"):
        start_local_ray(2)
    assert len(calls) == 1


def _groups_and_accuracies(backend: object, rounds: int) -> tuple[object, object]:
    data = partition(load_digits(), 4, "clustered", seed=0, clusters=2, samples_per_node=80)
    with (
        tempfile.TemporaryDirectory() as tmp,
        BackgroundRegistry(RegistrySettings(data_dir=Path(tmp))) as reg,
    ):
        net = InProcessNetwork(reg.url, data, NetworkConfig(seed=0), backend=backend)  # type: ignore[arg-type]
        net.start()
        for _ in range(rounds):
            stats = net.run_round()
        net.shutdown()
    return stats.groups, stats.node_accuracy


def test_a_network_on_ray_forms_the_same_groups_with_the_same_accuracies_as_serial(
    local_ray: None,
) -> None:
    # Execute: one network, two backends, 2 rounds each
    serial = _groups_and_accuracies(SerialBackend(), rounds=2)
    on_ray = _groups_and_accuracies(RayBackend(), rounds=2)

    # Assert: group rounds on Ray workers are the serial ones, to the last digit
    assert on_ray == serial
    groups, accuracies = on_ray
    assert groups and len(accuracies) == 4  # type: ignore[arg-type]
    # ...and the network left the Ray instance it was given running
    assert ray.is_initialized()


def test_a_worker_that_dies_is_a_backend_error(local_ray: None) -> None:
    @ray.remote(max_retries=0)
    def die() -> bytes:
        os._exit(1)

    with pytest.raises(BackendError, match="died"):
        _outcome(die.remote())


def test_the_demo_runs_its_group_rounds_on_ray(local_ray: None, tmp_path: Path) -> None:
    summary = run_demo(
        DemoConfig(
            nodes=4,
            rounds=2,
            backend="ray",
            workers=2,
            drift=False,
            local_only=False,
            progress=False,
            output=tmp_path,
        )
    )

    assert summary["rounds"] == 2
    assert summary["final"]["groups"] >= 1
    assert 0.0 <= summary["final"]["mean_accuracy"] <= 1.0
    assert summary["config"]["backend"] == "ray"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --backend ray"),
        (["--backend", "processes", "--workers", "0"], "--workers must be at least 1, got 0"),
        (["--backend", "threads"], "--backend must be one of serial, processes, ray"),
        (["--backend", "ray", "--ray-address", " "], "--ray-address is empty"),
    ],
)
def test_bad_backend_flags_are_one_line_and_exit_2(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["demo", *flags, "--output", str(tmp_path / "out")])

    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_without_ray_installed_the_demo_names_the_extra_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: Ray not importable (None in sys.modules makes `import ray` fail, as when
    # the extra is not installed), and the backend module not imported yet
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "node.runtime.ray_backend")

    # Execute
    result = CliRunner().invoke(app, ["demo", "--backend", "ray", "--output", str(tmp_path)])

    # Assert: one line naming the extra, before any registry or network starts
    assert result.exit_code == 2
    assert "pip install -e '.[ray]' in a checkout" in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []

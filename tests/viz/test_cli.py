"""The `viz` command against a running registry (until --duration or Ctrl+C), and replay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from tests.support.registry_proc import RegistryProcess
from tests.viz.helpers import Network
from viz.cli import app
from viz.session import SNAPSHOTS_FILE, SUMMARY_FILE, VizOptions, VizProcess
from viz.snapshot import load_snapshots

ROOT = Path(__file__).resolve().parents[2]


def _viz(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "viz", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _activity(url: str, prefix: str) -> tuple[str, int, int]:
    """A node creates a group, another joins, then migrates; both report accuracy."""
    with httpx.Client(base_url=url, timeout=10) as client:
        net = Network(client, prefix=prefix)
        a, b = net.register("a"), net.register("b")
        ga = net.create_group(a, f"{prefix}-one")
        gb = net.create_group(b, f"{prefix}-two")
        net.report(a, ga, 1, 0.6)
        net.report(b, gb, 1, 0.7)
        time.sleep(0.5)
        c = net.register("c")
        net.join(c, ga)
        time.sleep(0.5)
        net.join(c, gb)
        net.report(c, gb, 2, 0.8)
        time.sleep(0.5)
        return c, ga, gb


def _check_outputs(out: Path, migrant: str, source: int, target: int) -> None:
    gif = iio.imread(out / "mycelium_net_demo.gif", index=None)
    assert gif.shape[0] > 1
    assert (out / "mycelium_net_final.png").stat().st_size > 0
    snaps = load_snapshots(out / SNAPSHOTS_FILE)
    assert any(
        (m.node_id, m.from_group, m.to_group) == (migrant, source, target)
        for s in snaps
        for m in s.migrations
    )
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["gif_frames"] == gif.shape[0]
    assert summary["snapshots"] == len(snaps)


def test_viz_only_watches_a_running_registry_for_a_duration(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # Prepare
    out = tmp_path / "out"
    proc = _viz(
        "--registry-url",
        sqlite_registry.url,
        "--duration",
        "4",
        "--interval",
        "0.2",
        "--output",
        str(out),
        "--size",
        "480x270",
        "--fps",
        "6",
    )

    # Execute: the network acts while the viewer records
    time.sleep(1.0)
    migrant, source, target = _activity(sqlite_registry.url, f"cli{uuid.uuid4().hex[:6]}")
    stdout, _ = proc.communicate(timeout=120)

    # Assert
    assert proc.returncode == 0, stdout.decode()
    _check_outputs(out, migrant, source, target)


def test_ctrl_c_ends_the_recording_and_still_writes_gif_and_png(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # Prepare
    out = tmp_path / "out"
    proc = _viz(
        "--registry-url",
        sqlite_registry.url,
        "--interval",
        "0.2",
        "--output",
        str(out),
        "--size",
        "480x270",
    )
    time.sleep(1.0)
    migrant, source, target = _activity(sqlite_registry.url, f"int{uuid.uuid4().hex[:6]}")

    # Execute
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)

    # Assert
    assert proc.returncode == 0, stdout.decode()
    _check_outputs(out, migrant, source, target)


def test_replay_command_redraws_a_saved_recording(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # Prepare: a recording made by the child-process session the demo uses
    first = tmp_path / "first"
    session = VizProcess(
        sqlite_registry.url, VizOptions(output=first, interval=0.2, size=(480, 270), live=False)
    ).start()
    migrant, source, target = _activity(sqlite_registry.url, f"rep{uuid.uuid4().hex[:6]}")
    summary = session.stop()
    assert summary["frames_written"] > 1

    # Execute
    again = tmp_path / "again"
    result = CliRunner().invoke(
        app, ["--replay", str(first / SNAPSHOTS_FILE), "--output", str(again), "--size", "480x270"]
    )

    # Assert: the same final picture
    assert result.exit_code == 0, result.output
    _check_outputs(first, migrant, source, target)
    assert (
        iio.imread(first / "mycelium_net_final.png") == iio.imread(again / "mycelium_net_final.png")
    ).all()


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)), b"not json\n", b'{"a": 1}\n', b"[1, 2]\n", b""],
    ids=["binary", "text", "other-json", "a-list", "empty"],
)
def test_replaying_a_file_that_is_not_a_recording_is_a_clear_error(
    tmp_path: Path, content: bytes
) -> None:
    # Prepare
    path = tmp_path / "recording.jsonl"
    path.write_bytes(content)

    # Execute
    result = CliRunner().invoke(app, ["--replay", str(path), "--output", str(tmp_path / "o")])

    # Assert
    assert result.exit_code == 2, result.output
    assert "is not a mycelium-viz-snapshots file" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

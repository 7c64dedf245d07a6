"""The demo against a registry served over HTTPS: it needs the registry's CA, and says so."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx

from tests.mycelium.test_demo import _run
from tests.support.registry_proc import RegistryProcess
from tests.support.tls import TestPKI


def test_an_https_registry_round_trips_with_its_ca_and_is_refused_without(
    tmp_path: Path, pki: TestPKI
) -> None:
    with RegistryProcess(tmp_path / "r", tls=(pki.ca, pki.cert, pki.key)) as reg:
        # Execute: the demo without the CA, then with it
        untrusted = _run("--registry-url", reg.url, "--output", str(tmp_path / "a"))
        trusted = _run(
            "--registry-url", reg.url, "--ca-cert", str(pki.ca), "--nodes", "2",
            "--rounds", "1", "--no-local-only", "--no-viz", "--output", str(tmp_path / "b"),
        )  # fmt: skip
        verify = ssl.create_default_context(cafile=pki.ca)
        registered = httpx.get(f"{reg.url}/nodes", verify=verify, timeout=10).json()["count"]

    # Assert: one line naming the problem and the fix, no traceback, nothing written
    assert untrusted.returncode == 2
    assert untrusted.stderr.strip().splitlines() == [
        f"error: TLS with the registry at {reg.url} failed (unable to get local issuer "
        "certificate); give its CA certificate with --ca-cert"
    ]
    assert not (tmp_path / "a" / "summary.json").exists()
    # With the CA: the demo ran its round against the registry over HTTPS
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["rounds"] == 1
    assert registered == 2

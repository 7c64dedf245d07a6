"""A node's registry token on disk: stored before it is sent, private, reused after a restart."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from node.addresses import free_port
from node.credentials import CredentialStore
from node.errors import ConfigError
from node.registry_client import RegistryClient, RegistryUnavailableError
from tests.registry.helpers import unique
from tests.support.registry_proc import RegistryProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_token_is_stored_0600_before_the_first_register_and_reused(
    tmp_path: Path, sqlite_registry: RegistryProcess
) -> None:
    # Prepare: a registry that does not answer, then the real one
    store = CredentialStore(tmp_path / "node")
    node_id = unique()
    silent = f"http://127.0.0.1:{free_port()}"

    # Execute: the first register never arrives; a restarted client registers for real
    with (
        RegistryClient(silent, retries=0, credentials=store) as lost,
        pytest.raises(RegistryUnavailableError),
    ):
        lost.register(node_id, "127.0.0.1:1", "digits")
    with RegistryClient(sqlite_registry.url, credentials=store) as first:
        created = first.register(node_id, "127.0.0.1:1", "digits")
    with RegistryClient(sqlite_registry.url, credentials=store) as restarted:
        again = restarted.register(node_id, "127.0.0.1:2", "digits")
        beat = restarted.heartbeat({"accuracy": 0.5})

    # Assert: a file per registry, private; the same node is recognised after the restart
    path = store.path(sqlite_registry.url, node_id)
    assert store.path(silent, node_id).is_file()  # written although nothing was sent
    assert json.loads(path.read_text())["token"] == restarted.token == first.token
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700 and _mode(store.root) == 0o700
    assert created.created and created.token is None
    assert not again.created and again.node.address == "127.0.0.1:2"
    assert beat.metrics["accuracy"] == 0.5


def test_tokens_are_kept_apart_by_registry_and_node(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)

    a = store.load_or_create("http://127.0.0.1:8000", "n1")
    b = store.load_or_create("http://127.0.0.1:8001", "n1")
    c = store.load_or_create("http://127.0.0.1:8000", "n2")

    assert len({a, b, c}) == 3
    assert store.load_or_create("http://127.0.0.1:8000/", "n1") == a
    assert len(a) >= 32


def test_a_damaged_credential_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    path = store.save("http://127.0.0.1:8000", "n1", "x" * 43)
    path.write_text("{not json")

    with pytest.raises(ConfigError, match=r"cannot read node credential .*n1\.json"):
        store.load_or_create("http://127.0.0.1:8000", "n1")


@pytest.mark.parametrize("node_id", ["../../../escaped", "a/b", ".hidden", "", "x" * 129])
def test_a_node_id_that_could_leave_the_store_is_refused_and_nothing_is_written(
    tmp_path: Path, node_id: str
) -> None:
    store = CredentialStore(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"node id .* is not valid"):
        store.load_or_create("http://127.0.0.1:9", node_id)
    assert list(tmp_path.rglob("*")) == []

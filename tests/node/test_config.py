"""NodeConfig: YAML, then environment, then flags; bad keys and bad files are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.config import load_node_config
from node.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_node_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the MYCELIUM_NODE_* variables it sets itself."""
    for name in list(os.environ):
        if name.upper().startswith("MYCELIUM_NODE_"):
            monkeypatch.delenv(name)


def test_file_env_and_flags_layer_in_that_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("node:\n  domain: fashion\n  seed: 3\n  local_epochs: 2\n  batch_size: 8\n")
    monkeypatch.setenv("MYCELIUM_NODE_SEED", "5")
    monkeypatch.setenv("MYCELIUM_NODE_LOCAL_EPOCHS", "7")

    cfg = load_node_config(path, local_epochs=4, batch_size=None)

    assert cfg.domain == "fashion"  # file
    assert cfg.seed == 5  # environment beats file
    assert cfg.local_epochs == 4  # flag beats environment
    assert cfg.batch_size == 8  # unset flag keeps the file's value
    assert cfg.heartbeat_interval_s == 30.0 and cfg.switch_threshold == 0.05  # defaults


@pytest.mark.parametrize(
    ("in_file", "in_env", "flag", "expected"),
    [
        (None, None, None, 30.0),  # default
        (10.0, None, None, 10.0),  # the file beats the default
        (10.0, 20.0, None, 20.0),  # the environment beats the file
        (10.0, 20.0, 40.0, 40.0),  # a flag beats the environment
        (10.0, None, 40.0, 40.0),  # a flag beats the file
    ],
)
def test_each_layer_overrides_the_one_below_for_a_renamed_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_file: float | None,
    in_env: float | None,
    flag: float | None,
    expected: float,
) -> None:
    # Prepare
    path = tmp_path / "node.yaml"
    path.write_text(f"node:\n  heartbeat_interval_s: {in_file}\n" if in_file else "node:\n")
    if in_env is not None:
        monkeypatch.setenv("MYCELIUM_NODE_HEARTBEAT_INTERVAL_S", str(in_env))

    # Execute
    cfg = load_node_config(path, heartbeat_interval_s=flag)

    # Assert
    assert cfg.heartbeat_interval_s == expected


def test_a_file_without_a_node_section_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("cooldown_rounds: 6\ngroup_evaluation_interval_s: 12.5\n")

    cfg = load_node_config(path)

    assert cfg.cooldown_rounds == 6
    assert cfg.group_evaluation_interval_s == 12.5


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("node:\n  bogus: 1\n", "bogus"),
        ("heartbeat_interval_s: -1\n", "heartbeat_interval_s"),
        ("node:\n  cooldown_rounds: -1\n", "cooldown_rounds"),
        ("registry_url: notaurl\n", "registry_url"),
        ("registry_url: ftp://registry:21\n", "registry_url"),
        ("node_id: a/b c\n", "node_id"),
        ("node_id: ''\n", "node_id"),
        ("domain: ''\n", "domain"),
        ("node_address: a b:7\n", "node_address"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^invalid node config key '{key}': "):
        load_node_config(path)


def test_an_invalid_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYCELIUM_NODE_GROUP_EVALUATION_INTERVAL_S", "0")

    key = "group_evaluation_interval_s"
    with pytest.raises(ConfigError, match=rf"^invalid node config key '{key}': "):
        load_node_config()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("heartbeat_interval", "heartbeat_interval_s"),
        ("group_evaluation_interval", "group_evaluation_interval_s"),
        ("cooldown", "cooldown_rounds"),
    ],
)
def test_an_old_key_in_the_file_is_an_error_naming_the_new_one(
    tmp_path: Path, old: str, new: str
) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(f"node:\n  {old}: 5\n")

    with pytest.raises(ConfigError) as err:
        load_node_config(path)

    assert str(err.value).startswith(f"invalid node config key '{old}': ")
    assert new in str(err.value)


def test_an_old_environment_variable_is_an_error_not_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MYCELIUM_NODE_HEARTBEAT_INTERVAL", "5")

    with pytest.raises(ConfigError, match="MYCELIUM_NODE_HEARTBEAT_INTERVAL_S"):
        load_node_config()


def test_unreadable_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "text",
    ["- heartbeat_interval_s\n- 5\n", "just words\n", "node: [1, 2\n", "node: 5\n"],
    ids=["list", "scalar", "invalid-yaml", "section-not-a-mapping"],
)
def test_a_file_that_is_not_a_mapping_is_an_error_naming_the_file(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as err:
        load_node_config(path)

    message = str(err.value)
    assert str(path) in message
    assert "\n" not in message


def test_a_config_file_that_is_not_text_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match=r"binary\.yaml is not text"):
        load_node_config(path)

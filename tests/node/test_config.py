"""NodeConfig: YAML, then environment, then flags; bad keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_node_config


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
    assert cfg.heartbeat_interval == 30.0 and cfg.switch_threshold == 0.05  # defaults


@pytest.mark.parametrize(
    ("text", "key"),
    [("node:\n  bogus: 1\n", "bogus"), ("heartbeat_interval: -1\n", "heartbeat_interval")],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_node_config(path)


def test_unreadable_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path / "missing.yaml")

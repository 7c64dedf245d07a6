"""The peer config: defaults < YAML < MYCELIUM_PEER_* environment < dotted overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli.peer import build_trainer
from node.errors import ConfigError
from node.learning.partition import NodeData
from node.p2p.config import load_config
from tests.node.helpers import digits_learner
from tests.node.p2p.signing import AUTH

ROOT = Path(__file__).resolve().parents[3]
BASE = ROOT / "configs" / "base.yaml"


pytestmark = pytest.mark.usefixtures("no_peer_environment")


def test_base_yaml_uses_the_unit_names() -> None:
    cfg = load_config(BASE)

    assert cfg.p2p.listen_timeout_s == 30.0
    assert cfg.gossip.period_s == 0.2
    assert cfg.training.local_epochs == 1


@pytest.mark.parametrize(
    ("in_env", "override", "expected"),
    [
        (None, None, 30.0),  # the file (base.yaml)
        ("12", None, 12.0),  # the environment beats the file
        ("12", 5.0, 5.0),  # an override beats the environment
        (None, 5.0, 5.0),  # an override beats the file
    ],
)
def test_each_layer_overrides_the_one_below(
    monkeypatch: pytest.MonkeyPatch, in_env: str | None, override: float | None, expected: float
) -> None:
    # Prepare
    if in_env is not None:
        monkeypatch.setenv("MYCELIUM_PEER_P2P__LISTEN_TIMEOUT_S", in_env)

    # Execute
    cfg = load_config(BASE, {"p2p.listen_timeout_s": override})

    # Assert: and the section's other keys still come from the file
    assert cfg.p2p.listen_timeout_s == expected
    assert cfg.p2p.local_port == 5000 and cfg.p2p.down_after_misses == 2


def test_without_a_file_the_defaults_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYCELIUM_PEER_COMPRESSION__MODE", "weights_quantize")

    cfg = load_config(None, {"training.rounds": 2})

    assert cfg.compression.mode == "weights_quantize" and cfg.compression.bits == 8
    assert cfg.training.rounds == 2 and cfg.p2p.listen_timeout_s == 30.0


def test_an_invalid_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYCELIUM_PEER_COMPRESSION__MODE", "zip")

    with pytest.raises(ConfigError, match=r"^compression\.mode: Input should be "):
        load_config(BASE)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("p2p:\n  listen_timeout: 5\n", "p2p.listen_timeout_s"),
        ("gossip:\n  period: 0.5\n", "gossip.period_s"),
        ("training:\n  epochs: 2\n", "training.local_epochs"),
    ],
)
def test_an_old_key_is_an_error_naming_the_new_one(tmp_path: Path, old: str, new: str) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(old)

    with pytest.raises(ConfigError) as err:
        load_config(path)

    assert new in str(err.value)


@pytest.mark.parametrize(
    "text", ["- p2p\n- data\n", "p2p: [1\n"], ids=["not-a-mapping", "invalid-yaml"]
)
def test_a_bad_file_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as err:
        load_config(path)

    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_base_yaml_bounds_what_strangers_send_and_merges_by_the_mean() -> None:
    cfg = load_config(BASE)

    assert cfg.p2p.max_example_count == 100_000
    assert (cfg.p2p.aggregation, cfg.p2p.trim_fraction) == ("mean", 0.2)
    assert (cfg.gossip.max_age_jump, cfg.gossip.buffer_size) == (20, 4)
    assert (cfg.gossip.aggregation, cfg.gossip.trim_fraction) == ("mean", 0.2)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("p2p:\n  aggregation: krum\n", "p2p.aggregation"),
        ("p2p:\n  max_example_count: 0\n", "p2p.max_example_count"),
        ("p2p:\n  trim_fraction: 0.5\n", "p2p.trim_fraction"),
        ("gossip:\n  aggregation: average\n", "gossip.aggregation"),
        ("gossip:\n  max_age_jump: -1\n", "gossip.max_age_jump"),
        ("gossip:\n  buffer_size: 1\n", "gossip.buffer_size"),
        ("gossip:\n  trim_fraction: -0.1\n", "gossip.trim_fraction"),
    ],
)
def test_a_bad_bound_or_aggregation_is_an_error_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as err:
        load_config(path)

    assert str(err.value).startswith(f"{key}: ")


def test_the_peer_command_builds_its_peer_with_the_merge_and_bound_configured(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare
    overrides = {
        "p2p.aggregation": "trimmed_mean",
        "p2p.trim_fraction": 0.3,
        "p2p.max_example_count": 500,
        "p2p.local_port": 0,
    }
    cfg = load_config(BASE, overrides)

    # Execute
    trainer = build_trainer(cfg, [], digits_learner(iid_digits_nodes[0]), AUTH)

    # Assert
    assert (trainer.aggregation, trainer.trim_fraction) == ("trimmed_mean", 0.3)
    assert trainer.max_example_count == 500

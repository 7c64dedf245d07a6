"""Node configuration: defaults, then a YAML file, then MYCELIUM_NODE_* variables, then flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from node.errors import ConfigError

__all__ = ["ConfigError", "NodeConfig", "load_node_config"]


class NodeConfig(BaseSettings):
    """Everything one node needs. Intervals are seconds when nodes run for real."""

    model_config = SettingsConfigDict(env_prefix="MYCELIUM_NODE_", extra="forbid")

    registry_url: str = "http://127.0.0.1:8000"
    node_id: str | None = None
    node_address: str = "127.0.0.1:0"
    domain: str = "digits"
    dataset: str = "digits"
    heartbeat_interval: float = Field(default=30.0, gt=0)
    group_evaluation_interval: float = Field(default=60.0, gt=0)
    switch_threshold: float = Field(default=0.05, ge=0)
    cooldown: int = Field(default=3, ge=0, description="Rounds after a move before the next.")
    top_k: int = Field(default=3, ge=1, description="Candidate snapshots evaluated.")
    max_capacity: int = Field(default=5, ge=1, le=10_000)
    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    seed: int = 0
    policy: str = "local"
    strategy: str = "fedavg"


def load_node_config(path: Path | None = None, **overrides: Any) -> NodeConfig:
    """Build a NodeConfig: file values, overridden by the environment, then by `overrides`.

    None-valued overrides are ignored, so CLI flags left unset keep the file's value.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read node config {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"node config {path} must be a mapping of keys to values")
        file_values = loaded.get("node", loaded)
    flags = {k: v for k, v in overrides.items() if v is not None}

    # pydantic-settings ranks init kwargs above the environment; the file must rank below.
    class _FromFile(NodeConfig):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, *a, **k):  # type: ignore[no-untyped-def]
            return (init_settings, env_settings, _dict_source(settings_cls, file_values))

    try:
        cfg = _FromFile(**flags)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        raise ConfigError(f"invalid node config key '{key}': {err['msg']}") from exc
    return NodeConfig.model_construct(**cfg.model_dump())


def _dict_source(settings_cls: type[BaseSettings], values: dict[str, Any]) -> Any:
    from pydantic_settings import InitSettingsSource

    return InitSettingsSource(settings_cls, init_kwargs=values)

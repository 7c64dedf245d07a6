"""Node configuration: defaults, then a YAML file, then MYCELIUM_NODE_* variables, then flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources import DefaultSettingsSource

from node.addresses import check_url, parse_address
from node.errors import ConfigError
from registry.schemas import Domain, NodeId

__all__ = [
    "NODE_SECTION",
    "RENAMED_KEYS",
    "ConfigError",
    "NodeConfig",
    "YamlFileSource",
    "layered",
    "load_node_config",
]

NODE_SECTION = "node"

# Keys renamed to say their unit, old -> new. An old name in a file or in the environment
# is an error naming the new one: a setting must never be dropped without a word.
RENAMED_KEYS = {
    "heartbeat_interval": "heartbeat_interval_s",
    "group_evaluation_interval": "group_evaluation_interval_s",
    "cooldown": "cooldown_rounds",
}

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class NodeConfig(BaseSettings):
    """Everything one node needs. Names ending in ``_s`` are seconds, ``_rounds`` rounds."""

    model_config = SettingsConfigDict(env_prefix="MYCELIUM_NODE_", extra="forbid")

    registry_url: str = "http://127.0.0.1:8000"
    node_id: NodeId | None = None
    data_dir: Path = Field(
        default=Path("data/node"),
        description="This node's files: credentials/ holds its registry tokens (0600).",
    )
    node_address: str = "127.0.0.1:0"
    domain: Domain = "digits"
    dataset: str = "digits"
    heartbeat_interval_s: float = Field(default=30.0, gt=0, description="Between heartbeats.")
    group_evaluation_interval_s: float = Field(
        default=60.0, gt=0, description="Between re-evaluations of the groups."
    )
    event_stream: bool = Field(
        default=True,
        description="Follow the registry's event stream of this domain and re-evaluate "
        "as soon as another group's snapshot or a membership changes (the interval stays "
        "as the fallback).",
    )
    event_wake_gap_s: float = Field(
        default=5.0, ge=0, description="Shortest time between two re-evaluations events wake."
    )
    switch_threshold: float = Field(default=0.05, ge=0)
    cooldown_rounds: int = Field(
        default=3, ge=0, description="Rounds after a move before the next."
    )
    top_k: int = Field(default=3, ge=1, description="Candidate snapshots evaluated.")
    max_capacity: int = Field(default=5, ge=1, le=10_000)
    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    seed: int = 0
    policy: str = "local"
    strategy: str = "fedavg"

    @field_validator("registry_url")
    @classmethod
    def _an_http_url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("node_address")
    @classmethod
    def _a_host_and_port(cls, value: str) -> str:
        parse_address(value, allow_port_zero=True)
        return value


class YamlFileSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, strict about the file itself.

    ``section`` (e.g. ``"node"``) is read when the file has that top-level key; otherwise
    the whole file holds the settings. A missing or unreadable file, invalid YAML, or a
    file or section that is not a mapping raises ``ConfigError`` naming the file.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], path: Path, section: str | None = None
    ) -> None:
        if not path.is_file():
            reason = "not a file" if path.exists() else "no such file"
            raise ConfigError(f"cannot read config file {path}: {reason}")
        try:
            super().__init__(settings_cls, yaml_file=path, yaml_config_section=section)
        except KeyError:  # the file has no such section: all of it is the settings
            super().__init__(settings_cls, yaml_file=path)
        except TypeError as exc:
            raise ConfigError(
                f"config file {path}: its '{section}' section must be a mapping of keys to values"
            ) from exc

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        # The base class lets OSError and YAMLError escape and merges a list as if a mapping.
        try:
            data: Any = super()._read_file(file_path)
        except OSError as exc:
            reason = exc.strerror or exc
            raise ConfigError(f"cannot read config file {file_path}: {reason}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {file_path} is not text (UTF-8): {exc}") from exc
        except yaml.YAMLError as exc:
            one_line = " ".join(str(exc).split())
            raise ConfigError(f"config file {file_path} is not valid YAML: {one_line}") from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {file_path} must be a mapping of keys to values, "
                f"not a {type(data).__name__}"
            )
        return data


def layered(
    settings_cls: type[SettingsT],
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    section: str | None = None,
) -> SettingsT:
    """``settings_cls`` from defaults < the YAML file < its environment variables < ``overrides``.

    ``overrides`` are field values (nested mappings for nested models), typically flags.
    Raises ``ConfigError`` for the file itself (see ``YamlFileSource``), and pydantic's
    ``ValidationError`` or pydantic-settings' ``SettingsError`` for the values: callers
    turn those into a ``ConfigError`` that names the key.
    """
    flags = dict(overrides or {})
    sources: list[PydanticBaseSettingsSource] = [
        InitSettingsSource(settings_cls, init_kwargs=flags),
        EnvSettingsSource(settings_cls),
    ]
    if path is not None:
        sources.append(YamlFileSource(settings_cls, Path(path), section))
    sources.append(DefaultSettingsSource(settings_cls))
    # The file changes per call, so the sources are built here rather than in the class's
    # settings_customise_sources; pydantic-settings merges and validates them as usual.
    return settings_cls(_build_sources=(tuple(sources), flags))


def load_node_config(path: Path | None = None, **overrides: Any) -> NodeConfig:
    """Build a NodeConfig: defaults < file < ``MYCELIUM_NODE_*`` environment < ``overrides``.

    ``path`` is a YAML file: its ``node:`` section, or the whole file when it has none.
    None-valued overrides are ignored, so CLI flags left unset keep the file's value.
    Raises ``ConfigError`` naming the file (missing, unreadable, not a mapping) or the
    first invalid key (``invalid node config key 'cooldown_rounds': ...``).
    """
    _reject_renamed_env(NodeConfig.model_config.get("env_prefix") or "")
    flags = {key: value for key, value in overrides.items() if value is not None}
    try:
        return layered(NodeConfig, path, flags, section=NODE_SECTION)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"]) or "?"
        hint = f" (renamed '{RENAMED_KEYS[key]}')" if key in RENAMED_KEYS else ""
        message = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid node config key '{key}': {message}{hint}") from exc
    except SettingsError as exc:
        raise ConfigError(f"invalid node config: {exc}") from exc


def _reject_renamed_env(prefix: str) -> None:
    # pydantic-settings ignores variables that match no field, so an old name would be lost.
    present = {name.upper() for name in os.environ}
    for old, new in RENAMED_KEYS.items():
        if f"{prefix}{old}".upper() in present:
            raise ConfigError(
                f"invalid node config key '{old}': {prefix}{old.upper()} was renamed "
                f"{prefix}{new.upper()}"
            )

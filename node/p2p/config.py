"""The peer-training config file (``configs/base.yaml``): data, training, p2p, compression, gossip.

``load_config(path, overrides)`` reads the YAML, applies dotted-key overrides from
the command line (``{"p2p.local_port": 5001}``), and validates everything at once.
An unknown key, a wrong type or an out-of-range value raises ``ConfigError`` whose
message names the key (``compression.mode: Input should be 'none', ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from node.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "CompressionSection",
    "ConfigError",
    "DataSection",
    "GossipSection",
    "P2PSection",
    "PeerConfig",
    "TrainingSection",
    "load_config",
]

DEFAULT_CONFIG_PATH = Path("configs/base.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    """Which data this peer trains on: share ``index`` of ``partitions`` from ``seed``."""

    dataset: Literal["digits", "fashion"] = "digits"
    scheme: Literal["iid", "dirichlet", "clustered"] = "iid"
    partitions: int = Field(default=4, ge=1, le=100_000)
    index: int = Field(default=0, ge=0)
    seed: int = 0
    samples_per_node: int | None = Field(default=None, ge=10)


class TrainingSection(_Section):
    """Local training per round."""

    rounds: int = Field(default=10, ge=1, le=100_000)
    epochs: int = Field(default=1, ge=0, le=1000)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    seed: int = 0


class P2PSection(_Section):
    """Where this peer listens and how long it waits for the others each round."""

    host: str = "0.0.0.0"
    local_port: int = Field(default=5000, ge=0, le=65535)
    listen_timeout: float = Field(default=30.0, gt=0, le=86_400)
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=2**31)
    down_after_misses: int = Field(default=2, ge=1)


class CompressionSection(_Section):
    """What is sent: the dense update, its top-k (with error feedback), or its quantization."""

    mode: Literal["none", "gradients_topk", "weights_quantize"] = "none"
    topk_ratio: float = Field(default=0.01, gt=0, le=1)
    bits: Literal[4, 8, 32] = 8
    error_feedback: bool = True

    @model_validator(mode="after")
    def _bits_fit_mode(self) -> CompressionSection:
        if self.mode == "weights_quantize" and self.bits == 32:
            raise ValueError("bits must be 4 or 8 with mode weights_quantize")
        return self


class GossipSection(_Section):
    """Gossip mode: Cyclon view, shuffle length, and how often a member gossips."""

    view_size: int = Field(default=4, ge=1, le=1000)
    shuffle_length: int = Field(default=2, ge=1, le=1000)
    period: float = Field(default=0.2, gt=0, le=3600)
    local_steps: int = Field(default=1, ge=0, le=1000)

    @model_validator(mode="after")
    def _shuffle_fits_view(self) -> GossipSection:
        if self.shuffle_length > self.view_size:
            raise ValueError("shuffle_length must not exceed view_size")
        return self


class PeerConfig(_Section):
    """The whole file."""

    data: DataSection = DataSection()
    training: TrainingSection = TrainingSection()
    p2p: P2PSection = P2PSection()
    compression: CompressionSection = CompressionSection()
    gossip: GossipSection = GossipSection()
    node_id: str | None = None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{key}: {err['msg']}")
    return "; ".join(lines)


def parse_config(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> PeerConfig:
    """Validate a config tree plus dotted overrides (``None`` values are skipped)."""
    tree: dict[str, Any] = {
        k: dict(v) if isinstance(v, Mapping) else v for k, v in dict(raw).items()
    }
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return PeerConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from exc


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> PeerConfig:
    """Read ``path`` (YAML; none means defaults only) and apply ``overrides``."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"Cannot read config {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"Config {path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"Config {path} must be a mapping of sections")
    return parse_config(raw, overrides)

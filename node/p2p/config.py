"""The peer-training config file (``configs/base.yaml``): data, training, p2p, compression, gossip.

``load_config(path, overrides)`` layers defaults < the YAML file < ``MYCELIUM_PEER_*``
environment variables < dotted-key overrides from the command line
(``{"p2p.local_port": 5001}``), and validates everything at once. An unknown key, a wrong
type or an out-of-range value raises ``ConfigError`` whose message names the key
(``compression.mode: Input should be 'none', ...``). Names ending in ``_s`` are seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from node.config import layered
from node.errors import ConfigError
from node.p2p.aggregation import Aggregation
from node.p2p.codecs import CompressionMode
from node.p2p.inbound import DEFAULT_MAX_AGE_JUMP, DEFAULT_MAX_EXAMPLE_COUNT

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "RENAMED_KEYS",
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

# Keys renamed to say their unit (or what they count), old -> new: named in the error.
RENAMED_KEYS = {
    "p2p.listen_timeout": "p2p.listen_timeout_s",
    "gossip.period": "gossip.period_s",
    "training.epochs": "training.local_epochs",
}


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
    local_epochs: int = Field(default=1, ge=0, le=1000, description="Epochs per round.")
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    seed: int = 0


class P2PSection(_Section):
    """Where this peer listens, how long it waits each round, what it accepts and how it merges.

    ``max_example_count``: an update claiming more examples than this (or fewer than 1)
    is refused. ``aggregation``: ``mean`` (example-weighted), ``median`` or
    ``trimmed_mean`` (coordinate-wise, unweighted) over the round's updates;
    ``trim_fraction`` is the share trimmed from each side by ``trimmed_mean``.

    Frames are signed (``node.p2p.auth``): without a registry with the secret every peer
    shares, ``shared_secret`` or the file ``shared_secret_file`` (one of them); with a
    registry with this node's Ed25519 key, kept in ``data_dir``. A frame more than
    ``replay_window_s`` off the receiver's clock, or seen before, is refused.
    """

    host: str = "0.0.0.0"
    local_port: int = Field(default=5000, ge=0, le=65535)
    listen_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=2**31)
    down_after_misses: int = Field(default=2, ge=1)
    max_example_count: int = Field(default=DEFAULT_MAX_EXAMPLE_COUNT, ge=1, le=10**9)
    aggregation: Aggregation = "mean"
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5)
    shared_secret: SecretStr | None = None
    shared_secret_file: Path | None = None
    data_dir: Path | None = None
    replay_window_s: float = Field(default=60.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _one_secret(self) -> P2PSection:
        if self.shared_secret is not None and self.shared_secret_file is not None:
            raise ValueError("give shared_secret or shared_secret_file, not both")
        return self


class CompressionSection(_Section):
    """What is sent: the dense update, its top-k (with error feedback), or its quantization."""

    mode: CompressionMode = "none"
    topk_ratio: float = Field(default=0.01, gt=0, le=1)
    bits: Literal[4, 8, 32] = 8
    error_feedback: bool = True

    @model_validator(mode="after")
    def _bits_fit_mode(self) -> CompressionSection:
        if self.mode == "weights_quantize" and self.bits == 32:
            raise ValueError("bits must be 4 or 8 with mode weights_quantize")
        return self


class GossipSection(_Section):
    """Gossip mode: Cyclon view, shuffle length, how often a member gossips, how it merges;
    and for ``mycelium gossip``, where it discovers its group and how long it runs.

    ``max_age_jump``: a peer's age claim counts for at most this much more than one's
    own age. ``aggregation``: ``mean`` is the age-weighted pairwise merge; ``median``
    and ``trimmed_mean`` merge one's own model with the last ``buffer_size`` models
    received (one per sender), robustly.
    """

    view_size: int = Field(default=4, ge=1, le=1000)
    shuffle_length: int = Field(default=2, ge=1, le=1000)
    period_s: float = Field(default=0.2, gt=0, le=3600, description="Between gossip sends.")
    local_steps: int = Field(default=1, ge=0, le=1000)
    max_age_jump: int = Field(default=DEFAULT_MAX_AGE_JUMP, ge=0, le=10**6)
    aggregation: Aggregation = "mean"
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5)
    buffer_size: int = Field(default=4, ge=2, le=64)
    # `mycelium gossip`: the registry where the node discovers its domain's gossip group,
    # the capacity of a group it creates, how many other members it waits for before it
    # gossips, and how long it runs (cycles and/or seconds; neither: until SIGINT/SIGTERM).
    registry_url: str | None = None
    group_capacity: int = Field(default=100, ge=1, le=10_000)
    cycles: int | None = Field(default=None, ge=1, le=10**7)
    duration_s: float | None = Field(default=None, gt=0, le=10**7)
    min_peers: int = Field(default=0, ge=0, le=10_000)  # other members to wait for first

    @model_validator(mode="after")
    def _shuffle_fits_view(self) -> GossipSection:
        if self.shuffle_length > self.view_size:
            raise ValueError("shuffle_length must not exceed view_size")
        return self


class PeerConfig(BaseSettings):
    """The whole file; ``MYCELIUM_PEER_<SECTION>__<KEY>`` variables override it."""

    model_config = SettingsConfigDict(
        env_prefix="MYCELIUM_PEER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

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
        hint = f" (renamed {RENAMED_KEYS[key]})" if key in RENAMED_KEYS else ""
        lines.append(f"{key}: {err['msg']}{hint}")
    return "; ".join(lines)


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> PeerConfig:
    """Defaults < the YAML file ``path`` < ``MYCELIUM_PEER_*`` environment < ``overrides``.

    ``path`` None means no file. ``overrides`` are dotted keys (``{"p2p.local_port": 5001}``);
    ``None`` values are skipped, so a flag left unset keeps the file's value. The
    environment names a key with ``__`` between section and field
    (``MYCELIUM_PEER_P2P__LISTEN_TIMEOUT_S=5``). Raises ``ConfigError``: naming the file
    when it is missing, unreadable or not a mapping; otherwise naming every invalid key
    on one line (``compression.mode: Input should be ...; p2p.colour: ...``).
    """
    tree: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return layered(PeerConfig, path, tree)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from exc
    except SettingsError as exc:
        raise ConfigError(f"invalid peer config: {exc}") from exc

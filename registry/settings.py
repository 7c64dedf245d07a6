"""Registry settings: one pydantic-settings class, env prefix MYCELIUM_REGISTRY_."""

from __future__ import annotations

from pathlib import Path

from limits import RateLimitItem, parse_many
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OFF", "RegistrySettings", "build_settings", "parse_limits"]

OFF = "off"


def parse_limits(text: str) -> list[RateLimitItem]:
    """The limits of a setting such as ``"20/second;600/minute"``; [] for ``"off"`` or "".

    Raises ValueError naming the text when it is not in the `limits` notation
    (``N/second|minute|hour|day``, several joined by ``;``).
    """
    text = text.strip()
    if text.lower() in ("", OFF):
        return []
    try:
        return parse_many(text)
    except ValueError as exc:
        raise ValueError(
            f"rate limit {text!r} is not like '20/second;600/minute' (or 'off')"
        ) from exc


# Budgets for write calls (see registry/ratelimit.py), set to stop floods, not honest nodes.
# Measured: a node of the 4-node digits demo peaks at 18 writes in a second (about 11 a
# second sustained: heartbeat, reports, evaluations, uploads when hosting); 40 Fashion
# nodes on one address peaked at 82 a second, and one address may carry hundreds of nodes.
DEFAULT_PER_TOKEN = "50/second;3000/minute"
DEFAULT_PER_ADDRESS = "2000/second"


class RegistrySettings(BaseSettings):
    """Everything the registry needs to run; defaults run locally."""

    model_config = SettingsConfigDict(env_prefix="MYCELIUM_REGISTRY_", extra="ignore")

    data_dir: Path = Field(default=Path("data/registry"), description="Database and model files.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: an SQLite file in data_dir."
    )
    heartbeat_interval: float = Field(default=30.0, gt=0, description="Expected node heartbeat.")
    heartbeat_ttl: float | None = Field(
        default=None, gt=0, description="Seconds without heartbeat before a node expires."
    )
    archive_grace: float = Field(default=300.0, ge=0, description="Empty group archive delay.")
    sweep_interval: float = Field(default=5.0, gt=0, description="Liveness sweep period.")
    max_model_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_request_bytes: int = Field(default=1024 * 1024, gt=0, description="JSON body limit.")
    model_history: int = Field(default=5, ge=1, description="Model files kept per group.")
    auto_migrate: bool = Field(default=True, description="Upgrade the schema on start.")
    reward_scale: float = Field(
        default=100.0, ge=0, description="Tokens paid per unit of positive contribution."
    )
    flag_margin: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="A member whose credited contribution is below minus this share of "
        "the others' loss is flagged as harmful.",
    )
    max_round_jump: int = Field(
        default=100,
        ge=1,
        description="How far past a group's round a snapshot, performance report or "
        "evaluation may claim to be.",
    )
    quarantine_flags: int = Field(
        default=2,
        ge=0,
        description="A member flagged in this many rounds in a row is quarantined (0: never).",
    )
    quarantine_s: float = Field(
        default=900.0, gt=0, description="Seconds a quarantine lasts after the last flag."
    )
    admin_token: str | None = Field(
        default=None,
        min_length=8,
        description="Bearer token for admin calls (simulations, token rotation); unset: the "
        "one in data_dir/admin_token, generated there (0600) on first start.",
    )
    rate_limit_per_token: str = Field(
        default=DEFAULT_PER_TOKEN,
        description="Write calls one bearer token may make, in the `limits` notation "
        "('20/second;600/minute'; 'off' for none). Per worker.",
    )
    rate_limit_per_address: str = Field(
        default=DEFAULT_PER_ADDRESS,
        description="Write calls one client address may make, same notation. Per worker.",
    )
    max_simulations: int = Field(default=1, ge=0, description="Simulations running at once.")
    round_ticket_ttl: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a member's round ticket admits it to its group's Flower server.",
    )
    metrics_token: str | None = Field(
        default=None,
        min_length=8,
        description="Bearer token GET /metrics asks for; unset: /metrics is open, as "
        "Prometheus expects (it shows counts, never secrets).",
    )
    leader_check_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between a worker's attempts to take the lead of the background "
        "jobs (sweeper, simulations), and between the leader's checks that it still has it.",
    )
    public_url: str | None = Field(
        default=None,
        description="The registry's own URL for simulations; default: the request's base URL.",
    )

    # Retention: what the sweeper prunes, and how (registry.retention).
    retention_days: float = Field(
        default=7.0,
        ge=0,
        description="Events, performance reports and simulation log lines older than this "
        "many days are pruned (0: no age limit).",
    )
    events_max_rows: int = Field(
        default=1_000_000, ge=0, description="Newest events kept (0: no row limit)."
    )
    performance_max_rows: int = Field(
        default=1_000_000,
        ge=0,
        description="Newest performance reports kept, beyond each member's latest report "
        "per metric and its group's recent rounds, which are always kept (0: no row limit).",
    )
    simulation_logs_max_rows: int = Field(
        default=1_000_000,
        ge=0,
        description="Newest simulation log lines kept, beyond those of running "
        "simulations, which are always kept (0: no row limit).",
    )
    prune_interval_s: float = Field(
        default=300.0, gt=0, description="Seconds between two pruning passes of the sweeper."
    )
    prune_batch_rows: int = Field(
        default=5000, ge=1, description="Rows deleted per transaction while pruning."
    )

    @field_validator("rate_limit_per_token", "rate_limit_per_address")
    @classmethod
    def _known_limits(cls, value: str) -> str:
        parse_limits(value)  # ValueError names the text
        return value

    @property
    def effective_ttl(self) -> float:
        """TTL in seconds: the configured one, or three heartbeat intervals."""
        return self.heartbeat_ttl if self.heartbeat_ttl is not None else 3 * self.heartbeat_interval

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to an SQLite file inside data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def simulations_dir(self) -> Path:
        """Folder holding each simulation's output."""
        return self.data_dir / "simulations"

    @property
    def admin_token_path(self) -> Path:
        """File holding the generated admin token (when admin_token is unset)."""
        return self.data_dir / "admin_token"

    @property
    def models_dir(self) -> Path:
        """Folder holding model snapshot files."""
        return self.data_dir / "models"


def build_settings(**overrides: object) -> RegistrySettings:
    """Settings from the environment, with explicit overrides (None values ignored)."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return RegistrySettings(**clean)  # type: ignore[arg-type]

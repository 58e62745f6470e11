"""Settings, read once from the environment at start and passed down explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "claude-sonnet-5-5"
JOB_TYPES = ("ai-match", "ai-coverage", "ai-map-controls")
# Seconds an attempt of each job type may run before it is cancelled and retried.
DEFAULT_TIMEOUTS = {"ai-match": 300.0, "ai-coverage": 600.0, "ai-map-controls": 1800.0}


def _env_suffix(job_type: str) -> str:
    return job_type.upper().replace("-", "_")


class ConfigError(ValueError):
    """A setting in the environment has a value we cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _str(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return raw if raw else None


@dataclass(frozen=True)
class Settings:
    """Every setting of aijobs, with its default. See the README's configuration table."""

    # Postgres. None: start the embedded server under `data_dir`.
    database_url: str | None = None
    data_dir: Path = Path(".aijobs")
    pool_min_size: int = 2
    pool_max_size: int = 10

    # Claude. No key: the offline analyzer answers.
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    model: str = DEFAULT_MODEL
    max_tokens: int = 2048
    anthropic_timeout_s: float = 120.0
    offline_delay_s: float = 0.0

    # Workers.
    concurrency: int = 10
    poll_interval_s: float = 5.0
    lease_s: float = 60.0
    heartbeat_s: float = 15.0
    max_attempts: int = 5
    max_attempts_by_type: Mapping[str, int] = field(default_factory=dict)
    timeout_by_type: Mapping[str, float] = field(default_factory=dict)
    shutdown_grace_s: float = 30.0
    # /metrics, /healthz and /readyz of a worker; None: not served; 0: any free port.
    worker_http_port: int | None = 9464
    # Finished jobs older than this are deleted by the workers; None: kept for ever.
    retention_s: float | None = 30 * 24 * 3600.0
    prune_interval_s: float = 600.0
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    map_controls_batch_size: int = 25

    # HTTP API.
    host: str = "127.0.0.1"
    port: int = 8080
    sse_heartbeat_s: float = 15.0
    event_retention_s: float = 7 * 24 * 3600.0

    # Logs.
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console

    @property
    def uses_claude(self) -> bool:
        return self.anthropic_api_key is not None

    def max_attempts_for(self, job_type: str) -> int:
        return self.max_attempts_by_type.get(job_type, self.max_attempts)

    def timeout_for(self, job_type: str) -> float:
        return self.timeout_by_type.get(job_type, DEFAULT_TIMEOUTS.get(job_type, 600.0))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: the process environment)."""
        e: Mapping[str, str] = os.environ if env is None else env
        defaults = cls()
        log_format = e.get("AIJOBS_LOG_FORMAT", defaults.log_format)
        if log_format not in ("auto", "json", "console"):
            raise ConfigError(
                f"AIJOBS_LOG_FORMAT must be auto, json or console, not {log_format!r}"
            )
        return cls(
            database_url=_str(e, "DATABASE_URL"),
            data_dir=Path(e.get("AIJOBS_DATA_DIR") or defaults.data_dir),
            pool_min_size=_int(e, "AIJOBS_POOL_MIN_SIZE", defaults.pool_min_size, 0),
            pool_max_size=_int(e, "AIJOBS_POOL_MAX_SIZE", defaults.pool_max_size, 1),
            anthropic_api_key=_str(e, "ANTHROPIC_API_KEY"),
            anthropic_base_url=_str(e, "ANTHROPIC_BASE_URL"),
            model=e.get("AIJOBS_MODEL") or defaults.model,
            max_tokens=_int(e, "AIJOBS_MAX_TOKENS", defaults.max_tokens, 1),
            anthropic_timeout_s=_float(e, "AIJOBS_ANTHROPIC_TIMEOUT", defaults.anthropic_timeout_s),
            offline_delay_s=_float(e, "AIJOBS_OFFLINE_DELAY", defaults.offline_delay_s),
            concurrency=_int(e, "AIJOBS_CONCURRENCY", defaults.concurrency, 1),
            poll_interval_s=_float(e, "AIJOBS_POLL_INTERVAL", defaults.poll_interval_s, 0.05),
            lease_s=_float(e, "AIJOBS_LEASE", defaults.lease_s, 1.0),
            heartbeat_s=_float(e, "AIJOBS_HEARTBEAT", defaults.heartbeat_s, 0.1),
            max_attempts=_int(e, "AIJOBS_MAX_ATTEMPTS", defaults.max_attempts, 1),
            max_attempts_by_type={
                t: _int(e, f"AIJOBS_MAX_ATTEMPTS_{_env_suffix(t)}", 0, 1)
                for t in JOB_TYPES
                if e.get(f"AIJOBS_MAX_ATTEMPTS_{_env_suffix(t)}")
            },
            timeout_by_type={
                t: _float(e, f"AIJOBS_TIMEOUT_{_env_suffix(t)}", 0.0, 0.1)
                for t in JOB_TYPES
                if e.get(f"AIJOBS_TIMEOUT_{_env_suffix(t)}")
            },
            shutdown_grace_s=_float(e, "AIJOBS_SHUTDOWN_GRACE", defaults.shutdown_grace_s),
            worker_http_port=(
                None
                if e.get("AIJOBS_WORKER_PORT", "").lower() == "off"
                else _int(e, "AIJOBS_WORKER_PORT", 9464, 0)
            ),
            retention_s=(
                None
                if e.get("AIJOBS_RETENTION", "").lower() == "off"
                else _float(e, "AIJOBS_RETENTION", 30 * 24 * 3600.0, 60.0)
            ),
            prune_interval_s=_float(e, "AIJOBS_PRUNE_INTERVAL", defaults.prune_interval_s, 1.0),
            retry_base_s=_float(e, "AIJOBS_RETRY_BASE", defaults.retry_base_s),
            retry_max_s=_float(e, "AIJOBS_RETRY_MAX", defaults.retry_max_s),
            map_controls_batch_size=_int(
                e, "AIJOBS_MAP_CONTROLS_BATCH_SIZE", defaults.map_controls_batch_size, 1
            ),
            host=e.get("AIJOBS_HOST") or defaults.host,
            port=_int(e, "AIJOBS_PORT", defaults.port, 0),
            sse_heartbeat_s=_float(e, "AIJOBS_SSE_HEARTBEAT", defaults.sse_heartbeat_s, 0.1),
            event_retention_s=_float(e, "AIJOBS_EVENT_RETENTION", defaults.event_retention_s, 60.0),
            log_level=(e.get("AIJOBS_LOG_LEVEL") or defaults.log_level).lower(),
            log_format=log_format,
        )

"""Settings, read once from the environment at start and passed down explicitly."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_MODEL = "claude-sonnet-5-5"
JOB_TYPES = ("ai-match", "ai-coverage", "ai-map-controls")
# Seconds an attempt of each job type may run before it is cancelled and retried.
DEFAULT_TIMEOUTS = {"ai-match": 300.0, "ai-coverage": 600.0, "ai-map-controls": 1800.0}
# Output tokens one model call of each job type may produce: a coverage answer lists gaps and
# a score per document, a map-controls batch a rationale per mapped control.
DEFAULT_MAX_TOKENS = {"ai-match": 2048, "ai-coverage": 4096, "ai-map-controls": 4096}
PRICE_FIELDS = ("input", "output", "cache_write", "cache_read")


def _env_suffix(job_type: str) -> str:
    return job_type.upper().replace("-", "_")


class ConfigError(ValueError):
    """A setting in the environment has a value we cannot use."""


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
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


def _optional_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    return _int(env, name, 0, minimum) if env.get(name) else None


def _optional_float(env: Mapping[str, str], name: str, minimum: float) -> float | None:
    return _float(env, name, 0.0, minimum) if env.get(name) else None


def _fraction(env: Mapping[str, str], name: str, default: float, maximum: float) -> float:
    value = _float(env, name, default, 0.0)
    if not 0.0 < value <= maximum:
        raise ConfigError(f"{name} must be above 0 and at most {maximum}, got {value}")
    return value


def _cookie_name(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        raise ConfigError(f"{name} must be a cookie name (letters, digits, -_.), not {value!r}")
    return value


def normalize_origin(value: str) -> str | None:
    """`scheme://host[:port]` in lower case without a default port, or None when `value` is
    no http(s) origin."""
    match = re.fullmatch(r"(https?)://([^/?#@\s:]+)(?::(\d{1,5}))?/?", value.strip(), re.I)
    if match is None:
        return None
    scheme, host, port = match.group(1).lower(), match.group(2).lower(), match.group(3)
    if port is not None and int(port) == {"http": 80, "https": 443}[scheme]:
        port = None
    return f"{scheme}://{host}" + (f":{int(port)}" if port is not None else "")


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins: list[str] = []
    for entry in (env.get(name) or "").split(","):
        if not entry.strip():
            continue
        origin = normalize_origin(entry)
        if origin is None:
            raise ConfigError(
                f"{name} must list origins like https://app.example.com, not {entry.strip()!r}"
            )
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


SYNCHRONOUS_COMMIT_LEVELS = ("on", "off", "local", "remote_write", "remote_apply")
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_PORT = 65535
POOLER_MODES = ("auto", "on", "off")
# The ports poolers listen on by default: PgBouncer's, and Supabase's transaction pooler's.
POOLER_PORTS = (6432, 6543)


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _choice(env: Mapping[str, str], name: str, default: str, allowed: Sequence[str]) -> str:
    value = env.get(name) or default
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").lower()
    if not raw:
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


def _by_type(env: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {
        t: env[f"{prefix}_{_env_suffix(t)}"]
        for t in JOB_TYPES
        if env.get(f"{prefix}_{_env_suffix(t)}")
    }


def _prices(env: Mapping[str, str], name: str) -> dict[str, dict[str, float]]:
    """`{"model or prefix": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}}`"""
    raw = env.get(name)
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a JSON object: {exc}") from exc
    if not isinstance(table, dict):
        raise ConfigError(f"{name} must be a JSON object of models")
    prices: dict[str, dict[str, float]] = {}
    for model, price in table.items():
        if not isinstance(price, dict) or set(price) != set(PRICE_FIELDS):
            raise ConfigError(f"{name}: the price of {model!r} needs exactly {PRICE_FIELDS}")
        if not all(isinstance(v, int | float) and v >= 0 for v in price.values()):
            raise ConfigError(f"{name}: the prices of {model!r} must be numbers, at least 0")
        prices[model] = {k: float(v) for k, v in price.items()}
    return prices


@dataclass(frozen=True)
class Settings:
    """Every setting of aijobs, with its default. See docs/configuration.md."""

    # Postgres. None: start the embedded server under `data_dir`.
    database_url: str | None = None
    data_dir: Path = Path(".aijobs")
    pool_min_size: int = 2
    pool_max_size: int = 10
    # A direct (or session-mode pooler) connection string for what needs a session of its
    # own: each LISTEN connection, migrations and their lock. None: DATABASE_URL.
    direct_url: str | None = None
    # Whether DATABASE_URL may be a connection pooler (PgBouncer, Supavisor), in transaction
    # or session mode: then no prepared statement is kept on a connection and no setting is
    # sent when connecting. "auto": when AIJOBS_DIRECT_URL names another server, or
    # DATABASE_URL's port is a pooler's (6432, 6543).
    pooler: str = "auto"
    # Postgres' synchronous_commit for the worker's connections. "off": a worker's commit
    # returns before its WAL reaches the disk. A crash of Postgres itself may then undo the
    # last fraction of a second of claims, progress and outcomes; each undone write is redone
    # (the lease runs out and the job runs again), and an effect is undone with the completion
    # it commits with. Dispatch, in the API, always commits synchronously.
    worker_synchronous_commit: str = "off"

    # Claude. No key: the offline analyzer answers.
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    model: str = DEFAULT_MODEL
    # None: each job type's default (DEFAULT_MAX_TOKENS).
    max_tokens: int | None = None
    # None: the model's own default temperature.
    temperature: float | None = None
    model_by_type: Mapping[str, str] = field(default_factory=dict)
    max_tokens_by_type: Mapping[str, int] = field(default_factory=dict)
    temperature_by_type: Mapping[str, float] = field(default_factory=dict)
    anthropic_timeout_s: float = 120.0
    offline_delay_s: float = 0.0
    # The rate limit budget shared by every worker through Postgres (docs/claude.md).
    claude_rate_limit: bool = True
    # Per-minute limits of the organisation; None: learned from the API's headers.
    claude_rpm: int | None = None
    claude_itpm: int | None = None
    claude_otpm: int | None = None
    # The share of those limits aijobs plans to use, and the share of a minute's budget that
    # may go out at once.
    claude_limit_share: float = 0.95
    claude_burst: float = 0.05
    # A call that would wait longer than this for budget hands its job back to the queue.
    claude_max_wait_s: float = 120.0
    # USD per million tokens by model (or model name prefix), over service/ai/pricing.py's.
    claude_prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # A document longer than this many characters is analysed in overlapping sections.
    section_chars: int = 160_000
    section_overlap_chars: int = 4_000
    # Model calls (batches or sections) one job runs at once, and how often one that failed
    # transiently is tried again before its job is handed back to the queue.
    parallel_batches: int = 4
    batch_retries: int = 2

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
    # A job sent back by Claude's 429 or 529, or held by the shared rate limit budget, waits
    # without using an attempt; it fails once such waits add up to this.
    max_wait_s: float = 3600.0
    # Claim round robin between users (created_by); off: oldest first, whoever the user.
    fair_share: bool = True
    # At most this many of one user's jobs run at once across the fleet; None: no cap.
    user_concurrency: int | None = None
    map_controls_batch_size: int = 25
    # Model calls stream, and the text of their answers reaches event stream followers as it
    # is written (`event: delta`); off: calls answer whole, and no text is sent or heard.
    stream_deltas: bool = True

    # HTTP API.
    host: str = "127.0.0.1"
    port: int = 8080
    # Bearer JWTs (HS256, as Supabase issues them) are verified with this secret.
    jwt_secret: str | None = field(default=None, repr=False)
    # No secret: accept requests without a token as a development user. Never in production.
    insecure_dev_auth: bool = False
    # The cookie that may carry the token instead of the Authorization header (a browser
    # session); the @supabase/ssr session cookie `sb-<ref>-auth-token` is read as well.
    auth_cookie: str = "aijobs_token"
    # Origins (`https://app.example.com`) of web apps allowed to call the API from a browser:
    # CORS for them, and cookie-authenticated POSTs from them pass the CSRF check. Empty: none.
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024
    max_document_body_bytes: int = 2 * 1024 * 1024
    dispatch_per_minute: int = 60
    # A user whose model calls cost this much (USD) since 00:00 UTC gets 429 on dispatch until
    # the next 00:00 UTC; ai_user_budgets overrides it per user. None: no budget.
    user_daily_budget_usd: float | None = None
    sse_streams_per_user: int = 20
    sse_heartbeat_s: float = 15.0
    event_retention_s: float = 7 * 24 * 3600.0

    # Logs.
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console

    @property
    def pooled(self) -> bool:
        """DATABASE_URL may be a connection pooler (see `pooler`)."""
        if self.pooler != "auto":
            return self.pooler == "on"
        if self.database_url is None:
            return False
        if self.direct_url is not None and self.direct_url != self.database_url:
            return True
        return _port(self.database_url) in POOLER_PORTS

    def session_url(self, dsn: str) -> str:
        """Where sessions go (LISTEN, migrations): AIJOBS_DIRECT_URL, else `dsn`."""
        return self.direct_url or dsn

    @property
    def uses_claude(self) -> bool:
        return self.anthropic_api_key is not None

    def max_attempts_for(self, job_type: str) -> int:
        return self.max_attempts_by_type.get(job_type, self.max_attempts)

    def timeout_for(self, job_type: str) -> float:
        return self.timeout_by_type.get(job_type, DEFAULT_TIMEOUTS.get(job_type, 600.0))

    def model_for(self, job_type: str) -> str:
        return self.model_by_type.get(job_type, self.model)

    def max_tokens_for(self, job_type: str) -> int:
        if job_type in self.max_tokens_by_type:
            return self.max_tokens_by_type[job_type]
        if self.max_tokens is not None:
            return self.max_tokens
        return DEFAULT_MAX_TOKENS.get(job_type, 2048)

    def temperature_for(self, job_type: str) -> float | None:
        return self.temperature_by_type.get(job_type, self.temperature)

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
        log_level = (e.get("AIJOBS_LOG_LEVEL") or defaults.log_level).lower()
        if log_level not in LOG_LEVELS:
            raise ConfigError(
                f"AIJOBS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}"
            )
        settings = cls(
            database_url=_str(e, "DATABASE_URL"),
            data_dir=Path(e.get("AIJOBS_DATA_DIR") or defaults.data_dir),
            pool_min_size=_int(e, "AIJOBS_POOL_MIN_SIZE", defaults.pool_min_size, 0),
            pool_max_size=_int(e, "AIJOBS_POOL_MAX_SIZE", defaults.pool_max_size, 1),
            direct_url=_str(e, "AIJOBS_DIRECT_URL"),
            pooler=_choice(e, "AIJOBS_POOLER", defaults.pooler, POOLER_MODES),
            worker_synchronous_commit=_choice(
                e,
                "AIJOBS_WORKER_SYNCHRONOUS_COMMIT",
                defaults.worker_synchronous_commit,
                SYNCHRONOUS_COMMIT_LEVELS,
            ),
            anthropic_api_key=_str(e, "ANTHROPIC_API_KEY"),
            anthropic_base_url=_str(e, "ANTHROPIC_BASE_URL"),
            model=e.get("AIJOBS_MODEL") or defaults.model,
            max_tokens=_optional_int(e, "AIJOBS_MAX_TOKENS", 1),
            temperature=_optional_float(e, "AIJOBS_TEMPERATURE", 0.0),
            model_by_type=_by_type(e, "AIJOBS_MODEL"),
            max_tokens_by_type={
                t: _int(e, f"AIJOBS_MAX_TOKENS_{_env_suffix(t)}", 0, 1)
                for t in _by_type(e, "AIJOBS_MAX_TOKENS")
            },
            temperature_by_type={
                t: _float(e, f"AIJOBS_TEMPERATURE_{_env_suffix(t)}", 0.0, 0.0)
                for t in _by_type(e, "AIJOBS_TEMPERATURE")
            },
            anthropic_timeout_s=_float(e, "AIJOBS_ANTHROPIC_TIMEOUT", defaults.anthropic_timeout_s),
            offline_delay_s=_float(e, "AIJOBS_OFFLINE_DELAY", defaults.offline_delay_s),
            claude_rate_limit=_switch(e, "AIJOBS_CLAUDE_RATE_LIMIT", defaults.claude_rate_limit),
            claude_rpm=_optional_int(e, "AIJOBS_CLAUDE_RPM", 1),
            claude_itpm=_optional_int(e, "AIJOBS_CLAUDE_ITPM", 1),
            claude_otpm=_optional_int(e, "AIJOBS_CLAUDE_OTPM", 1),
            claude_limit_share=_fraction(
                e, "AIJOBS_CLAUDE_LIMIT_SHARE", defaults.claude_limit_share, 1.0
            ),
            claude_burst=_fraction(e, "AIJOBS_CLAUDE_BURST", defaults.claude_burst, 0.5),
            claude_max_wait_s=_float(e, "AIJOBS_CLAUDE_MAX_WAIT", defaults.claude_max_wait_s, 1.0),
            claude_prices=_prices(e, "AIJOBS_CLAUDE_PRICES"),
            section_chars=_int(e, "AIJOBS_SECTION_CHARS", defaults.section_chars, 2000),
            section_overlap_chars=_int(
                e, "AIJOBS_SECTION_OVERLAP", defaults.section_overlap_chars, 0
            ),
            parallel_batches=_int(e, "AIJOBS_PARALLEL_BATCHES", defaults.parallel_batches, 1),
            batch_retries=_int(e, "AIJOBS_BATCH_RETRIES", defaults.batch_retries, 0),
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
                else _int(e, "AIJOBS_WORKER_PORT", 9464, 0, MAX_PORT)
            ),
            retention_s=(
                None
                if e.get("AIJOBS_RETENTION", "").lower() == "off"
                else _float(e, "AIJOBS_RETENTION", 30 * 24 * 3600.0, 60.0)
            ),
            prune_interval_s=_float(e, "AIJOBS_PRUNE_INTERVAL", defaults.prune_interval_s, 1.0),
            retry_base_s=_float(e, "AIJOBS_RETRY_BASE", defaults.retry_base_s),
            retry_max_s=_float(e, "AIJOBS_RETRY_MAX", defaults.retry_max_s),
            max_wait_s=_float(e, "AIJOBS_MAX_WAIT", defaults.max_wait_s, 1.0),
            fair_share=_switch(e, "AIJOBS_FAIR_SHARE", defaults.fair_share),
            stream_deltas=_switch(e, "AIJOBS_STREAM_DELTAS", defaults.stream_deltas),
            user_concurrency=_optional_int(e, "AIJOBS_USER_CONCURRENCY", 1),
            map_controls_batch_size=_int(
                e, "AIJOBS_MAP_CONTROLS_BATCH_SIZE", defaults.map_controls_batch_size, 1
            ),
            host=e.get("AIJOBS_HOST") or defaults.host,
            jwt_secret=_str(e, "AIJOBS_JWT_SECRET"),
            auth_cookie=_cookie_name(e, "AIJOBS_AUTH_COOKIE", defaults.auth_cookie),
            cors_origins=_origins(e, "AIJOBS_CORS_ORIGINS"),
            max_body_bytes=_int(e, "AIJOBS_MAX_BODY", defaults.max_body_bytes, 1024),
            max_document_body_bytes=_int(
                e, "AIJOBS_MAX_DOCUMENT_BODY", defaults.max_document_body_bytes, 1024
            ),
            dispatch_per_minute=_int(
                e, "AIJOBS_DISPATCH_PER_MINUTE", defaults.dispatch_per_minute, 0
            ),
            user_daily_budget_usd=_optional_float(e, "AIJOBS_USER_DAILY_BUDGET_USD", 0.0),
            sse_streams_per_user=_int(
                e, "AIJOBS_SSE_STREAMS_PER_USER", defaults.sse_streams_per_user, 0
            ),
            port=_int(e, "AIJOBS_PORT", defaults.port, 0, MAX_PORT),
            sse_heartbeat_s=_float(e, "AIJOBS_SSE_HEARTBEAT", defaults.sse_heartbeat_s, 0.1),
            event_retention_s=_float(e, "AIJOBS_EVENT_RETENTION", defaults.event_retention_s, 60.0),
            log_level=log_level,
            log_format=log_format,
        )
        if settings.direct_url is not None and settings.database_url is None:
            raise ConfigError("AIJOBS_DIRECT_URL is set but DATABASE_URL is not: set both")
        if settings.heartbeat_s >= settings.lease_s / 2:
            raise ConfigError(
                f"AIJOBS_HEARTBEAT ({settings.heartbeat_s:g} s) must be under half of "
                f"AIJOBS_LEASE ({settings.lease_s:g} s), or leases run out between renewals"
            )
        return settings

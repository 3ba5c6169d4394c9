"""Configuration: a TOML file plus environment variables, found the same way by the server and
every CLI command (``resolve``):

- the configuration file: ``--config`` (CLI flag), else ``GATEWAY_CONFIG``, else the project
  file ``gateway.toml`` in the working directory or the nearest folder above it, else none;
- the database: ``--database-url``, else ``DATABASE_URL``, else the SQLite file ``gateway.db``
  beside the project file, else ``gateway.db`` in the working directory.

Secrets come only from the environment. Every problem raises ConfigError naming the key (and
the closest known key when one was misspelt), so a broken configuration stops start-up with a
message an operator can act on.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.db import default_database_url, normalise_database_url, safe_url
from gateway.endpoints import EndpointConfig, public_url
from gateway.errors import ConfigError

PROJECT_FILE = "gateway.toml"
SOURCE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
RESERVED_SOURCES = {"gateway", "api"}  # used for events the gateway records itself

ENDPOINT_KEYS = {"url": str, "secret_env": str, "events": list, "sources": list}
EVENT_PATTERN_RE = re.compile(r"^(job|delivery)\.[a-z0-9_*-]+$")

#: keys every source takes; anything else is the adapter's own (checked by the adapter)
COMMON_SOURCE_KEYS = {
    "adapter": str,
    "secrets_env": str,
    "secrets_file": str,
    "callback_url": str,
    "callback_secret_env": str,
    "stall_after": int,
    "reconcile_after": int,  # seconds of quiet before a status read (gateway/reconcile.py)
    "public_url": str,
    "api_base": str,
    "api_key_env": str,
    "auto_register": bool,
}

GATEWAY_KEYS: dict[str, tuple[type, Any]] = {
    "allowed_origins": (list, []),
    "max_body_bytes": (int, 1024 * 1024),
    "signature_tolerance": (int, 300),
    "token_ttl": (int, 3600),
    "console_session_ttl": (int, 28800),
    "ws_ping_interval": (int, 25),
    "ws_max_subscriptions": (int, 100),
    "ws_max_message_bytes": (int, 8192),
    "sse_heartbeat": (int, 15),
    "long_poll_max": (int, 30),
    "resync_interval": (int, 30),
    "retention_days": (int, 30),
    "bus": (str, "auto"),
    "redis_url": (str, "redis://127.0.0.1:6379/0"),
    "progress_interval_ms": (int, 100),
    "poll_memory_jobs": (int, 10_000),
    "ingest_batch_window_ms": (int, 0),  # group commit (gateway/store/batch.py); 0: off, one transaction per webhook
    "prepare_statements": (bool, True),  # PostgreSQL: the write path's statements prepared per connection; false behind a transaction-pooling PgBouncer
    "support_email": (str, "support@example.com"),
    "demo": (bool, False),
    "outbox_interval": (int, 5),
    "outbox_timeout": (int, 10),
    "outbox_backoff": (int, 2),
    "outbox_backoff_max": (int, 3600),
    "outbox_max_attempts": (int, 15),
    "forward_retry_for": (int, 259200),
    "delivery_retention_days": (int, 7),
    "watchdog_interval": (int, 10),
    "reconcile_per_minute": (int, 30),  # status reads per source a minute, per worker process
    # abuse limits (gateway/limits.py): requests per second per worker process, 0 = off
    "rate_limit_webhooks_per_source": (int, 1000),
    "rate_limit_webhooks_per_address": (int, 1000),
    "rate_limit_public_per_address": (int, 200),
    "max_connections_per_address": (int, 500),
    "body_timeout": (int, 30),
    "rejected_records_per_minute": (int, 60),  # refused deliveries stored per source a minute; past it, counted
    "metrics_cache_seconds": (int, 5),
    "rate_limit_store": (str, "auto"),  # auto | local | redis (gateway/limits.py)  # /metrics counts jobs by state at most once per this, per worker
}


@dataclass(frozen=True)
class Resolution:
    """Where the configuration file and the database were found, and why (for ``--verbose`` and errors)."""

    config_path: str | None
    config_from: str
    database_url: str
    database_from: str

    def describe(self) -> str:
        """One line naming both, the database URL without its password."""
        where = f"{self.config_path} (from {self.config_from})" if self.config_path else f"none ({self.config_from})"
        return f"configuration: {where}; database: {safe_url(self.database_url)} (from {self.database_from})"


def resolve(env: Mapping[str, str] | None = None, *, config_flag: str | None = None, database_flag: str | None = None,
            cwd: str | None = None) -> Resolution:
    """Find the configuration file and the database in the documented order (module docstring)."""
    env = os.environ if env is None else env
    here = Path(cwd or os.getcwd())
    project = _project_file(here)
    if config_flag:
        path, origin = config_flag, "--config"
    elif env.get("GATEWAY_CONFIG"):
        path, origin = env["GATEWAY_CONFIG"], "GATEWAY_CONFIG"
    elif project is not None:
        path, origin = str(project), f"the project file {PROJECT_FILE}"
    else:
        path, origin = None, f"no --config, GATEWAY_CONFIG or {PROJECT_FILE} in {here} or above"
    if database_flag:
        url, db_origin = database_flag, "--database-url"
    elif env.get("DATABASE_URL"):
        url, db_origin = env["DATABASE_URL"], "DATABASE_URL"
    elif project is not None and path == str(project):
        url, db_origin = "sqlite:///" + str(project.parent / "gateway.db"), f"default: beside {PROJECT_FILE}"
    else:
        url, db_origin = default_database_url(str(here)), "default: the working directory"
    return Resolution(path, origin, normalise_database_url(url), db_origin)


def _project_file(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def secret_values(config: Config) -> list[str]:
    """Every configured credential value, for log redaction by value (gateway.logs.register_secrets)."""
    values = [config.secret_key, config.metrics_token, *config.api_keys]
    for source in config.sources.values():
        values.extend(source.secrets)
        for name in (source.callback_secret_env, source.api_key_env):
            if name:
                values.append(config.env.get(name, ""))
    return [v.strip() for v in values if v and v.strip()]


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class SourceConfig:
    """A named webhook endpoint bound to an adapter and its active secrets."""

    name: str
    adapter: str
    secrets_env: str  # "" when the secrets come only from secrets_file
    secrets: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)  # the adapter's own keys
    secrets_file: str | None = None
    callback_url: str | None = None
    callback_secret_env: str | None = None
    stall_after: int | None = None
    reconcile_after: int | None = None  # default: half of stall_after (gateway/reconcile.py)
    public_url: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    auto_register: bool = False


@dataclass(frozen=True)
class Config:
    """Everything the app factory needs; build with ``load_config`` or directly in tests."""

    secret_key: str
    database_url: str = field(default_factory=default_database_url)
    api_keys: tuple[str, ...] = ()
    sources: Mapping[str, SourceConfig] = field(default_factory=dict)
    endpoints: Mapping[str, EndpointConfig] = field(default_factory=dict)  # forwarding (§9)
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    signature_tolerance: int = 300
    token_ttl: int = 3600
    console_session_ttl: int = 28800  # a support-console sign-in lasts this long, at most 8 h
    ws_ping_interval: int = 25
    ws_max_subscriptions: int = 100
    ws_max_message_bytes: int = 8192
    sse_heartbeat: int = 15
    long_poll_max: int = 30
    resync_interval: int = 30
    retention_days: int = 30
    bus: str = "auto"
    redis_url: str = "redis://127.0.0.1:6379/0"
    progress_interval_ms: int = 100  # a storming job's progress is announced at most once per this; 0: every change
    poll_memory_jobs: int = 10_000  # jobs whose JSON each process keeps for 200 polls (relay/fresh.py); 0: each reads the database
    ingest_batch_window_ms: int = 0  # > 0: webhooks arriving together share a commit, a batch formed under load waits this for more; 0: off
    prepare_statements: bool = True  # PostgreSQL: the fast path's statements PREPAREd once per connection (gateway/store/fastpath.py)
    support_email: str = "support@example.com"
    demo: bool = False
    outbox_interval: int = 5  # seconds between outbox sweeps (an enqueue in this process wakes it at once)
    outbox_timeout: int = 10  # seconds for one outbound HTTP call
    outbox_backoff: int = 2  # seconds before the second try; doubles each try, with jitter
    outbox_backoff_max: int = 3600
    outbox_max_attempts: int = 15  # then the row is given up ("dead") and the trace says so
    forward_retry_for: int = 259200  # seconds an endpoint message is retried before it is dead (§9)
    delivery_retention_days: int = 7  # verified deliveries keep body and headers this long (§10)
    watchdog_interval: int = 10  # seconds between stall checks
    reconcile_per_minute: int = 30  # status reads of one source's provider API a minute, per worker process
    rate_limit_webhooks_per_source: int = 1000
    rate_limit_webhooks_per_address: int = 1000
    rate_limit_public_per_address: int = 200
    max_connections_per_address: int = 500
    body_timeout: int = 30
    rejected_records_per_minute: int = 60
    metrics_cache_seconds: int = 5
    rate_limit_store: str = "local"  # resolved: local or redis
    metrics_token: str = field(default="", repr=False)  # GATEWAY_METRICS_TOKEN: /metrics then needs it as a bearer
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    resolution: Resolution | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never print secrets
        return (f"Config(database={self.database_url.split('@')[-1]!r}, sources={sorted(self.sources)!r}, "
                f"endpoints={sorted(self.endpoints)!r})")


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _typed(key: str, value: Any, kind: type) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if kind is int and value < 0:
        raise ConfigError(f"{key}: must not be negative")
    if kind is not int and not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def load_config(env: Mapping[str, str] | None = None, *, strict: bool = True, resolution: Resolution | None = None) -> Config:
    """Read the configuration file and the environment, found by ``resolve`` unless ``resolution``
    is given. ``strict=False`` tolerates unset secrets (CLI listings)."""
    env = dict(os.environ if env is None else env)
    found = resolution or resolve(env)
    data: dict[str, Any] = {}
    path = found.config_path
    key = found.config_from if found.config_from in ("--config", "GATEWAY_CONFIG") else PROJECT_FILE
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{key}: no such file {path!r}") from None
        except IsADirectoryError:
            raise ConfigError(f"{key}: {path!r} is a folder, not a TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{key}: {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"gateway", "sources", "endpoints"}
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"{name}: unknown section{did_you_mean(name, ['gateway', 'sources', 'endpoints'])} "
                          "(expected [gateway], [sources.<name>] and [endpoints.<name>])")
    if not all(isinstance(data.get(section, {}), dict) for section in ("gateway", "sources", "endpoints")):
        raise ConfigError("gateway: expected a table ([gateway] and [sources.<name>])")

    gw = data.get("gateway", {})
    settings: dict[str, Any] = {}
    for key, value in gw.items():
        if key not in GATEWAY_KEYS:
            raise ConfigError(f"gateway.{key}: unknown setting{did_you_mean(key, GATEWAY_KEYS)}")
        settings[key] = _typed(f"gateway.{key}", value, GATEWAY_KEYS[key][0])
    origins = settings.pop("allowed_origins", [])
    if not all(isinstance(o, str) for o in origins):
        raise ConfigError("gateway.allowed_origins: expected a list of origins like 'https://app.example.com'")
    if settings.get("bus", "auto") not in ("auto", "local", "postgres", "sqlite", "redis"):
        raise ConfigError("gateway.bus: expected one of auto, local, postgres, sqlite, redis")
    store = settings.get("rate_limit_store", "auto")
    if store not in ("auto", "local", "redis"):
        raise ConfigError("gateway.rate_limit_store: expected one of auto, local, redis")
    if store == "auto":  # Redis configured: the limits are shared through it
        settings["rate_limit_store"] = "redis" if "redis_url" in settings or settings.get("bus") == "redis" else "local"

    sources = {}
    for name, raw in (data.get("sources") or {}).items():
        sources[name] = _source(name, raw, env, strict)
    endpoints = parse_endpoints(data.get("endpoints", {}), env, set(sources), strict)

    secret_key = env.get("GATEWAY_SECRET_KEY", "")
    if strict and len(secret_key) < 16:
        raise ConfigError("GATEWAY_SECRET_KEY: not set or shorter than 16 characters (it signs browser tokens)")
    return Config(
        secret_key=secret_key,
        database_url=found.database_url,
        api_keys=_split(env.get("GATEWAY_API_KEYS")),
        metrics_token=env.get("GATEWAY_METRICS_TOKEN", ""),
        sources=sources,
        endpoints=endpoints,
        allowed_origins=tuple(origins),
        env=env,
        resolution=found,
        **settings,
    )


def _source(name: str, raw: Any, env: Mapping[str, str], strict: bool) -> SourceConfig:
    where = f"sources.{name}"
    if not SOURCE_NAME_RE.match(name) or name in RESERVED_SOURCES:
        raise ConfigError(f"{where}: a source name is lowercase letters, digits, _ and - (and not {sorted(RESERVED_SOURCES)})")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    common: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key in COMMON_SOURCE_KEYS:
            common[key] = _typed(f"{where}.{key}", value, COMMON_SOURCE_KEYS[key])
        else:
            options[key] = value
    for key in options:
        hint = did_you_mean(key, set(COMMON_SOURCE_KEYS) - set(common), cutoff=0.8)
        if hint:  # a misspelt common key, named before the "required" it would otherwise cause
            raise ConfigError(f"{where}.{key}: unknown setting{hint}")
    if not common.get("adapter"):
        raise ConfigError(f"{where}.adapter: required")
    if not common.get("secrets_env") and not common.get("secrets_file"):
        raise ConfigError(f"{where}.secrets_env: required (or secrets_file)")
    common.setdefault("secrets_env", "")
    secrets = _split(env.get(common["secrets_env"])) if common["secrets_env"] else ()
    if common.get("secrets_file"):
        secrets += tuple(s for s in read_secrets_file(common["secrets_file"], f"{where}.secrets_file") if s not in secrets)
    if strict and not secrets:
        named = " / ".join(filter(None, [common["secrets_env"] and f"environment variable {common['secrets_env']}", common.get("secrets_file")]))
        raise ConfigError(f"{where}.secrets_env: no secret set ({named} is not set or empty)")
    for key in ("stall_after", "reconcile_after"):
        if common.get(key) == 0:
            raise ConfigError(f"{where}.{key}: must be positive")
    return SourceConfig(name=name, secrets=secrets, options=options, **common)


def _check_secret(secret: str, where: str) -> None:
    body = secret[len("whsec_"):] if secret.startswith("whsec_") else None
    try:
        if body is None or not base64.b64decode(body, validate=True):
            raise ValueError
    except (ValueError, binascii.Error):
        raise ConfigError(f"{where}: expected whsec_ followed by base64 (a Standard Webhooks secret)") from None


def parse_endpoints(raw: Any, env: Mapping[str, str], source_names: set[str], strict: bool) -> dict[str, EndpointConfig]:
    """The ``[endpoints.<name>]`` tables, checked; every problem is a ConfigError naming the key.
    ``strict=False`` tolerates unset secrets (CLI listings)."""
    if not isinstance(raw, dict):
        raise ConfigError("endpoints: expected tables [endpoints.<name>]")
    return {name: _endpoint(name, table, env, source_names, strict) for name, table in raw.items()}


def _endpoint(name: str, raw: Any, env: Mapping[str, str], source_names: set[str], strict: bool) -> EndpointConfig:
    where = f"endpoints.{name}"
    if not SOURCE_NAME_RE.match(name):
        raise ConfigError(f"{where}: an endpoint name is lowercase letters, digits, _ and -")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in ENDPOINT_KEYS:
            raise ConfigError(f"{where}.{key}: unknown setting{did_you_mean(key, ENDPOINT_KEYS)}")
        values[key] = _typed(f"{where}.{key}", value, ENDPOINT_KEYS[key])
    url = values.get("url")
    if not url:
        raise ConfigError(f"{where}.url: required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}.url: expected an http:// or https:// URL, got {public_url(url)!r}")
    if not values.get("secret_env"):
        raise ConfigError(f"{where}.secret_env: required (an environment variable holding whsec_ secrets)")
    secrets = _split(env.get(values["secret_env"]))
    if strict and not secrets:
        raise ConfigError(f"{where}.secret_env: no secret set (environment variable {values['secret_env']} is not set or empty)")
    for secret in secrets:
        _check_secret(secret, f"{where}.secret_env")
    events = values.get("events", ["job.*"])
    for pattern in events:
        if not isinstance(pattern, str) or not EVENT_PATTERN_RE.match(pattern):
            raise ConfigError(f"{where}.events: expected patterns like 'job.*' or 'delivery.stripe', got {pattern!r}")
    sources = values.get("sources")
    if sources is not None:
        for source in sources:
            if source not in source_names:
                raise ConfigError(f"{where}.sources: no source {source!r}{did_you_mean(str(source), source_names)}")
    return EndpointConfig(name=name, url=url, secret_env=values["secret_env"], secrets=secrets,
                          events=tuple(events), sources=tuple(sources) if sources is not None else None)


def read_secrets_file(path: str, key: str) -> tuple[str, ...]:
    """Secrets from a file, one a line (blank lines and ``#`` comments ignored), e.g. a mounted
    Kubernetes secret. Read at every worker start, so a reload (``kill -HUP`` the gunicorn
    master) applies a rotation without restarting the server."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file {path!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {type(exc).__name__}") from None
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def source_secrets(source: SourceConfig, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The source's active secrets, re-read from the environment given (rotation by reload)."""
    if env is None:
        return source.secrets
    return _split(env.get(source.secrets_env))

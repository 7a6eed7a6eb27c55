"""Settings, read once from the environment (and Secret Manager) into a frozen dataclass.

Missing or malformed configuration raises ConfigError at cold start with one sentence that
names the variable, never per request. A variable `X` that holds a secret can instead be given
as `X_SECRET`, the name of a Secret Manager version
(`projects/<project>/secrets/<name>/versions/<version>`), read once at cold start; the Secret
Manager client is imported only when such a variable is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from functions.errors import ConfigError

SecretReader = Callable[[str], str]

DEFAULT_MAX_BATCH_EVENTS = 10_000
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
DEFAULT_FUTURE_SKEW_SECONDS = 300
DEFAULT_TIME_BUDGET_SECONDS = 50.0
DEFAULT_RATE_LIMIT_REQUESTS_PER_MINUTE = 6_000
DEFAULT_RATE_LIMIT_EVENTS_PER_MINUTE = 600_000

SECRET_VARIABLES = ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_JWT_SECRET", "DATABASE_URL")


@dataclass(frozen=True)
class Settings:
    """Everything the functions read from their environment."""

    supabase_url: str | None = None
    """Project URL, e.g. https://<ref>.supabase.co. Selects the REST sink (unless DATABASE_URL)."""

    service_role_key: str | None = field(default=None, repr=False)
    """Key the REST sink writes with (legacy service_role JWT or an sb_secret_ key)."""

    jwt_secret: str | None = field(default=None, repr=False)
    """HS256 secret that verifies legacy Supabase JWTs."""

    jwks_url: str | None = None
    """Where the project's public signing keys are; derived from supabase_url when unset."""

    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    """sb_secret_ keys accepted as service credentials."""

    database_url: str | None = field(default=None, repr=False)
    """Direct Postgres connection (Supavisor transaction pooler in production). Selects the
    direct sink."""

    max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS
    """Most events one request may carry (413 above it)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Largest request body, measured after gzip decompression (413 above it)."""

    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    """Largest single event, as compact JSON; a larger event is rejected, not the batch."""

    future_skew_seconds: int = DEFAULT_FUTURE_SKEW_SECONDS
    """How far in the future a timestamp may be (the table's check allows 5 minutes)."""

    time_budget_seconds: float = DEFAULT_TIME_BUDGET_SECONDS
    """How long a request may spend writing, retries included; keep it under the function's
    timeout."""

    rate_limit_requests_per_minute: int = DEFAULT_RATE_LIMIT_REQUESTS_PER_MINUTE
    """batch_import requests one caller may make per minute, across all instances (429 above
    it); 0 turns the limit off. The defaults are sized in docs/functions.md ("Rate limits: how
    the defaults were sized")."""

    rate_limit_events_per_minute: int = DEFAULT_RATE_LIMIT_EVENTS_PER_MINUTE
    """Events one caller may send to batch_import per minute; 0 turns the limit off. Must be
    at least MAX_BATCH_EVENTS, or a full batch could never pass."""

    @property
    def sink(self) -> Literal["postgres", "rest"] | None:
        if self.database_url:
            return "postgres"
        if self.supabase_url and self.service_role_key:
            return "rest"
        return None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        read_secret: SecretReader | None = None,
        needs_sink: bool = True,
        needs_credentials: bool = True,
    ) -> Settings:
        """The settings of ``environ`` (default: the process environment). ``needs_sink`` and
        ``needs_credentials`` say whether a sink and a way to check service credentials must be
        configured (the functions need the second, batch_import the first as well; replay,
        which writes directly and checks no credential, needs neither)."""
        env = dict(os.environ if environ is None else environ)
        reader = read_secret or _read_secret_manager
        for name in SECRET_VARIABLES:
            version = env.get(f"{name}_SECRET")
            if version and not env.get(name):
                try:
                    env[name] = reader(version).strip()
                except Exception as exc:  # any failure to read a secret is a cold-start failure
                    raise ConfigError(
                        f"{name}_SECRET: could not read Secret Manager version {version!r} "
                        f"({type(exc).__name__})"
                    ) from exc

        supabase_url = _url(env, "SUPABASE_URL")
        jwks_url = _url(env, "SUPABASE_JWKS_URL") or (
            f"{supabase_url.rstrip('/')}/auth/v1/.well-known/jwks.json" if supabase_url else None
        )
        secret_keys = tuple(
            k.strip() for k in env.get("SUPABASE_SECRET_KEYS", "").split(",") if k.strip()
        )
        for key in secret_keys:
            if not key.startswith("sb_secret_"):
                raise ConfigError("SUPABASE_SECRET_KEYS: every key must start with sb_secret_")
        database_url = env.get("DATABASE_URL") or None
        if database_url and urlsplit(database_url).scheme not in ("postgres", "postgresql"):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")

        settings = cls(
            supabase_url=supabase_url,
            service_role_key=env.get("SUPABASE_SERVICE_ROLE_KEY") or None,
            jwt_secret=env.get("SUPABASE_JWT_SECRET") or None,
            jwks_url=jwks_url,
            secret_keys=secret_keys,
            database_url=database_url,
            max_batch_events=_positive_int(env, "MAX_BATCH_EVENTS", DEFAULT_MAX_BATCH_EVENTS),
            max_body_bytes=_positive_int(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_event_bytes=_positive_int(env, "MAX_EVENT_BYTES", DEFAULT_MAX_EVENT_BYTES),
            future_skew_seconds=_positive_int(
                env, "FUTURE_SKEW_SECONDS", DEFAULT_FUTURE_SKEW_SECONDS
            ),
            time_budget_seconds=float(
                _positive_int(env, "TIME_BUDGET_SECONDS", int(DEFAULT_TIME_BUDGET_SECONDS))
            ),
            rate_limit_requests_per_minute=_count(
                env, "RATE_LIMIT_REQUESTS_PER_MINUTE", DEFAULT_RATE_LIMIT_REQUESTS_PER_MINUTE
            ),
            rate_limit_events_per_minute=_count(
                env, "RATE_LIMIT_EVENTS_PER_MINUTE", DEFAULT_RATE_LIMIT_EVENTS_PER_MINUTE
            ),
        )
        if needs_credentials and not (
            settings.jwt_secret or settings.jwks_url or settings.secret_keys
        ):
            raise ConfigError(
                "no service credential can be checked: set SUPABASE_JWT_SECRET, SUPABASE_URL "
                "(for its JWKS) or SUPABASE_SECRET_KEYS"
            )
        if needs_sink and settings.sink is None:
            raise ConfigError(
                "batch_import has nowhere to write: set DATABASE_URL (direct sink) or "
                "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (REST sink)"
            )
        if 0 < settings.rate_limit_events_per_minute < settings.max_batch_events:
            raise ConfigError(
                "RATE_LIMIT_EVENTS_PER_MINUTE must be 0 (off) or at least MAX_BATCH_EVENTS "
                f"({settings.max_batch_events}), or a full batch could never pass"
            )
        if settings.max_event_bytes > settings.max_body_bytes:
            raise ConfigError("MAX_EVENT_BYTES must not exceed MAX_BODY_BYTES")
        return settings


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _whole(env, name, default, minimum=1, requirement="greater than zero")


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number of zero or more (zero: the limit is off)."""
    return _whole(env, name, default, minimum=0, requirement="0 (off) or more")


def _whole(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, requirement: str
) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        # The value is not repeated: a secret pasted into the wrong variable would be logged.
        raise ConfigError(f"{name} must be a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name} must be {requirement}, got {value}")
    return value


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL with a host")
    return raw


def _read_secret_manager(version: str) -> str:
    # Imported here so that cold start does not pay for the client unless a secret is used.
    from google.cloud import secretmanager

    client = secretmanager.SecretManagerServiceClient()
    response = client.access_secret_version(name=version)
    return str(response.payload.data.decode("utf-8"))

"""Configuration fails fast with a sentence that names the variable; logs are Cloud Logging
JSON lines that never carry a key or a token."""

from __future__ import annotations

import io
import json
import logging

import pytest

from functions import log
from functions.config import Settings
from functions.errors import ConfigError

BASE = {
    "SUPABASE_JWT_SECRET": "x" * 40,
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
}


def test_defaults_are_documented_values() -> None:
    settings = Settings.from_env(BASE)
    assert settings.sink == "postgres"
    assert settings.max_batch_events == 10_000
    assert settings.max_body_bytes == 16 * 1024 * 1024
    assert settings.max_event_bytes == 64 * 1024
    assert settings.future_skew_seconds == 300


def test_rest_sink_and_derived_jwks_url() -> None:
    settings = Settings.from_env(
        {"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "sb_secret_abc"}
    )
    assert settings.sink == "rest"
    assert settings.jwks_url == "https://abc.supabase.co/auth/v1/.well-known/jwks.json"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({**BASE, "MAX_BATCH_EVENTS": "lots"}, "MAX_BATCH_EVENTS"),
        ({**BASE, "MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES"),
        ({**BASE, "DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({**BASE, "SUPABASE_URL": "abc.supabase.co"}, "SUPABASE_URL"),
        ({**BASE, "SUPABASE_SECRET_KEYS": "not-a-secret-key"}, "SUPABASE_SECRET_KEYS"),
        ({"DATABASE_URL": BASE["DATABASE_URL"]}, "SUPABASE_JWT_SECRET"),
        ({"SUPABASE_JWT_SECRET": "x" * 40}, "DATABASE_URL"),
        ({**BASE, "MAX_EVENT_BYTES": "100", "MAX_BODY_BYTES": "10"}, "MAX_EVENT_BYTES"),
    ],
)
def test_bad_configuration_names_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert names in caught.value.message


def test_functions_that_do_not_write_need_no_sink() -> None:
    assert Settings.from_env({"SUPABASE_JWT_SECRET": "x" * 40}, needs_sink=False).sink is None


def test_secrets_come_from_secret_manager_once_and_never_show_in_repr() -> None:
    asked: list[str] = []

    def reader(version: str) -> str:
        asked.append(version)
        return "jwt-secret-from-secret-manager-0123456789\n"

    settings = Settings.from_env(
        {
            "SUPABASE_JWT_SECRET_SECRET": "projects/p/secrets/jwt/versions/latest",
            "DATABASE_URL": BASE["DATABASE_URL"],
        },
        read_secret=reader,
    )
    assert settings.jwt_secret == "jwt-secret-from-secret-manager-0123456789"
    assert asked == ["projects/p/secrets/jwt/versions/latest"]
    assert "jwt-secret-from-secret-manager" not in repr(settings)


def test_unreadable_secret_fails_at_cold_start() -> None:
    def reader(version: str) -> str:
        raise PermissionError("denied")

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {**BASE, "SUPABASE_SERVICE_ROLE_KEY_SECRET": "projects/p/secrets/k/versions/1"},
            read_secret=reader,
        )
    assert "SUPABASE_SERVICE_ROLE_KEY_SECRET" in caught.value.message


def _capture(message: str, *args: object, **fields: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log.CloudLoggingFormatter())
    logger = logging.getLogger("functions.test-capture")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, *args, extra={"fields": fields})
    finally:
        logger.removeHandler(handler)
    parsed: dict[str, object] = json.loads(stream.getvalue())
    return parsed


def test_log_line_is_cloud_logging_json_with_request_and_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "coach-prod")
    log.request_id_var.set("req-123")
    log.trace_var.set(log.trace_from_header("105445aa7843bc8bf206b12000100000/1;o=1"))
    entry = _capture("batch_import answered %s", 200, status=200, latency_ms=12.5)
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "batch_import answered 200"
    assert entry["request_id"] == "req-123"
    assert (
        entry["logging.googleapis.com/trace"]
        == "projects/coach-prod/traces/105445aa7843bc8bf206b12000100000"
    )
    assert entry["latency_ms"] == 12.5


def test_keys_and_tokens_are_redacted_from_log_lines() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLXZhbHVl"
    entry = _capture(
        "caller sent %s and %s to %s",
        token,
        "sb_secret_N7UND0UgjKTVK",
        "postgresql://postgres:hunter2@db:5432/postgres",
    )
    text = json.dumps(entry)
    assert token not in text
    assert "N7UND0UgjKTVK" not in text
    assert "hunter2" not in text

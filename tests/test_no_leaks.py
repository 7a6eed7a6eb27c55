"""Secrets and health data never leak: every code path runs with recognizable secrets and payload
values, all log output is captured (every logger at DEBUG, the package's JSON lines, stdout and
stderr), and no secret, token or payload value may appear in it; no payload value may appear
in a response either.

To cover a new path, add a `LeakPath` to PATHS (or a `ColdStart` to COLD_STARTS): the request
it sends, the status it must get, and, if it needs one, a `setup` that prepares the database or
installs a fake sink. Put the canaries below into whatever the path sends.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from functions import handlers, log, rate_limit
from functions.errors import ConfigError
from functions.sinks import FailureRecord, WriteResult
from localdb.cluster import free_port
from tests import json_http
from tests.conftest import AppFactory, Database

# --- canaries -----------------------------------------------------------------------------------

JWT_SECRET = "LEAK-JWT-SECRET-7731-0123456789abcdef0123456789"
SECRET_KEY = "sb_secret_LEAKKEY7731abcdefghijklmnop"
OTHER_SECRET = "LEAK-OTHER-SECRET-7731-0123456789abcdef01234567"
DB_PASSWORD = "LEAK-DB-PASSWORD-7731"
PAYLOAD = "PAYLOAD-CANARY-7731"
PAYLOAD_ZONE = "Payload/Canary_7731"
PAYLOAD_TIME = "PAYLOAD-CANARY-7731T07:30:00"
LONG_PAYLOAD_ID = PAYLOAD + "-" + "x" * 80  # event_ids up to 64 characters are echoed by design

ANA = "a1a1a1a1-0000-4000-8000-000000000001"
NOBODY = "00000000-0000-4000-8000-00000000dead"


def mint(
    role: str = "service_role", *, secret: str = JWT_SECRET, exp_in: int = 3600, **claims: Any
) -> str:
    now = int(time.time())
    body = {"role": role, "iat": now, "exp": now + exp_in, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


SERVICE_TOKEN = mint(sub=PAYLOAD)
TOKENS = {
    "service": SERVICE_TOKEN,
    "user": mint("authenticated", sub=PAYLOAD, email=f"{PAYLOAD}@example.com"),
    "anon": mint("anon"),
    "expired": mint(exp_in=-3600),
    "forged": mint(secret=OTHER_SECRET),
    "not-yet": mint(nbf=int(time.time()) + 3600),
}
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_KID = "leak-kid-7731"
EC_JWK = {
    **json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(EC_KEY.public_key())),
    "kid": EC_KID,
    "alg": "ES256",
    "use": "sig",
}
EC_PRIVATE_NUMBER = str(EC_KEY.private_numbers().private_value)


def mint_es256(kid: str = EC_KID, **claims: Any) -> str:
    now = int(time.time())
    body = {"role": "service_role", "iat": now, "exp": now + 3600, "sub": PAYLOAD, **claims}
    return jwt.encode(body, EC_KEY, algorithm="ES256", headers={"kid": kid})


TOKENS["jwks"] = mint_es256()
TOKENS["jwks-unknown-kid"] = mint_es256(kid="another-kid")
REST_KEY = "sb_secret_LEAKRESTKEY7731abcdefghijklmnop"
SECRETS = [
    JWT_SECRET,
    SECRET_KEY,
    OTHER_SECRET,
    DB_PASSWORD,
    REST_KEY,
    EC_PRIVATE_NUMBER,
    *TOKENS.values(),
]
# A JWT leaks if any of its parts does (the payload part alone carries the claims).
SECRET_PARTS = [part for token in TOKENS.values() for part in token.split(".")[1:]]
PAYLOADS = [PAYLOAD, "7731T07:30", "Canary_7731", "x" * 80]


def service() -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_TOKEN}"}


def canary_event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "user_id": ANA,
        "event_type": "steps_import",
        "timestamp": "2025-06-01T07:30:00Z",
        "value": {"steps": 1234, "device": PAYLOAD, "external_id": PAYLOAD},
    }
    base.update(changes)
    return base


BAD_EVENTS = [
    canary_event(user_id=PAYLOAD),
    canary_event(event_type=PAYLOAD),
    canary_event(timestamp=PAYLOAD_TIME),
    canary_event(timestamp="2025-06-01T07:30:00", timezone=PAYLOAD_ZONE),
    canary_event(value={"steps": PAYLOAD}),
    canary_event(value={"steps": 1, PAYLOAD: PAYLOAD}),
    canary_event(event_type="app_open", value={"platform": PAYLOAD, "os_version": PAYLOAD}),
    canary_event(event_type="custom_x", value={PAYLOAD: [PAYLOAD]}, event_id=LONG_PAYLOAD_ID),
    canary_event(user_id=NOBODY, timestamp="2025-06-01T07:31:00Z"),
    canary_event(timestamp="2999-01-01T00:00:00Z"),
]


# --- fakes --------------------------------------------------------------------------------------


class ExplodingSink:
    """A sink whose write fails with an unexpected error quoting the payload, as a driver error
    about a value might."""

    def write(
        self, rows: Sequence[Any], *, atomic: bool, deadline: float, **rate: Any
    ) -> WriteResult:
        raise RuntimeError(f"cannot adapt value {rows[0].value!r} ({PAYLOAD})")

    def record_failures(self, failures: Sequence[FailureRecord], *, deadline: float) -> int:
        raise RuntimeError(f"cannot store {failures[0].event}")

    def take_rate_limit(self, caller: str, events: int, **limits: Any) -> int:
        return 0

    def close(self) -> None:
        pass


def _with_password(url: str, user: str = "postgres") -> str:
    return url.replace("postgres@", f"{user}:{DB_PASSWORD}@", 1)


def _writer_without_grants(world: World) -> dict[str, str]:
    """A login role that may connect but not write: the store refuses (502)."""
    with world.db.connect() as conn:
        # Roles belong to the cluster, which outlives this test's database.
        conn.execute(
            "do $$ begin create role leak_writer login;"
            " exception when duplicate_object then null; end $$"
        )
    return {"DATABASE_URL": _with_password(world.db.url, "leak_writer")}


def _closed_port(world: World) -> dict[str, str]:
    return {"DATABASE_URL": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{free_port()}/x"}


def _rest_sink(events_answer: str) -> Callable[[World], dict[str, str]]:
    """The REST sink, against the stand-in answering writes as `events_answer` says."""

    def setup(world: World) -> dict[str, str]:
        world.stand_in.events_answer = events_answer
        return {
            "DATABASE_URL": "",
            "SUPABASE_URL": world.stand_in.url,
            "SUPABASE_SERVICE_ROLE_KEY": REST_KEY,
            "TIME_BUDGET_SECONDS": "5",
        }

    return setup


def _over_rate_limit(world: World) -> dict[str, str]:
    """The service token's caller has spent this minute's allowance (429 from the database)."""
    caller = rate_limit.caller_name("legacy_jwt", PAYLOAD)  # SERVICE_TOKEN's sub is PAYLOAD
    with world.db.connect() as conn:
        conn.execute(
            "insert into private.rate_limit_windows (caller, window_start, requests, events)"
            " values (%s, date_trunc('minute', clock_timestamp()), 1000000, 0)",
            (caller,),
        )
    return {"RATE_LIMIT_REQUESTS_PER_MINUTE": "10"}


def _dead_letter_refused(world: World) -> dict[str, str]:
    """The dead-letter function is missing after the valid events were written (502)."""
    with world.db.connect() as conn:
        conn.execute("drop function public.record_engagement_failures(jsonb)")
    return {}


def _jwks(world: World) -> dict[str, str]:
    return {"SUPABASE_JWKS_URL": f"{world.stand_in.url}/auth/v1/.well-known/jwks.json"}


def _jwks_down(world: World) -> dict[str, str]:
    return {"SUPABASE_JWKS_URL": f"http://127.0.0.1:{free_port()}/auth/v1/.well-known/jwks.json"}


class StandIn:
    """A local HTTP server standing in for the project: its JWKS, and the Data API routes the
    REST sink uses (documented shapes only). A refused write quotes the row, as PostgreSQL's
    `Failing row contains (...)` detail does."""

    def __init__(self) -> None:
        self.events_answer = "ok"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any, **headers: str) -> None:
                json_http.answer(self, status, json.dumps(body).encode(), headers)

            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/jwks.json"):
                    self._answer(200, {"keys": [EC_JWK]})
                else:
                    self._answer(404, {})

            def do_POST(self) -> None:
                sent = json_http.read_body(self)
                if self.path.startswith("/rest/v1/rpc/take_engagement_rate_limit"):
                    self._answer(200, 0)
                elif self.path.startswith("/rest/v1/rpc/record_engagement_failures"):
                    self._answer(200, len(sent["failures"]))
                elif self.path.startswith("/rest/v1/rpc/ingest_engagement_events"):
                    if stand_in.events_answer == "refuse":
                        self._answer(
                            400,
                            {
                                "code": "23514",
                                "message": 'new row for relation "engagement_events" '
                                "violates check constraint",
                                "details": f"Failing row contains ({json.dumps(sent)[:300]}).",
                                "hint": None,
                            },
                        )
                    elif stand_in.events_answer == "busy":
                        self._answer(
                            503,
                            {
                                "code": "PGRST000",
                                "message": "database busy",
                                "details": None,
                                "hint": None,
                            },
                            **{"Retry-After": "30"},
                        )
                    else:
                        counts = {"updated": 0, "deleted": 0, "duplicates": 0}
                        self._answer(
                            200,
                            {
                                "inserted": len(sent["events"]),
                                **counts,
                                "unknown_users": [],
                                "conflicts": [],
                                "retry_after": None,
                            },
                        )
                else:
                    self._answer(404, {})

        return Handler


@dataclass
class World:
    """What a path's setup may prepare."""

    db: Database
    stand_in: StandIn


# --- the paths ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeakPath:
    """One request to one function and the status it must get."""

    name: str
    target: str
    status: int
    request: Callable[[], dict[str, Any]]
    method: str = "POST"
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[World], dict[str, str]] | None = None
    """Prepares the database or the stand-in; returns environment variables to set (such as
    DATABASE_URL)."""
    sink: Callable[[], Any] | None = None


def _batch(events: list[Any], **envelope: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"json": {"events": events, **envelope}, "headers": service()}


def _as(headers: dict[str, str], body: Any = None) -> Callable[[], dict[str, Any]]:
    return lambda: {"json": body if body is not None else [canary_event()], "headers": headers}


PATHS: list[LeakPath] = [
    LeakPath("import-ok", "batch_import", 200, _batch([canary_event()])),
    LeakPath("import-partial", "batch_import", 200, _batch([canary_event(), *BAD_EVENTS])),
    LeakPath("import-all-rejected", "batch_import", 422, _batch(BAD_EVENTS)),
    LeakPath(
        "import-atomic", "batch_import", 422, _batch([canary_event(), *BAD_EVENTS], mode="atomic")
    ),
    LeakPath(
        "import-default-zone",
        "batch_import",
        400,
        _batch([canary_event()], default_timezone=PAYLOAD_ZONE),
    ),
    LeakPath("import-mode", "batch_import", 400, _batch([canary_event()], mode=PAYLOAD)),
    LeakPath(
        "import-rate-limited",
        "batch_import",
        429,
        _batch([canary_event(), *BAD_EVENTS]),
        setup=_over_rate_limit,
    ),
    LeakPath(
        "import-dead-letter-refused",
        "batch_import",
        502,
        _batch([canary_event(), *BAD_EVENTS]),
        setup=_dead_letter_refused,
    ),
    LeakPath(
        "import-bad-json",
        "batch_import",
        400,
        lambda: {
            "data": json.dumps([canary_event()])[:-5].encode(),
            "content_type": "application/json",
            "headers": service(),
        },
    ),
    LeakPath(
        "import-duplicate-key",
        "batch_import",
        400,
        lambda: {
            "data": ('[{"value": {"' + PAYLOAD + '": 1, "' + PAYLOAD + '": 2}}]').encode(),
            "content_type": "application/json",
            "headers": service(),
        },
    ),
    LeakPath(
        "import-oversized-event",
        "batch_import",
        200,
        _batch([canary_event(), canary_event(value={"device": PAYLOAD * 100})]),
        env={"MAX_EVENT_BYTES": "1024"},
    ),
    LeakPath(
        "import-too-many",
        "batch_import",
        413,
        _batch([canary_event()] * 3),
        env={"MAX_BATCH_EVENTS": "2"},
    ),
    LeakPath(
        "import-body-too-big",
        "batch_import",
        413,
        _batch([canary_event(value={"device": PAYLOAD * 200})]),
        env={"MAX_BODY_BYTES": "2048", "MAX_EVENT_BYTES": "1024"},
    ),
    LeakPath(
        "import-store-down", "batch_import", 503, _batch([canary_event()]), setup=_closed_port
    ),
    LeakPath(
        "import-store-refuses",
        "batch_import",
        502,
        _batch([canary_event(), *BAD_EVENTS]),
        setup=_writer_without_grants,
    ),
    LeakPath(
        "import-unexpected-failure",
        "batch_import",
        500,
        _batch([canary_event()]),
        sink=ExplodingSink,
    ),
    LeakPath(
        "import-rest-ok",
        "batch_import",
        200,
        _batch([canary_event(), *BAD_EVENTS]),
        setup=_rest_sink("ok"),
    ),
    LeakPath(
        "import-rest-refused",
        "batch_import",
        502,
        _batch([canary_event(), *BAD_EVENTS]),
        setup=_rest_sink("refuse"),
    ),
    LeakPath(
        "import-rest-busy", "batch_import", 503, _batch([canary_event()]), setup=_rest_sink("busy")
    ),
    LeakPath(
        "import-jwks-ok",
        "batch_import",
        200,
        _as({"Authorization": f"Bearer {TOKENS['jwks']}"}),
        setup=_jwks,
    ),
    LeakPath(
        "import-jwks-unknown-kid",
        "batch_import",
        401,
        _as({"Authorization": f"Bearer {TOKENS['jwks-unknown-kid']}"}),
        setup=_jwks,
    ),
    LeakPath(
        "import-jwks-down",
        "batch_import",
        401,
        _as({"Authorization": f"Bearer {TOKENS['jwks']}"}),
        setup=_jwks_down,
    ),
    LeakPath("import-no-credentials", "batch_import", 401, _as({})),
    LeakPath(
        "import-forged", "batch_import", 401, _as({"Authorization": f"Bearer {TOKENS['forged']}"})
    ),
    LeakPath(
        "import-expired", "batch_import", 401, _as({"Authorization": f"Bearer {TOKENS['expired']}"})
    ),
    LeakPath(
        "import-not-yet", "batch_import", 401, _as({"Authorization": f"Bearer {TOKENS['not-yet']}"})
    ),
    LeakPath(
        "import-user", "batch_import", 403, _as({"Authorization": f"Bearer {TOKENS['user']}"})
    ),
    LeakPath("import-anon", "batch_import", 403, _as({"apikey": TOKENS["anon"]})),
    LeakPath("import-wrong-key", "batch_import", 401, _as({"apikey": SECRET_KEY + "x"})),
    LeakPath(
        "import-key-in-basic",
        "batch_import",
        401,
        _as({"Authorization": f"Basic {SECRET_KEY}"}),
    ),
    LeakPath(
        "import-two-tokens",
        "batch_import",
        401,
        _as({"Authorization": f"Bearer {SERVICE_TOKEN} {SECRET_KEY}"}),
    ),
    LeakPath("import-secret-key-ok", "batch_import", 200, _as({"apikey": SECRET_KEY})),
    LeakPath(
        "convert-one",
        "convert_timestamps",
        422,
        lambda: {
            "query_string": {"timestamp": PAYLOAD_TIME, "timezone": PAYLOAD_ZONE},
            "headers": service(),
        },
        method="GET",
    ),
    LeakPath(
        "convert-many",
        "convert_timestamps",
        200,
        lambda: {
            "json": {
                "timestamps": [
                    {"timestamp": PAYLOAD_TIME},
                    {"timestamp": "2024-12-01T08:30:00", "timezone": PAYLOAD_ZONE},
                    {"timestamp": PAYLOAD, "timezone": "Europe/Berlin"},
                    {"timestamp": "2024-12-01T08:30:00Z"},
                ]
            },
            "headers": service(),
        },
    ),
    LeakPath(
        "convert-default-zone",
        "convert_timestamps",
        400,
        lambda: {
            "json": {
                "timestamps": [{"timestamp": "2024-12-01T08:30:00"}],
                "default_timezone": PAYLOAD_ZONE,
            },
            "headers": service(),
        },
    ),
    LeakPath(
        "convert-unknown-key",
        "convert_timestamps",
        400,
        lambda: {
            "json": {"timestamps": [{"timestamp": PAYLOAD}], "x": PAYLOAD},
            "headers": service(),
        },
    ),
    LeakPath("verify-ok", "verify_service_jwt", 200, lambda: {"headers": service()}, method="GET"),
    LeakPath(
        "verify-key-in-body", "verify_service_jwt", 200, lambda: {"json": {"token": SECRET_KEY}}
    ),
    LeakPath(
        "verify-forged-in-body",
        "verify_service_jwt",
        401,
        lambda: {"json": {"token": TOKENS["forged"]}},
    ),
    LeakPath(
        "verify-user-in-body",
        "verify_service_jwt",
        403,
        lambda: {"json": {"token": TOKENS["user"]}},
    ),
    LeakPath(
        "verify-garbage-in-body", "verify_service_jwt", 401, lambda: {"json": {"token": PAYLOAD}}
    ),
    LeakPath(
        "verify-body-not-object", "verify_service_jwt", 400, lambda: {"json": [SECRET_KEY, PAYLOAD]}
    ),
]


@dataclass(frozen=True)
class ColdStart:
    """An environment the functions must refuse to start with."""

    name: str
    env: dict[str, str]


COLD_STARTS: list[ColdStart] = [
    ColdStart("database-url-scheme", {"DATABASE_URL": f"mysql://u:{DB_PASSWORD}@db/x"}),
    ColdStart("jwt-secret-short", {"SUPABASE_JWT_SECRET": "LEAK-7731-short"}),
    ColdStart(
        "secret-key-prefix", {"SUPABASE_SECRET_KEYS": f"{SECRET_KEY},LEAK-KEY-7731-noprefix"}
    ),
    ColdStart("no-sink", {"DATABASE_URL": ""}),
    ColdStart("limit-not-a-number", {"MAX_BODY_BYTES": DB_PASSWORD}),
]


# --- capture ------------------------------------------------------------------------------------


class _Collector(logging.Handler):
    """Keeps every record of the package: as emitted (Cloud Logging JSON) and raw (message,
    arguments and fields before redaction)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.emitted: list[str] = []
        self.raw: list[str] = []
        self.cloud = log.CloudLoggingFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.emitted.append(self.cloud.format(record))
        self.raw.append(
            " ".join(
                [
                    record.getMessage(),
                    json.dumps(getattr(record, "fields", None), default=str),
                ]
            )
        )


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[_Collector]:
    caplog.set_level(logging.DEBUG)
    collector = _Collector()
    package = logging.getLogger("functions")
    previous = (list(package.handlers), package.level, package.propagate)
    # Start as a fresh instance does: log.setup() (run when main.py is loaded) then writes to
    # this test's stdout, not to a capture of an earlier test.
    for handler in previous[0]:
        package.removeHandler(handler)
    package.propagate = True
    package.addHandler(collector)
    package.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        for handler in list(package.handlers):
            package.removeHandler(handler)
        for handler in previous[0]:
            package.addHandler(handler)
        package.setLevel(previous[1])
        package.propagate = previous[2]


def _log_text(
    collector: _Collector, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> str:
    out, err = capfd.readouterr()
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    others = [formatter.format(record) for record in caplog.records]
    return "\n".join([*collector.emitted, *collector.raw, *others, out, err])


def _assert_clean_logs(text: str) -> None:
    assert text.strip(), "the path logged nothing at all: the capture is broken"
    for secret in [*SECRETS, *SECRET_PARTS]:
        assert secret not in text, f"a secret or token appears in the logs: {secret[:12]}..."
    for payload in PAYLOADS:
        assert payload not in text, f"a payload value appears in the logs: {payload}"


def _assert_clean_response(body: bytes, headers: dict[str, str]) -> None:
    text = body.decode("utf-8", errors="replace") + json.dumps(headers)
    for secret in [*SECRETS, *SECRET_PARTS]:
        assert secret not in text, f"a secret or token appears in the response: {secret[:12]}..."
    for payload in PAYLOADS:
        assert payload not in text, f"a payload value is echoed in the response: {payload}"


def _base_env(db: Database) -> dict[str, str | None]:
    return {
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "SUPABASE_SECRET_KEYS": SECRET_KEY,
        "DATABASE_URL": _with_password(db.url),
        "SUPABASE_URL": None,
    }


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.close()


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_no_secret_or_payload_leaks(
    path: LeakPath,
    db: Database,
    stand_in: StandIn,
    function_app: AppFactory,
    captured: _Collector,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    env = {**_base_env(db), **path.env}
    if path.setup is not None:
        env.update(path.setup(World(db, stand_in)))
    client = function_app(path.target, **env).test_client()
    if path.sink is not None:
        handlers.state()._sink = path.sink()
    response = client.open("/", method=path.method, **path.request())
    assert response.status_code == path.status, response.get_data()[:400]
    _assert_clean_response(response.get_data(), dict(response.headers))
    _assert_clean_logs(_log_text(captured, caplog, capfd))


@pytest.mark.parametrize("case", COLD_STARTS, ids=[c.name for c in COLD_STARTS])
def test_no_secret_leaks_at_cold_start(
    case: ColdStart,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    captured: _Collector,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    for name, value in {**_base_env(db), "FUNCTION_TARGET": "batch_import", **case.env}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        handlers.prepare()
    text = _log_text(captured, caplog, capfd)
    assert "configuration error" in text
    for secret in [*SECRETS, *case.env.values()]:
        assert not secret or secret not in caught.value.message
    _assert_clean_logs(text)
    for value in case.env.values():
        assert not value or value not in text


def test_the_checks_catch_a_leak(
    captured: _Collector, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """The capture sees the package's log lines, other loggers and stdout alike."""
    logging.getLogger("functions.handlers").info("value was %s", PAYLOAD)
    logging.getLogger("some.library").debug("password %s", DB_PASSWORD)
    print(JWT_SECRET)
    text = _log_text(captured, caplog, capfd)
    with pytest.raises(AssertionError, match="payload value"):
        _assert_clean_logs(text.replace(DB_PASSWORD, "").replace(JWT_SECRET, ""))
    with pytest.raises(AssertionError, match="secret or token"):
        _assert_clean_logs(text.replace(PAYLOAD, "").replace(JWT_SECRET, ""))
    with pytest.raises(AssertionError, match="secret or token"):
        _assert_clean_logs(text.replace(PAYLOAD, "").replace(DB_PASSWORD, ""))


def test_a_failed_log_write_does_not_print_the_exception_being_logged(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """logging's default reaction to a failed write prints a traceback whose chain includes the
    exception being logged; the package's handler prints one line instead."""
    stream = io.StringIO()
    handler = log._StdoutHandler(stream)
    handler.setFormatter(log.CloudLoggingFormatter())
    logger = logging.getLogger("functions.leak_probe")
    logger.addHandler(handler)
    logger.propagate = False
    stream.close()
    try:
        try:
            raise RuntimeError(f"cannot adapt {PAYLOAD}")
        except RuntimeError:
            logger.exception("unexpected failure")
    finally:
        logger.removeHandler(handler)
    out, err = capfd.readouterr()
    assert "a log line could not be written (ValueError)" in err
    assert PAYLOAD not in out + err

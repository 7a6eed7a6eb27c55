"""The three functions end to end against the real project: batch_import writing through the
REST sink (SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY, no DATABASE_URL), convert_timestamps and
verify_service_jwt checking the project's own credentials.

The functions run in this process through functions-framework's test client, exactly as
tests/test_http.py runs them against the local database; only the environment differs. Which
credential can call them depends on the project's keys: a secret key (sb_secret_...) is itself
the credential; a legacy service_role JWT needs SUPABASE_JWT_SECRET to be verified, and with
that secret an HS256 service token is minted and checked too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from flask.testing import FlaskClient

from functions import handlers
from tests.conftest import create_app, forget_function_state
from tests.live.api import Caller, DataApi, in_list
from tests.live.checks import Checks
from tests.live.conftest import LiveEnv, LiveUsers
from tests.live.report import LiveReport

AREA = "Functions through the REST sink"
IMPORT_TYPE = "live_check_import"
"""An event type only this test writes, so that counts are exact."""
_FUNCTION_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_URL_SECRET",
    "SUPABASE_SERVICE_ROLE_KEY_SECRET",
    "SUPABASE_JWT_SECRET_SECRET",
    "SUPABASE_JWKS_URL",
    "SUPABASE_SECRET_KEYS",
)


@dataclass(frozen=True)
class Credential:
    token: str
    key_type: str
    description: str


def service_credentials(env: LiveEnv, report: LiveReport) -> list[Credential]:
    """The service credentials of this project that the functions can verify."""
    found: list[Credential] = []
    key = env.service_key
    if key.startswith("sb_secret_"):
        found.append(Credential(key, "secret_key", "the project's secret key"))
    else:
        try:
            alg = jwt.get_unverified_header(key).get("alg")
        except jwt.PyJWTError:
            alg = None
        if alg == "HS256" and env.jwt_secret:
            found.append(Credential(key, "legacy_jwt", "the project's legacy service_role key"))
        elif alg in ("ES256", "RS256"):
            found.append(Credential(key, "jwks", f"the project's service_role key ({alg})"))
    if env.jwt_secret:
        now = int(time.time())
        minted = jwt.encode(
            {"role": "service_role", "iss": "supabase", "iat": now, "exp": now + 900},
            env.jwt_secret,
            algorithm="HS256",
        )
        report.add_secret(minted)
        found.append(Credential(minted, "legacy_jwt", "an HS256 token minted with the JWT secret"))
    return found


def no_credential_reason(env: LiveEnv) -> str:
    return (
        "the functions cannot verify any service credential of this project: the service key "
        "is a legacy HS256 JWT and SUPABASE_JWT_SECRET is not set (set it, or use an "
        "sb_secret_ key as SUPABASE_SERVICE_ROLE_KEY)"
    )


AppFactory = Callable[[str], FlaskClient]


def make_function_app(live_env: LiveEnv, monkeypatch: pytest.MonkeyPatch) -> AppFactory:
    """A factory of functions-framework apps configured for the project and the REST sink."""

    def factory(target: str) -> FlaskClient:
        for name in _FUNCTION_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("FUNCTION_TARGET", target)
        monkeypatch.setenv("SUPABASE_URL", live_env.url)
        monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", live_env.service_key)
        if live_env.jwt_secret:
            monkeypatch.setenv("SUPABASE_JWT_SECRET", live_env.jwt_secret)
        else:
            monkeypatch.delenv("SUPABASE_JWT_SECRET", raising=False)
        if live_env.service_key.startswith("sb_secret_"):
            monkeypatch.setenv("SUPABASE_SECRET_KEYS", live_env.service_key)
        handlers.state.cache_clear()
        return create_app(target).test_client()

    return factory


def release_function_state() -> None:
    """Close the sink the apps opened and forget the cached settings."""
    forget_function_state()


@pytest.fixture
def function_app(live_env: LiveEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppFactory]:
    """functions-framework apps configured for the live project and the REST sink."""
    yield make_function_app(live_env, monkeypatch)
    release_function_state()


@pytest.fixture
def credential(live_env: LiveEnv, report: LiveReport) -> Credential:
    found = service_credentials(live_env, report)
    if not found:
        why = no_credential_reason(live_env)
        report.record(
            AREA, "service_role", "call the functions", expected="-", ok=None, observed=why
        )
        pytest.skip(why)
    return found[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_batch_import_writes_through_the_rest_sink(
    function_app: AppFactory,
    credential: Credential,
    api: DataApi,
    users: LiveUsers,
    service: Caller,
    report: LiveReport,
) -> None:
    a, b = users.a, users.b
    nobody = str(uuid.uuid4())
    recent = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    a1, a2, b1 = (str(uuid.uuid4()) for _ in range(3))
    events: list[dict[str, Any]] = [
        {
            "event_id": a1,
            "user_id": a.id,
            "event_type": "app_open",
            "timestamp": "2025-06-01T07:30:00",
            "timezone": "America/New_York",
            "value": {"platform": "ios", "cold_start": True},
        },
        {
            "event_id": a2,
            "user_id": a.id,
            "event_type": IMPORT_TYPE,
            "timestamp": recent.isoformat().replace("+00:00", "Z"),
            "value": {"n": 1},
        },
        {
            "event_id": b1,
            "user_id": b.id,
            "event_type": IMPORT_TYPE,
            "timestamp": "2025-01-15T09:00:00+01:00",
            "value": {"n": 2},
        },
        {"user_id": nobody, "event_type": IMPORT_TYPE, "timestamp": "2025-01-15T09:00:00Z"},
        # no event_id: the function derives one from the content, so a resend is a duplicate
        {
            "user_id": b.id,
            "event_type": IMPORT_TYPE,
            "timestamp": "2025-02-01T10:00:00Z",
            "value": {"n": 3},
        },
    ]
    client = function_app("batch_import")
    checks = Checks(report, AREA)
    try:
        first = client.post("/", json={"events": events}, headers=bearer(credential.token))
        body = first.get_json(silent=True) or {}
        rejected = body.get("rejected", [])
        checks.check(
            f"batch_import ({credential.description})",
            "import 5 events: 2 for A, 2 for B, 1 for an unknown user",
            expected="200; inserted 4, duplicates 0; only index 3 rejected at /user_id",
            ok=first.status_code == 200
            and body.get("inserted") == 4
            and body.get("duplicates") == 0
            and [r.get("index") for r in rejected] == [3]
            and [e.get("path") for e in rejected[0].get("errors", [])] == ["/user_id"],
            observed=f"{first.status_code} {_counts(body)}",
            codes=[body.get("error")],
        )

        mine = api.select(service, user_id=in_list([a.id, b.id]))
        by_id = {str(r["id"]): r for r in mine.rows}
        imported_b = [
            r for r in mine.rows if r["user_id"] == b.id and r["event_type"] == IMPORT_TYPE
        ]
        checks.check(
            "service_role",
            "read the imported rows back through REST",
            expected="ids kept, timestamps in UTC (07:30 New York = 11:30Z), payloads as sent",
            ok=a1 in by_id
            and utc(by_id[a1]["timestamp"]) == datetime(2025, 6, 1, 11, 30, tzinfo=UTC)
            and by_id[a1]["user_id"] == a.id
            and by_id[a1]["value"] == {"platform": "ios", "cold_start": True}
            and a2 in by_id
            and utc(by_id[a2]["timestamp"]) == recent
            and b1 in by_id
            and utc(by_id[b1]["timestamp"]) == datetime(2025, 1, 15, 8, 0, tzinfo=UTC)
            and len(imported_b) == 2,
            observed=f"{mine.describe()}; A's imported: {sorted(i for i in (a1, a2) if i in by_id)}"
            f"; B's imported rows: {len(imported_b)}",
            codes=[mine.code],
        )
        for user, own, other in ((a, {a1, a2}, {b1}), (b, {b1}, {a1, a2})):
            seen = api.select(user.caller)
            checks.answer(
                user.caller,
                "select own events after the import",
                seen,
                expected="the imported own rows, none of the other user's",
                ok=seen.ok and own <= seen.ids() and not (other & seen.ids()),
            )

        again = client.post("/", json={"events": events}, headers=bearer(credential.token))
        body = again.get_json(silent=True) or {}
        checks.check(
            f"batch_import ({credential.description})",
            "send the same batch again",
            expected="200; inserted 0, duplicates 4; index 3 rejected again",
            ok=again.status_code == 200
            and body.get("inserted") == 0
            and body.get("duplicates") == 4
            and [r.get("index") for r in body.get("rejected", [])] == [3],
            observed=f"{again.status_code} {_counts(body)}",
            codes=[body.get("error")],
        )
        count = api.select(service, user_id=in_list([a.id, b.id]), event_type=f"eq.{IMPORT_TYPE}")
        checks.answer(
            "service_role",
            f"count the {IMPORT_TYPE} rows after both sends",
            count,
            expected="3 (each event stored once)",
            ok=count.ok and len(count.rows) == 3,
        )
        refused = client.post("/", json={"events": events[:1]})
        checks.check(
            "no credential",
            "call batch_import without Authorization",
            expected="401",
            ok=refused.status_code == 401,
            observed=f"{refused.status_code} {(refused.get_json(silent=True) or {}).get('error')}",
        )
    finally:
        # The unknown user's event went to the dead-letter store where the project has it;
        # erase it like a GDPR request would, where the function exists.
        try:
            erased = api.rpc(service, "erase_engagement_user", {"target": nobody})
        except httpx.HTTPError as exc:
            observed = f"{type(exc).__name__}: {exc}"
            codes: list[str | None] = []
        else:
            observed = erased.describe() + (f" {erased.body}" if erased.ok else "")
            codes = [erased.code]
        report.inform(
            AREA,
            "service_role",
            "erase the unknown user's dead-lettered event (erase_engagement_user; "
            "PGRST202 where the project lacks the function)",
            observed=observed,
            codes=codes,
        )
    checks.assert_all()


def _counts(body: dict[str, Any]) -> str:
    keys = ("inserted", "duplicates", "error", "message")
    shown = {k: body[k] for k in keys if k in body}
    shown["rejected"] = [
        (r.get("index"), [e.get("path") for e in r.get("errors", [])])
        for r in body.get("rejected", [])
    ]
    return str(shown)


def test_convert_timestamps_with_the_projects_credential(
    function_app: AppFactory, credential: Credential, users: LiveUsers, report: LiveReport
) -> None:
    client = function_app("convert_timestamps")
    checks = Checks(report, AREA)
    answer = client.post(
        "/",
        json={
            "timestamps": [
                {"timestamp": "2024-12-01T08:30:00", "timezone": "Europe/Berlin"},
                {"timestamp": "2024-03-10T02:30:00", "timezone": "America/New_York"},
            ]
        },
        headers=bearer(credential.token),
    )
    results = (answer.get_json(silent=True) or {}).get("results", [])
    checks.check(
        f"convert_timestamps ({credential.description})",
        "convert Berlin 08:30 and a New York time inside the DST gap",
        expected="07:30Z; nonexistent_local_time",
        ok=answer.status_code == 200
        and len(results) == 2
        and results[0].get("utc") == "2024-12-01T07:30:00Z"
        and results[1].get("error") == "nonexistent_local_time",
        observed=f"{answer.status_code} {results}",
    )
    as_user = client.post(
        "/",
        json={"timestamps": [{"timestamp": "2024-12-01T07:30:00Z"}]},
        headers=bearer(users.a.access_token),
    )
    status, error = _expected_for(users.a.access_token, verifiable_now())
    got = (as_user.get_json(silent=True) or {}).get("error")
    checks.check(
        users.a.name,
        "call convert_timestamps with a user's access token",
        expected=f"{status} {error}",
        ok=as_user.status_code == status and got == error,
        observed=f"{as_user.status_code} {got}",
        codes=[got],
    )
    checks.assert_all()


@dataclass(frozen=True)
class _Verifiable:
    jwt_secret: bool
    jwks: bool


def verifiable_now() -> _Verifiable:
    """What the running functions can verify: HS256 with a secret, ES256/RS256 via JWKS."""
    settings = handlers.state().settings
    return _Verifiable(
        jwt_secret=settings.jwt_secret is not None, jwks=settings.jwks_url is not None
    )


def _expected_for(token: str, can: _Verifiable) -> tuple[int, str]:
    """The status and error code the functions must give a non-service credential."""
    if token.startswith("sb_publishable_"):
        return 403, "not_service_role"
    alg = jwt.get_unverified_header(token).get("alg")
    if (alg == "HS256" and can.jwt_secret) or (alg in ("ES256", "RS256") and can.jwks):
        return 403, "not_service_role"
    return 401, "not_configured"


def test_verify_service_jwt_with_the_projects_keys(
    function_app: AppFactory,
    live_env: LiveEnv,
    users: LiveUsers,
    report: LiveReport,
) -> None:
    client = function_app("verify_service_jwt")
    checks = Checks(report, AREA)
    credentials = service_credentials(live_env, report)
    if not credentials:
        checks.skip(
            "verify_service_jwt",
            "verify the project's service credentials",
            expected="valid, service_role",
            why=no_credential_reason(live_env),
        )
    for cred in credentials:
        for how, response in (
            ("Authorization header", client.get("/", headers=bearer(cred.token))),
            ('POST {"token": ...}', client.post("/", json={"token": cred.token})),
        ):
            body = response.get_json(silent=True) or {}
            checks.check(
                "verify_service_jwt",
                f"verify {cred.description} ({how})",
                expected=f"200 valid, role service_role, key_type {cred.key_type}",
                ok=response.status_code == 200
                and body.get("valid") is True
                and body.get("role") == "service_role"
                and body.get("key_type") == cred.key_type,
                observed=f"{response.status_code} valid={body.get('valid')} "
                f"role={body.get('role')} key_type={body.get('key_type')} "
                f"expires_at={body.get('expires_at')}",
                codes=[body.get("error")],
            )
    can = verifiable_now()
    for who, token in (
        (users.a.name + "'s access token", users.a.access_token),
        ("the anon key", live_env.anon_key),
    ):
        status, error = _expected_for(token, can)
        response = client.get("/", headers=bearer(token))
        body = response.get_json(silent=True) or {}
        checks.check(
            "verify_service_jwt",
            f"verify {who}",
            expected=f"{status} {error}",
            ok=response.status_code == status
            and body.get("valid") is False
            and body.get("error") == error,
            observed=f"{response.status_code} {body.get('error')} role={body.get('role')}",
            codes=[body.get("error")],
        )
    if credentials:
        cred = credentials[0]
        tampered = cred.token[:-2] + ("AA" if not cred.token.endswith("AA") else "BB")
        response = client.get("/", headers=bearer(tampered))
        body = response.get_json(silent=True) or {}
        checks.check(
            "verify_service_jwt",
            f"verify {cred.description} with its last characters changed",
            expected="401 (bad_signature or invalid_secret_key)",
            ok=response.status_code == 401
            and body.get("error") in ("bad_signature", "invalid_secret_key", "malformed"),
            observed=f"{response.status_code} {body.get('error')}",
            codes=[body.get("error")],
        )
    checks.assert_all()

"""The SQL JWT helpers (migration 20241203000000_service_jwt_helpers) agree with
functions/service_auth.py: what one side signs the other verifies, and both refuse the same
bad tokens for the same reason. API roles are impersonated the way PostgREST does it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest

from functions.errors import AuthError, NotServiceRole
from functions.service_auth import ServiceAuthenticator
from localdb import cluster as localcluster
from localdb.api_roles import request_as
from tests.conftest import Database

MIGRATION = (
    Path(__file__).resolve().parent.parent
    / "supabase"
    / "migrations"
    / "20241203000000_service_jwt_helpers.sql"
)
SECRET = "super-secret-jwt-token-with-at-least-32-characters-long-and-more"
OTHER_SECRET = "another-secret-that-is-also-at-least-32-characters"


@pytest.fixture
def jwt_db(db: Database) -> Database:
    """A migrated database whose JWT helper secret is SECRET (set as postgres)."""
    with db.connect() as conn:
        conn.execute("select private.set_service_jwt_secret(%s)", (SECRET,))
    return db


def as_service_role(db: Database, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The single value `query` returns when run as service_role through `authenticator`."""
    with db.connect("authenticator") as conn, request_as(conn, "service_role"):
        row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


def sql_verify(db: Database, token: str) -> dict[str, Any]:
    claims: dict[str, Any] = as_service_role(db, "select private.verify_service_jwt(%s)", (token,))
    return claims


def sql_refusal(db: Database, token: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        sql_verify(db, token)
    return caught.value


def python_auth() -> ServiceAuthenticator:
    return ServiceAuthenticator(jwt_secret=SECRET, jwks_url=None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(
    header: dict[str, Any], payload: bytes, secret: str = SECRET, digest: Any = hashlib.sha256
) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(mac)}"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"role": "service_role", "iss": "supabase", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def pyjwt_token(secret: str = SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm=algorithm)


def with_part(token: str, index: int, part: str) -> str:
    parts = token.split(".")
    parts[index] = part
    return ".".join(parts)


def flip_first_char(part: str) -> str:
    # The first character carries six whole bits; the last one may carry only padding bits.
    return ("B" if part[0] == "A" else "A") + part[1:]


# name: (token factory, SQLSTATE, DETAIL = service_auth's error code, message fragment)
BAD_TOKENS: dict[str, tuple[Callable[[], str], str, str, str]] = {
    "expired beyond the leeway": (
        lambda: pyjwt_token(iat=int(time.time()) - 3600, exp=int(time.time()) - 31),
        "28000",
        "expired",
        "has expired",
    ),
    "not valid yet": (
        lambda: pyjwt_token(nbf=int(time.time()) + 120),
        "28000",
        "not_yet_valid",
        "not valid yet",
    ),
    "issued in the future": (
        lambda: pyjwt_token(iat=int(time.time()) + 120),
        "28000",
        "issued_in_future",
        "issued in the future",
    ),
    "tampered payload": (
        lambda: with_part(
            pyjwt_token(role="authenticated"), 1, b64url(json.dumps(claims()).encode())
        ),
        "28000",
        "bad_signature",
        "signature does not verify",
    ),
    "tampered signature": (
        lambda: with_part(pyjwt_token(), 2, flip_first_char(pyjwt_token().split(".")[2])),
        "28000",
        "bad_signature",
        "signature does not verify",
    ),
    "signed with another secret": (
        lambda: pyjwt_token(secret=OTHER_SECRET),
        "28000",
        "bad_signature",
        "signature does not verify",
    ),
    "alg none": (
        lambda: with_part(pyjwt_token(), 0, b64url(b'{"alg":"none","typ":"JWT"}'))[:-43],
        "28000",
        "unsupported_algorithm",
        "only HS256",
    ),
    "HS512": (
        lambda: pyjwt_token(algorithm="HS512"),
        "28000",
        "unsupported_algorithm",
        "only HS256",
    ),
    "two parts": (
        lambda: pyjwt_token().rsplit(".", 1)[0],
        "28000",
        "malformed",
        "three base64url parts",
    ),
    "header not base64url": (
        lambda: with_part(pyjwt_token(), 0, "e@J*hbGciOi"),
        "28000",
        "malformed",
        "header is not base64url-encoded JSON",
    ),
    "payload not JSON (correctly signed)": (
        lambda: hand_signed({"alg": "HS256", "typ": "JWT"}, b'{"role": "service_role",'),
        "28000",
        "malformed",
        "payload is not base64url-encoded JSON",
    ),
    "role authenticated": (
        lambda: pyjwt_token(role="authenticated", sub="a1a1a1a1-0000-4000-8000-000000000001"),
        "42501",
        "not_service_role",
        "role is not service_role",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_sql_and_python_refuse_the_same_bad_token_for_the_same_reason(
    jwt_db: Database, case: str
) -> None:
    make, sqlstate, code, fragment = BAD_TOKENS[case]
    token = make()

    refusal = sql_refusal(jwt_db, token)
    assert refusal.sqlstate == sqlstate
    assert refusal.diag.message_detail == code
    assert fragment in (refusal.diag.message_primary or "")
    assert token not in str(refusal)

    expected_error = NotServiceRole if code == "not_service_role" else AuthError
    with pytest.raises(expected_error) as python_refusal:
        python_auth().require_service_role(token)
    assert python_refusal.value.code == code


def test_each_kind_of_refusal_has_its_own_message(jwt_db: Database) -> None:
    messages: dict[str, set[str]] = {}
    for make, _, code, _ in BAD_TOKENS.values():
        message = sql_refusal(jwt_db, make()).diag.message_primary or ""
        messages.setdefault(code, set()).add(message)
    kinds = list(messages.values())
    for index, first in enumerate(kinds):
        for second in kinds[index + 1 :]:
            assert first.isdisjoint(second)
    assert len(messages) == 7


def test_python_minted_token_verifies_in_sql(jwt_db: Database) -> None:
    now = int(time.time())
    token = pyjwt_token(iat=now, exp=now + 900, sub="nightly-import")

    verified = sql_verify(jwt_db, token)

    assert verified == {
        "role": "service_role",
        "iss": "supabase",
        "iat": now,
        "exp": now + 900,
        "sub": "nightly-import",
    }


def test_token_expired_within_the_leeway_still_verifies_on_both_sides(jwt_db: Database) -> None:
    now = int(time.time())
    token = pyjwt_token(iat=now - 3600, exp=now - 10)

    assert sql_verify(jwt_db, token)["exp"] == now - 10
    assert python_auth().require_service_role(token).role == "service_role"


def test_sql_minted_token_verifies_in_python(jwt_db: Database) -> None:
    before = int(time.time())
    token: str = as_service_role(
        jwt_db, "select private.sign_service_jwt(%s, %s)", (300, json.dumps({"sub": "cron"}))
    )
    after = int(time.time())

    credential = python_auth().require_service_role(token)

    assert credential.key_type == "legacy_jwt"
    assert credential.role == "service_role"
    assert credential.subject == "cron"
    assert credential.expires_at is not None
    expires = int(credential.expires_at.timestamp())
    assert before + 300 <= expires <= after + 300
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert decoded["exp"] - decoded["iat"] == 300
    assert decoded["iss"] == "supabase"
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert credential.expires_at == datetime.fromtimestamp(decoded["exp"], tz=UTC)


def test_sql_minted_token_verifies_in_sql_with_the_default_ttl(jwt_db: Database) -> None:
    token: str = as_service_role(jwt_db, "select private.sign_service_jwt()")
    verified = sql_verify(jwt_db, token)
    assert verified["role"] == "service_role"
    assert verified["exp"] - verified["iat"] == 3600


def test_signer_refuses_to_let_extra_claims_change_the_role(jwt_db: Database) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="must not set role"):
        as_service_role(
            jwt_db,
            "select private.sign_service_jwt(60, %s)",
            (json.dumps({"role": "supabase_admin"}),),
        )


def test_rotating_the_secret_invalidates_tokens_signed_with_the_old_one(jwt_db: Database) -> None:
    old_token: str = as_service_role(jwt_db, "select private.sign_service_jwt()")
    with jwt_db.connect() as conn:
        conn.execute("select private.set_service_jwt_secret(%s)", (OTHER_SECRET,))

    assert sql_refusal(jwt_db, old_token).diag.message_detail == "bad_signature"
    new_token = pyjwt_token(secret=OTHER_SECRET)
    assert sql_verify(jwt_db, new_token)["role"] == "service_role"


def test_helpers_say_clearly_when_no_secret_is_set(db: Database) -> None:
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no service JWT secret"):
        as_service_role(db, "select private.sign_service_jwt()")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no service JWT secret"):
        sql_verify(db, pyjwt_token())


def test_setter_refuses_a_secret_shorter_than_32_characters(db: Database) -> None:
    with (
        db.connect() as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="at least 32 characters"),
    ):
        conn.execute("select private.set_service_jwt_secret(%s)", ("x" * 31,))


CALLS = {
    "verify": "select private.verify_service_jwt('a.b.c')",
    "sign": "select private.sign_service_jwt()",
    "set secret": f"select private.set_service_jwt_secret('{OTHER_SECRET}')",
    "read secret": "select secret from private.service_jwt_secret",
}


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_client_roles_can_neither_call_the_helpers_nor_read_the_secret(
    jwt_db: Database, role: str, call: str
) -> None:
    with (
        jwt_db.connect("authenticator") as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        request_as(conn, role),
    ):
        conn.execute(CALLS[call].encode())


@pytest.mark.parametrize("call", ["set secret", "read secret"])
def test_service_role_can_neither_read_nor_set_the_secret(jwt_db: Database, call: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_service_role(jwt_db, CALLS[call])
    # The secret is unchanged: a token signed with it still verifies.
    assert sql_verify(jwt_db, pyjwt_token())["role"] == "service_role"


def test_pgjwt_availability_is_recorded_as_the_catalog_reports_it(db: Database) -> None:
    """Whether or not this host's PostgreSQL has pgjwt (Debian's packages do not; Supabase's
    PostgreSQL 15 images do, its PostgreSQL 17 images do not), the record says what it had."""
    with db.connect() as conn:
        recorded = conn.execute(
            "select available, installed from private.extension_availability "
            "where extension = 'pgjwt'"
        ).fetchone()
        catalog = conn.execute(
            "select exists (select 1 from pg_available_extensions where name = 'pgjwt'), "
            "exists (select 1 from pg_extension where extname = 'pgjwt')"
        ).fetchone()
    assert recorded == catalog


# pgjwt's functions, each replaced by one that fails loudly if anything calls it.
PGJWT_FUNCTIONS = [
    "url_encode(data bytea) returns text",
    "url_decode(data text) returns bytea",
    "algorithm_sign(signables text, secret text, algorithm text) returns text",
    "sign(payload json, secret text, algorithm text default 'HS256') returns text",
    "verify(token text, secret text, algorithm text default 'HS256')"
    " returns table(header json, payload json, valid boolean)",
]


def test_the_helpers_never_call_pgjwt(jwt_db: Database) -> None:
    """The helpers are the project's own SQL, so they work where pgjwt is absent (Supabase's
    PostgreSQL 17) as where it is present: with every pgjwt function in `extensions` a trap,
    tokens are still signed and verified, and refused for the same reasons."""
    with jwt_db.connect(localcluster.SUPERUSER) as admin:
        for signature in PGJWT_FUNCTIONS:
            admin.execute(
                f"create function extensions.{signature} language plpgsql as $$"
                " begin raise exception 'pgjwt was called'; end $$"
            )
    token: str = as_service_role(jwt_db, "select private.sign_service_jwt(60)")
    assert python_auth().require_service_role(token).role == "service_role"
    assert sql_verify(jwt_db, token)["role"] == "service_role"
    assert sql_verify(jwt_db, pyjwt_token())["role"] == "service_role"
    assert sql_refusal(jwt_db, pyjwt_token(secret=OTHER_SECRET)).diag.message_detail == (
        "bad_signature"
    )


def test_migration_applies_twice_and_keeps_the_secret(jwt_db: Database) -> None:
    # The template already ran every migration once; this is the second run.
    jwt_db.cluster.run_sql_file(MIGRATION, dbname=jwt_db.name)

    assert sql_verify(jwt_db, pyjwt_token())["role"] == "service_role"
    with jwt_db.connect() as conn:
        rows = conn.execute(
            "select extension, installed from private.extension_availability order by 1"
        ).fetchall()
        pgjwt_installed = conn.execute(
            "select exists (select 1 from pg_extension where extname = 'pgjwt')"
        ).fetchone()
    assert pgjwt_installed is not None
    assert rows == [("pgcrypto", True), ("pgjwt", pgjwt_installed[0])]

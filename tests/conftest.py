"""What every test shares: a clean slate of the functions' state and of ``os.environ``, the apps
functions-framework builds for main.py, and one throwaway Supabase-shaped PostgreSQL.

- Every test starts and ends with the functions' cached state (settings, authenticator, sink)
  forgotten, the sink closed, and ``os.environ`` as it was (:func:`fresh_function_state`).
- ``function_app(target, **env)`` builds the app of one function with that environment;
  ``make_client(target, **env)`` is its test client writing into the test's database.
- The cluster is started once per session; the template database `engagement_template` gets
  the migrations and the seed once; a test that writes gets its own copy (`db`), dropped
  afterwards. Every test whose fixtures reach the cluster is marked ``db`` automatically, so
  ``pytest -m "not db"`` starts no PostgreSQL.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
import functions_framework
import jwt
import psycopg
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from functions import handlers
from localdb import cluster as localcluster

TEMPLATE = "engagement_template"
MAIN = str(Path(__file__).resolve().parents[1] / "main.py")

SECRET = "local-test-jwt-secret-with-at-least-32-characters"
"""The JWT secret of the functions under test (``make_client`` configures it)."""
ANA = "a1a1a1a1-0000-4000-8000-000000000001"
BEN = "b2b2b2b2-0000-4000-8000-000000000002"
"""Two users of the seed."""

DATABASE_FIXTURES = frozenset({"cluster"})
"""Fixtures that start PostgreSQL: a test that uses one, directly or through others, is ``db``."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


# --- the functions' state -----------------------------------------------------------------------


def forget_function_state() -> None:
    """Close the sink the functions' cached state holds, if any, and drop that state, so that
    the next app reads its configuration from the environment again."""
    if handlers.state.cache_info().currsize:
        sink = handlers.state()._sink
        if sink is not None:
            sink.close()
    handlers.state.cache_clear()


@pytest.fixture(autouse=True)
def fresh_function_state() -> Iterator[None]:
    """Each test begins and ends without the functions' cached state, and leaves
    ``os.environ`` as it found it."""
    environ = dict(os.environ)
    forget_function_state()
    try:
        yield
    finally:
        forget_function_state()
        os.environ.clear()
        os.environ.update(environ)


def create_app(target: str) -> flask.Flask:
    """``functions_framework.create_app(target, "main.py")``, as the Flask app it is here.

    The framework returns a Starlette app for an ``@aio`` function; main.py has none, so
    anything but Flask is a mistake worth failing on.
    """
    # functions-framework ships py.typed but leaves create_app unannotated; this is the one call.
    app = functions_framework.create_app(target, MAIN)  # type: ignore[no-untyped-call]
    assert isinstance(app, flask.Flask), f"{target} is not served as a Flask app: {app!r}"
    return app


AppFactory = Callable[..., flask.Flask]


@pytest.fixture
def function_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppFactory]:
    """``function_app(target, **env)``: the app of ``target`` as a fresh instance builds it,
    with ``env`` set (a value of None removes the variable) and ``FUNCTION_TARGET`` naming it."""

    def factory(target: str, /, **env: str | None) -> flask.Flask:
        monkeypatch.setenv("FUNCTION_TARGET", target)
        for name, value in env.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        forget_function_state()
        return create_app(target)

    yield factory
    forget_function_state()


ClientFactory = Callable[..., FlaskClient]


@pytest.fixture
def make_client(db: Database, function_app: AppFactory) -> ClientFactory:
    """``make_client(target, **env)``: a test client of ``target`` with the direct sink into
    the test's database (or ``DATABASE_URL`` from ``env``) and the JWT secret :data:`SECRET`."""

    def factory(target: str, /, **env: str | None) -> FlaskClient:
        settings: dict[str, str | None] = {
            "SUPABASE_JWT_SECRET": SECRET,
            "DATABASE_URL": db.url,
            "SUPABASE_URL": None,
            **env,
        }
        return function_app(target, **settings).test_client()

    return factory


# --- requests and answers ------------------------------------------------------------------------


def token(role: str = "service_role", *, secret: str = SECRET, exp_in: int = 3600) -> str:
    """An HS256 JWT with ``role``, valid for ``exp_in`` seconds (negative: expired)."""
    now = int(time.time())
    return jwt.encode({"role": role, "iat": now, "exp": now + exp_in}, secret, algorithm="HS256")


def auth(role: str = "service_role") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role)}"}


def event(**overrides: Any) -> dict[str, Any]:
    """An app_open event of ANA's in New York's local time; an override of None removes a field."""
    base: dict[str, Any] = {
        "user_id": ANA,
        "event_type": "app_open",
        "timestamp": "2025-06-01T07:30:00",
        "timezone": "America/New_York",
        "value": {"platform": "ios"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def json_body(response: TestResponse) -> dict[str, Any]:
    """The response's body, which must be a JSON object (werkzeug types it ``Any | None``)."""
    body = response.json
    assert isinstance(body, dict), (
        f"not a JSON object ({response.status_code}, {response.mimetype}): "
        f"{response.get_data(as_text=True)[:500]!r}"
    )
    return body


# --- the database --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """One database of the test cluster."""

    cluster: localcluster.Cluster
    name: str

    def connect(
        self, user: str = "postgres", *, autocommit: bool = True
    ) -> psycopg.Connection[Any]:
        return self.cluster.connect(user, self.name, autocommit=autocommit)

    @property
    def url(self) -> str:
        return self.cluster.url("postgres", self.name)


def add_user(db: Database, user_id: str) -> None:
    """A new user of the project (a row of auth.users) with ``user_id``."""
    with db.connect() as conn:
        conn.execute(
            "insert into auth.users (id, aud, role, email) values"
            " (%s, 'authenticated', 'authenticated', %s)",
            (user_id, f"{user_id}@example.test"),
        )


def stored(db: Database, *, since: str = "2025-01-01T00:00:00Z") -> list[tuple[Any, ...]]:
    """The events stored from ``since`` on: user, timestamp, type and value, in time order."""
    with db.connect() as conn:
        return conn.execute(
            "select user_id::text, timestamp, event_type, value from public.engagement_events"
            " where timestamp >= %s order by timestamp, user_id",
            (since,),
        ).fetchall()


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.Cluster]:
    db_cluster = localcluster.start()
    try:
        db_cluster.prepare_database(TEMPLATE)
        yield db_cluster
    finally:
        db_cluster.stop()


@pytest.fixture
def db(cluster: localcluster.Cluster) -> Iterator[Database]:
    """A fresh copy of the migrated, seeded database, for one test."""
    name = cluster.clone(TEMPLATE)
    try:
        yield Database(cluster, name)
    finally:
        cluster.drop(name)

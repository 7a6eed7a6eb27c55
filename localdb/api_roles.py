"""Act as an API caller the way PostgREST does it, for tests, audits and benchmarks.

PostgREST logs in as `authenticator` and, inside each request's transaction, runs
`SET LOCAL ROLE <role claim>` and `set_config('request.jwt.claims', <claims>, true)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

API_ROLES = ("anon", "authenticated", "service_role")


def claims_for(role: str, sub: str | None = None) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role}
    if sub is not None:
        claims["sub"] = sub
        claims["aud"] = "authenticated"
    return claims


@contextmanager
def request_as(
    conn: psycopg.Connection[Any], role: str, sub: str | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """One API request's transaction as `role` (and user `sub`); rolled back on error."""
    if role not in API_ROLES:
        raise ValueError(f"not an API role: {role}")
    with conn.transaction():
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps(claims_for(role, sub)),),
        )
        yield conn

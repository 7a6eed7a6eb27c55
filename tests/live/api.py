"""Thin helpers for talking to a real project's Data API (PostgREST) the way clients do.

Requests go out with httpx rather than supabase-py's ``execute()`` because the live checks
must record the exact status and PostgREST error code of every refused attempt, which
``execute()`` folds into one exception. The headers are the ones supabase-py sends: ``apikey``
(the anon or service key) and ``Authorization: Bearer`` (the user's access token, or the key
itself when nobody is signed in).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

TABLE_PATH = "/rest/v1/engagement_events"
COLUMNS = "id,user_id,timestamp,event_type,value,is_deleted"
PERMISSION_DENIED = "42501"
"""PostgreSQL's insufficient_privilege, also raised for a row that fails an RLS check."""


@dataclass(frozen=True)
class Caller:
    """Who a request is sent as: a name for the report and the headers that make it so."""

    name: str
    headers: Mapping[str, str] = field(repr=False)  # keys and tokens stay out of tracebacks
    user_id: str | None = None


def caller_with_key(name: str, key: str) -> Caller:
    """Nobody signed in: the key is both ``apikey`` and bearer, as supabase-py sends it."""
    return Caller(name, {"apikey": key, "Authorization": f"Bearer {key}"})


def caller_with_token(name: str, anon_key: str, access_token: str, user_id: str) -> Caller:
    """A signed-in user: the anon (publishable) key plus the user's access token."""
    return Caller(
        name, {"apikey": anon_key, "Authorization": f"Bearer {access_token}"}, user_id=user_id
    )


@dataclass(frozen=True)
class Answer:
    """One response of the Data API, decoded."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and self.body.get("code") is not None:
            return str(self.body["code"])
        return None

    @property
    def message(self) -> str | None:
        if isinstance(self.body, dict) and self.body.get("message") is not None:
            return str(self.body["message"])
        return None

    @property
    def rows(self) -> list[dict[str, Any]]:
        if isinstance(self.body, list):
            return [r for r in self.body if isinstance(r, dict)]
        return []

    def ids(self) -> set[str]:
        return {str(r["id"]) for r in self.rows if "id" in r}

    def describe(self) -> str:
        """A one-line account for the report: status, code and message, or the row count."""
        if self.ok:
            if isinstance(self.body, list):
                return f"{self.status}, {len(self.body)} row(s)"
            return f"{self.status}"
        text = f"{self.status}"
        if self.code:
            text += f" {self.code}"
        if self.message:
            text += f": {self.message}"
        elif isinstance(self.body, str) and self.body:
            text += f": {self.body[:200]}"
        return text

    def refused(self, code: str = PERMISSION_DENIED, statuses: Sequence[int] = (401, 403)) -> bool:
        """True when the request was refused with ``code`` and one of ``statuses``."""
        return self.status in statuses and self.code == code


def answer_of(response: httpx.Response) -> Answer:
    try:
        body: Any = response.json() if response.content else None
    except ValueError:
        body = response.text
    return Answer(response.status_code, body)


class DataApi:
    """CRUD on ``engagement_events`` through ``/rest/v1`` as any caller."""

    def __init__(self, base_url: str, http: httpx.Client) -> None:
        self._url = base_url.rstrip("/") + TABLE_PATH
        self._base = base_url.rstrip("/")
        self._http = http

    def select(self, who: Caller, **filters: str) -> Answer:
        params = {"select": COLUMNS, **filters}
        return answer_of(self._http.get(self._url, params=params, headers=dict(who.headers)))

    def insert(self, who: Caller, rows: Sequence[Mapping[str, Any]]) -> Answer:
        headers = {**who.headers, "Prefer": "return=minimal"}
        return answer_of(self._http.post(self._url, json=list(rows), headers=headers))

    def update(self, who: Caller, patch: Mapping[str, Any], **filters: str) -> Answer:
        headers = {**who.headers, "Prefer": "return=representation"}
        params = {"select": COLUMNS, **filters}
        return answer_of(
            self._http.patch(self._url, params=params, json=dict(patch), headers=headers)
        )

    def delete(self, who: Caller, **filters: str) -> Answer:
        headers = {**who.headers, "Prefer": "return=representation"}
        params = {"select": COLUMNS, **filters}
        return answer_of(self._http.delete(self._url, params=params, headers=headers))

    def rpc(self, who: Caller, function: str, args: Mapping[str, Any]) -> Answer:
        return answer_of(
            self._http.post(
                f"{self._base}/rest/v1/rpc/{function}", json=dict(args), headers=dict(who.headers)
            )
        )


def event(user_id: str, **overrides: Any) -> dict[str, Any]:
    """A row as a client inserts it: own id, ten minutes ago, a valid app_open payload."""
    moment = datetime.now(UTC) - timedelta(minutes=10)
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "user_id": user_id,
        "timestamp": moment.isoformat().replace("+00:00", "Z"),
        "event_type": "app_open",
        "value": {"platform": "ios"},
    }
    row.update(overrides)
    return row


def in_list(ids: Sequence[str]) -> str:
    """A PostgREST ``in`` filter value."""
    return "in.(" + ",".join(ids) + ")"


__all__ = [
    "COLUMNS",
    "PERMISSION_DENIED",
    "Answer",
    "Caller",
    "DataApi",
    "answer_of",
    "caller_with_key",
    "caller_with_token",
    "event",
    "in_list",
]

"""Where validated events go: one interface, two implementations.

The handler writes through a :class:`Sink` and never knows which one it has:

- ``functions.sinks.rest.RestSink`` writes through the Supabase Data API (supabase-py), in
  chunks, retrying transient failures itself;
- ``functions.sinks.postgres.PostgresSink`` writes straight to PostgreSQL (psycopg 3), one
  transaction per call, usable through Supavisor's transaction pooler.

Both report how many rows were inserted, how many were already there, and which rows belong
to no user of the project (those are never written and never fail the rest of the batch).
Both raise only :class:`functions.errors.StoreError` (a refusal: retrying will not help) or
:class:`functions.errors.StoreUnavailable` (transient: the caller may retry the whole batch,
which is idempotent because every row carries its id). This module imports neither psycopg
nor supabase, so importing the interface costs nothing at cold start.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from functions.errors import StoreError, StoreUnavailable

__all__ = [
    "EventRow",
    "FailureRecord",
    "Sink",
    "WriteResult",
    "out_of_time",
    "refusal",
    "remaining",
]


class EventRow(Protocol):
    """One validated event, ready to store (the handler's objects have these attributes)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def user_id(self) -> uuid.UUID: ...
    @property
    def timestamp(self) -> datetime:
        """Timezone-aware, in UTC."""
        ...

    @property
    def event_type(self) -> str: ...
    @property
    def value(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class WriteResult:
    """What one :meth:`Sink.write` did."""

    inserted: int
    """Rows newly stored."""
    duplicates: int
    """Rows whose id already existed, or repeated an id earlier in the same batch."""
    unknown_users: tuple[int, ...] = ()
    """Positions (in the rows given) whose user_id is not in auth.users; these were not written."""


@dataclass(frozen=True)
class FailureRecord:
    """One rejected event, as the dead-letter store keeps it (health data: never logged)."""

    request_id: str
    credential_type: str
    """How the caller authenticated: ``legacy_jwt``, ``jwks`` or ``secret_key``."""
    index: int
    """The event's position in its request."""
    event: str
    """The event exactly as sent, as ASCII-escaped JSON text."""
    errors: tuple[dict[str, str], ...]
    """Every problem found: ``{"path": <JSON pointer>, "message": ...}``."""
    event_id: str | None = None
    user_id: str | None = None
    default_timezone: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The element ``public.record_engagement_failures(failures jsonb)`` expects."""
        return {
            "request_id": self.request_id,
            "credential_type": self.credential_type,
            "index": self.index,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "event": self.event,
            "errors": list(self.errors),
            "default_timezone": self.default_timezone,
        }


class Sink(Protocol):
    """Writes batches of events; one instance lives for the whole process and is thread-safe."""

    def write(self, rows: Sequence[EventRow], *, atomic: bool, deadline: float) -> WriteResult:
        """Store ``rows``; return by ``deadline`` (a ``time.monotonic()`` value) at the latest.

        ``atomic=True`` writes every row or none: if any row has an unknown user nothing is
        written and ``inserted`` is 0. ``atomic=False`` writes the rows whose user exists.
        """
        ...

    def record_failures(self, failures: Sequence[FailureRecord], *, deadline: float) -> int:
        """Keep rejected events in the dead-letter store; return how many were new there.

        Repeats of a failure already stored (a retried batch) raise its attempt count instead
        of adding a row, so calling this again with the same failures is harmless.
        """
        ...

    def take_rate_limit(
        self,
        caller: str,
        events: int,
        *,
        requests_per_minute: int,
        events_per_minute: int,
        deadline: float,
    ) -> int:
        """Count one request of ``events`` events for ``caller`` in the current minute.

        Returns 0 when it is allowed, else the seconds to wait (nothing was counted). The
        count lives in the database, so it holds across every instance of the function.
        """
        ...

    def close(self) -> None:
        """Release connections; the sink may be used again afterwards (it reconnects)."""
        ...


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value); negative when past."""
    return deadline - time.monotonic()


def out_of_time(*, stored: int = 0, code: str = "deadline") -> StoreUnavailable:
    """The error for a write that cannot finish inside the function's time budget."""
    return StoreUnavailable(
        "the store did not answer within the time budget of the request",
        code=code,
        stored=stored,
    )


def refusal(
    code: str | None,
    message: str | None,
    *,
    details: str | None = None,
    hint: str | None = None,
    stored: int = 0,
) -> StoreError:
    """A :class:`StoreError` built from a store's error fields, without any payload value.

    PostgreSQL echoes row values in the detail of integrity errors (``Failing row contains
    (...)``, ``Key (id)=(...) already exists``) and in the message of data errors (``invalid
    input syntax for type uuid: "..."``). Event payloads are health data, so details of class
    23 and messages of class 22 never leave this function.
    """
    sqlstate = code or ""
    if sqlstate.startswith("22"):
        message = "the store rejected a value of the batch as malformed"
        details = None
    elif sqlstate.startswith("23"):
        details = None
    return StoreError(
        message or "the store refused the write",
        code=code or None,
        details=details,
        hint=hint,
        stored=stored,
    )

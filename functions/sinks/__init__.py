"""Where validated events go: one interface, two implementations.

The handler writes through a :class:`Sink` and never knows which one it has:

- ``functions.sinks.rest.RestSink`` writes through the Supabase Data API (supabase-py), in
  chunks, retrying transient failures itself;
- ``functions.sinks.postgres.PostgresSink`` writes straight to PostgreSQL (psycopg 3), one
  transaction per call, usable through Supavisor's transaction pooler.

Both write through one SQL function, ``public.ingest_engagement_events`` (migration 20241230),
which applies the identity, revision and deletion rules of docs/database.md to a whole batch in
one statement (the direct sink calls it, the REST sink calls it as the Data API RPC), so the
two cannot answer differently. Both report how many rows were inserted, updated, deleted and
already there, which events belong to no user of the project and which name an id that is
another user's (those are never written and never fail the rest of the batch).
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
    "INGEST_FUNCTION",
    "EventRow",
    "FailureRecord",
    "RateLimit",
    "Sink",
    "WriteResult",
    "combined",
    "has_counts",
    "ingest_element",
    "out_of_time",
    "rate_arguments",
    "refusal",
    "remaining",
    "write_result",
]


class EventRow(Protocol):
    """One validated event, ready to store (the handler's objects have these attributes)."""

    @property
    def id(self) -> uuid.UUID | None:
        """The sender's event_id; None when the database derives it from ``identity``."""
        ...

    @property
    def identity(self) -> str | None:
        """The identity text of an event without id (``functions.ids``)."""
        ...

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
    @property
    def revision(self) -> int | None: ...
    @property
    def deleted(self) -> bool: ...


@dataclass(frozen=True)
class RateLimit:
    """The rate limit a write takes first, in the same round trip (``take_rate_limit``)."""

    caller: str
    events: int
    """The events the request counts for (all of it, valid or not)."""
    requests_per_minute: int
    events_per_minute: int


@dataclass(frozen=True)
class WriteResult:
    """What one :meth:`Sink.write` did."""

    inserted: int
    """Rows newly stored (deletions of rows not stored yet count in ``deleted``)."""
    duplicates: int
    """Events that changed nothing: the id was stored with an equal or greater revision (or
    none), the row was deleted, or another event of the batch with that id was decided."""
    updated: int = 0
    """Stored rows replaced by a greater revision."""
    deleted: int = 0
    """Rows marked deleted, or stored deleted."""
    unknown_users: tuple[int, ...] = ()
    """Positions (in the rows given) whose user_id is not in auth.users; these were not written."""
    conflicts: tuple[int, ...] = ()
    """Positions whose id is another user's (stored, or of an earlier event of the batch);
    these were not written."""
    retry_after: int = 0
    """Seconds to wait when the rate limit refused the request (then nothing was written)."""

    @property
    def written(self) -> int:
        """Events the store accepted: inserted, updated, deleted or duplicates."""
        return self.inserted + self.updated + self.deleted + self.duplicates


INGEST_FUNCTION = "ingest_engagement_events"


def ingest_element(index: int, row: EventRow) -> dict[str, Any]:
    """One event as ``ingest_engagement_events`` takes it (JSON-ready: strings for ids and the
    RFC 3339 timestamp); ``index`` is its position in the rows given."""
    element: dict[str, Any] = {
        "index": index,
        "user_id": str(row.user_id),
        "timestamp": row.timestamp.isoformat(),
        "event_type": row.event_type,
        "value": row.value,
    }
    if row.id is not None:
        element["id"] = str(row.id)
    else:
        element["identity"] = row.identity
    if row.revision is not None:
        element["revision"] = row.revision
    if row.deleted:
        element["deleted"] = True
    return element


def rate_arguments(rate: RateLimit | None) -> dict[str, Any]:
    """The rate-limit arguments of ``ingest_engagement_events`` (none: no limit taken)."""
    if rate is None:
        return {}
    return {
        "rate_caller": rate.caller,
        "rate_requests_per_minute": rate.requests_per_minute,
        "rate_events_per_minute": rate.events_per_minute,
        "rate_events": rate.events,
    }


def has_counts(answer: Any) -> bool:
    """Whether ``answer`` is what ``ingest_engagement_events`` answers: an object with its four
    counts."""
    return isinstance(answer, dict) and all(
        isinstance(answer.get(key), int) for key in ("inserted", "updated", "deleted", "duplicates")
    )


def write_result(answer: Any) -> WriteResult:
    """The :class:`WriteResult` of what ``ingest_engagement_events`` answered; StoreError for
    an answer without its counts (no count is ever guessed)."""
    if not has_counts(answer):
        raise StoreError("the store answered the write without its counts", code="bad_answer")
    return WriteResult(
        inserted=answer["inserted"],
        duplicates=answer["duplicates"],
        updated=answer["updated"],
        deleted=answer["deleted"],
        unknown_users=tuple(answer.get("unknown_users") or ()),
        conflicts=tuple(answer.get("conflicts") or ()),
        retry_after=int(answer.get("retry_after") or 0),
    )


def combined(results: Sequence[WriteResult]) -> WriteResult:
    """The result of a batch written in parts (their positions are the batch's)."""
    return WriteResult(
        inserted=sum(r.inserted for r in results),
        duplicates=sum(r.duplicates for r in results),
        updated=sum(r.updated for r in results),
        deleted=sum(r.deleted for r in results),
        unknown_users=tuple(i for r in results for i in r.unknown_users),
        conflicts=tuple(i for r in results for i in r.conflicts),
        retry_after=max((r.retry_after for r in results), default=0),
    )


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

    def write(
        self,
        rows: Sequence[EventRow],
        *,
        atomic: bool,
        deadline: float,
        rate: RateLimit | None = None,
    ) -> WriteResult:
        """Store ``rows``; return by ``deadline`` (a ``time.monotonic()`` value) at the latest.

        ``atomic=True`` writes every row or none: if any row has an unknown user or an id of
        another user, nothing is written and every count is 0. ``atomic=False`` writes the
        rows whose user exists and whose id is not another user's. With ``rate``, the rate
        limit is taken first, in the same round trip; when it refuses, nothing is written and
        ``retry_after`` says for how long.
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

"""The direct sink: events go to PostgreSQL over psycopg 3, one transaction per write.

Why it looks the way it does:

- Connections come from a ``psycopg_pool.ConnectionPool`` (at most ``max_connections``),
  shared by the threads of the process (Cloud Functions gen2 serves concurrent requests in one
  process). The pool is opened lazily, and only after one connection made in the request's
  own thread succeeded: the pool connects in background threads, where a failure is retried
  with backoff and never reaches the request, so that first connection is what tells an
  unreachable server (503, at once) from one that refuses the settings for good (wrong
  password, unknown role or database: :class:`StoreError`, 502, not retried). Waiting for a
  pooled connection never outlasts the request's deadline.
- A connection that broke is discarded by the pool when it comes back. A lost connection
  (idle timeout, failover, ``pg_terminate_backend``, a restart) closes the whole pool, since
  after a restart every pooled connection is dead, and the write is retried on a new pool
  while the time budget allows, so a lost connection never needs a redeploy.
- ``prepare_threshold=None``: no server-side prepared statements, so the sink works through
  Supavisor in transaction mode, where consecutive transactions may land on different backends.
- A write is one call of ``public.ingest_engagement_events`` (the write path both sinks
  share): it takes the rate limit, finds unknown users and cross-user ids, and inserts,
  revises or deletes, all in one statement, so a user deleted meanwhile cannot turn a partial
  write into a foreign-key failure of the whole batch. The timeouts and the call go out as
  one pipeline, one implicit transaction ended by the pipeline's Sync: one round trip per
  request (an explicit ``BEGIN``/``COMMIT`` through psycopg's ``transaction()`` would add
  two: it syncs the pipeline after ``BEGIN`` and before ``COMMIT``). A
  batch of :data:`STAGED_FROM` events or more is COPYd into a temporary table first and
  decided by ``ingest_staged_engagement_events``, the same decision (COPY is not possible in a
  pipeline; it reads a large batch in a quarter of the time the JSON document takes).
- ``statement_timeout`` and ``lock_timeout`` are set per transaction (``set_config(..., true)``)
  and never exceed the time left before the deadline.
"""

from __future__ import annotations

import atexit
import json
import logging
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from functions.errors import StoreError, StoreUnavailable
from functions.sinks import (
    EventRow,
    FailureRecord,
    RateLimit,
    WriteResult,
    ingest_element,
    out_of_time,
    refusal,
    remaining,
    write_result,
)

logger = logging.getLogger(__name__)

APPLICATION_NAME = "engagement-events-sink"

# The one write path (functions.sinks): one statement decides and writes the whole batch.
# Its rate-limit arguments are null when the write takes no rate limit.
_INGEST = "select public.ingest_engagement_events(%s::jsonb, %s, %s, %s, %s, %s)"

# The bulk path, for batches of STAGED_FROM events or more: the same decision for rows COPYd
# into a temporary table. COPY reads a 10,000-event batch in a quarter of the time the server
# takes to parse it as one JSON document (docs/performance.md); below some hundred events the
# table's creation costs more than the parsing saves, and small requests make no DDL at all.
STAGED_FROM = 1000
_STAGE = """
create temporary table engagement_events_staged (
    "index" integer, id uuid, identity text, user_id uuid, revision bigint, deleted boolean,
    "timestamp" timestamptz, event_type text, value jsonb, ord bigint
) on commit drop
"""
# Binary COPY: the server reads uuids, instants and numbers without parsing text; staging a
# 10,000-event batch takes about 30% less time than in the text format (docs/performance.md).
_COPY = (
    'copy engagement_events_staged ("index", id, identity, user_id, revision, deleted,'
    ' "timestamp", event_type, value, ord) from stdin (format binary)'
)
_COPY_TYPES = (
    "int4",
    "uuid",
    "text",
    "uuid",
    "int8",
    "bool",
    "timestamptz",
    "text",
    "jsonb",
    "int8",
)
_INGEST_STAGED = "select public.ingest_staged_engagement_events(%s, %s, %s, %s, %s)"

_RECORD_FAILURES = "select public.record_engagement_failures(%s::jsonb)"
_TAKE_RATE_LIMIT = "select public.take_engagement_rate_limit(%s, %s, %s, %s)"

# SQLSTATEs worth another attempt on a fresh connection or transaction: connection
# exceptions (08), server shutting down or starting (57P01-57P03), out of resources (53),
# serialization failures and deadlocks (40001, 40P01).
_RETRYABLE_PREFIXES = ("08", "53", "57P01", "57P02", "57P03", "40001", "40P01")
# The statement ran out of time; another attempt would only wait again.
_TIMEOUTS = ("57014", "55P03")
# The connection itself is gone (or never came): no sqlstate, 08xxx, or the server shutting
# down (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now).
_CONNECTION_LOST = ("08", "57P")
# Connection refusals that no retry fixes (wrong password, unknown role or database, a
# pg_hba.conf or Supavisor rejection), by the server's message: libpq gives no SQLSTATE for
# them. Everything else that fails to connect (refused, timed out, starting up, too many
# clients) is transient.
_CONNECT_REFUSALS = (
    (re.compile(r"password authentication failed|no password supplied"), "28P01"),
    (re.compile(r'role ".*" does not exist|is not permitted to log in|pg_hba\.conf'), "28000"),
    (re.compile(r"Tenant or user not found"), "28000"),
    (re.compile(r'database ".*" does not exist'), "3D000"),
    (re.compile(r"permission denied for database"), "42501"),
)
_CONNECT_REFUSALS_EXPLAINED = {
    "28P01": "wrong password",
    "28000": "role not allowed to connect",
    "3D000": "no such database",
    "42501": "no CONNECT privilege",
}


class PostgresSink:
    """Writes events to ``public.engagement_events`` through psycopg 3."""

    def __init__(
        self,
        database_url: str,
        *,
        statement_timeout_ms: int = 10_000,
        lock_timeout_ms: int = 5_000,
        max_connections: int = 4,
        max_attempts: int = 3,
        connect_timeout_s: int = 5,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._url = database_url
        self._statement_timeout_ms = statement_timeout_ms
        self._lock_timeout_ms = lock_timeout_ms
        self._max_attempts = max(1, max_attempts)
        self._connect_timeout_s = connect_timeout_s
        self.application_name = application_name
        self._max_connections = max_connections
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()
        self._opening = threading.Lock()
        self._closes_at_exit = False

    # -- the interface -----------------------------------------------------------------

    def write(
        self,
        rows: Sequence[EventRow],
        *,
        atomic: bool,
        deadline: float,
        rate: RateLimit | None = None,
    ) -> WriteResult:
        if not rows:
            return WriteResult(inserted=0, duplicates=0)
        limits = (
            (None, 0, 0, None)
            if rate is None
            else (rate.caller, rate.requests_per_minute, rate.events_per_minute, rate.events)
        )
        if len(rows) >= STAGED_FROM:
            answer = self._retrying(_INGEST_STAGED, (atomic, *limits), deadline, staged=rows)
        else:
            answer = self._retrying(_INGEST, (_document(rows), atomic, *limits), deadline)
        return write_result(answer)

    def record_failures(self, failures: Sequence[FailureRecord], *, deadline: float) -> int:
        if not failures:
            return 0
        document = json.dumps([failure.as_json() for failure in failures])
        return _count(self._retrying(_RECORD_FAILURES, (document,), deadline))

    def take_rate_limit(
        self,
        caller: str,
        events: int,
        *,
        requests_per_minute: int,
        events_per_minute: int,
        deadline: float,
    ) -> int:
        return _count(
            self._retrying(
                _TAKE_RATE_LIMIT, (caller, events, requests_per_minute, events_per_minute), deadline
            )
        )

    def _retrying(
        self,
        query: str,
        params: Sequence[Any],
        deadline: float,
        *,
        staged: Sequence[EventRow] = (),
    ) -> Any:
        """The one value ``query`` answers, run in a transaction of its own, again on a fresh
        connection while the failure is transient; ``staged`` rows are COPYd into
        ``engagement_events_staged`` first, in the same transaction."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._connection(deadline) as conn:
                    if staged:
                        with conn.transaction():
                            self._set_timeouts(conn, deadline)
                            _stage(conn, staged)
                            row = conn.execute(query, params).fetchone()
                        return row[0] if row else None
                    # The timeouts and the query in one round trip: what a pipeline sends
                    # before its Sync runs as one implicit transaction, committed at the Sync
                    # and rolled back whole if a statement fails (module docstring).
                    with conn.pipeline():
                        self._set_timeouts(conn, deadline)
                        cursor = conn.execute(query, params)
                    row = cursor.fetchone()
                    return row[0] if row else None
            except StoreUnavailable:
                raise
            except psycopg.Error as exc:
                code = exc.sqlstate
                transient = (
                    code.startswith(_RETRYABLE_PREFIXES)
                    if code
                    else isinstance(exc, psycopg.OperationalError)
                )
                if not transient:
                    if code in _TIMEOUTS:
                        raise StoreUnavailable(
                            "the database did not finish the write in time",
                            code=code,
                        ) from exc
                    raise _refusal(exc) from exc
                # Nothing was committed: the transaction rolled back with the error. (A
                # connection lost during COMMIT leaves the outcome unknown; the retry is safe
                # because the insert ignores ids already stored.)
                if code is None or code.startswith(_CONNECTION_LOST):
                    # The server went away or restarted: every pooled connection to it is
                    # dead too, and each would cost an attempt. Start afresh.
                    self._discard_idle()
                pause = min(0.05 * 2**attempt, 1.0) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                if attempt >= self._max_attempts or remaining(deadline) <= pause + 0.1:
                    raise StoreUnavailable(
                        "the write kept conflicting with concurrent transactions"
                        if code and code.startswith("40")
                        else "the database is unreachable or the connection was lost",
                        code=code or "08006",
                    ) from exc
                logger.warning(
                    "database write failed (sqlstate %s), retrying on a fresh connection",
                    code or "none",
                )
                time.sleep(pause)

    def close(self) -> None:
        self._discard_idle()

    def _discard_idle(self) -> None:
        """Close the pool (its idle connections at once, the ones in use when they come
        back); the next connection opens a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=1.0)  # its idle worker threads stop at once

    # -- one attempt ---------------------------------------------------------------------

    def _set_timeouts(self, conn: psycopg.Connection[Any], deadline: float) -> None:
        # Keep a quarter second in hand for the round trip and for raising the error.
        budget_ms = int((remaining(deadline) - 0.25) * 1000)
        if budget_ms <= 0:
            raise out_of_time()
        conn.execute(
            "select set_config('statement_timeout', %s, true),"
            " set_config('lock_timeout', %s, true)",
            (
                str(min(self._statement_timeout_ms, budget_ms)),
                str(min(self._lock_timeout_ms, budget_ms)),
            ),
        )

    # -- the pool ------------------------------------------------------------------------

    @contextmanager
    def _connection(self, deadline: float) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one transaction; the pool discards it if it broke.

        A pool closed meanwhile by another request (psycopg_pool.PoolClosed, an
        OperationalError without SQLSTATE) counts as a lost connection: retried on a new pool.
        """
        with self._lock:
            pool = self._pool
        if pool is None:
            pool = self._open_pool(deadline)
        wait = remaining(deadline)
        if wait <= 0:
            raise out_of_time()
        try:
            with pool.connection(timeout=wait) as conn:
                yield conn
        except PoolTimeout:
            raise out_of_time() from None  # every connection busy until the deadline

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]] | None:
        """The open pool, if any (None before the first write and after a lost connection)."""
        return self._pool

    def _open_pool(self, deadline: float) -> ConnectionPool[psycopg.Connection[Any]]:
        """The pool, opened once a connection made here (in the request's thread, within its
        deadline) succeeded; that connection's failure is raised as it is."""
        with self._opening:  # one pool for the requests of a cold start, not one each
            with self._lock:
                if self._pool is not None:
                    return self._pool
            self._connect(deadline).close()
            pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                self._url,
                kwargs=self._connect_kwargs(self._connect_timeout_s),
                min_size=1,
                max_size=self._max_connections,
                name=self.application_name,
                open=False,
            )
            try:
                pool.open(wait=True, timeout=max(remaining(deadline), 0.1))
            except PoolTimeout:  # the pool closed itself
                raise out_of_time() from None
            with self._lock:
                self._pool = pool
            if not self._closes_at_exit:
                # The pool's worker threads are stopped while the interpreter still runs them:
                # left to the pool's own finaliser, they are waited for at interpreter shutdown,
                # which on Python 3.13 takes 5 s a thread (a function instance would outlast
                # its graceful shutdown, gunicorn's worker its terminate).
                atexit.register(self.close)
                self._closes_at_exit = True
            return pool

    def _connect_kwargs(self, timeout: int) -> dict[str, Any]:
        return {
            "autocommit": True,
            "prepare_threshold": None,
            "connect_timeout": timeout,
            "application_name": self.application_name,
        }

    def _connect(self, deadline: float) -> psycopg.Connection[Any]:
        # libpq counts connect_timeout in whole seconds and treats anything below 2 as 2.
        timeout = max(2, min(self._connect_timeout_s, int(remaining(deadline))))
        try:
            return psycopg.connect(self._url, **self._connect_kwargs(timeout))
        except psycopg.OperationalError as exc:
            code = _connect_refusal_code(str(exc))
            if code is None:
                raise  # unreachable, starting up, full: transient
            raise StoreError(
                "the database refused the connection settings of DATABASE_URL "
                f"({_CONNECT_REFUSALS_EXPLAINED[code]}); retrying will not help",
                code=code,
            ) from None


def _connect_refusal_code(message: str) -> str | None:
    """The SQLSTATE of a connection the server refused for good, else None.

    libpq does not expose the SQLSTATE of a failed connection, only the server's message
    (English on Supabase), so the refusals that retrying cannot fix are told by their text.
    """
    for pattern, code in _CONNECT_REFUSALS:
        if pattern.search(message):
            return code
    return None


def _count(value: Any) -> int:
    """The whole number a one-value query answered (0 for no row or null)."""
    return int(value) if value is not None else 0


def _stage(conn: psycopg.Connection[Any], rows: Sequence[EventRow]) -> None:
    """COPY ``rows`` into a new ``engagement_events_staged`` (dropped at commit, so a
    transaction pooler that hands the connection on finds nothing left behind)."""
    conn.execute(_STAGE)
    with conn.cursor() as cursor, cursor.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        for index, row in enumerate(rows):
            value_json = getattr(row, "value_json", None)
            copy.write_row(
                (
                    index,
                    row.id,
                    row.identity,
                    row.user_id,
                    row.revision,
                    row.deleted,
                    row.timestamp,
                    row.event_type,
                    # The JSON text as it is (validation encoded it already), not encoded again.
                    Jsonb(
                        value_json if value_json is not None else orjson.dumps(row.value).decode(),
                        dumps=_as_is,
                    ),
                    index + 1,
                )
            )


def _as_is(text: str) -> str:
    return text


def _document(rows: Sequence[EventRow]) -> str:
    """The batch as ``ingest_engagement_events`` takes it, as JSON text. A value validation
    already encoded (``NormalisedEvent.value_json``, canonical and checked storable) is
    embedded as it is, not encoded a second time."""
    elements = []
    for index, row in enumerate(rows):
        element = ingest_element(index, row)
        value_json = getattr(row, "value_json", None)
        if value_json is not None:
            element["value"] = orjson.Fragment(value_json)
        elements.append(element)
    return orjson.dumps(elements).decode()


def _refusal(exc: psycopg.Error) -> StoreError:
    """A non-retryable database error, without values from the batch."""
    diag = exc.diag
    return refusal(
        exc.sqlstate,
        diag.message_primary,
        details=diag.message_detail,
        hint=diag.message_hint,
    )


__all__ = ["APPLICATION_NAME", "STAGED_FROM", "PostgresSink"]

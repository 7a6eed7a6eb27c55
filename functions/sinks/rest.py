"""The REST sink: events go through the Supabase Data API (PostgREST) with supabase-py.

Why it looks the way it does:

- The supabase client is created on the first write, not at import, so a cold start that
  never writes stays light; it is then reused by every request the process serves.
- Requests are built by supabase-py (``.rpc(...)``) and sent with the library's own ``send``, but
  the answer is read here: the library's ``execute()`` drops the status and the
  ``Retry-After`` header that the retry policy needs, and it never retries a POST anyway.
- Retries: network errors (a connection dropped before or after the request was processed),
  timeouts, 5xx, 408, 429, PostgREST's connection errors (PGRST000-PGRST003) and a success
  without the counts it should carry are retried with capped exponential backoff and full
  jitter; every other answer is final. Every retry is safe: the write path
  (``ingest_engagement_events``) stores each event once and applies a revision once, the
  other rpcs are idempotent too. ``Retry-After`` is honoured up to
  ``max_retry_after_s`` (5 s); a longer one is handed to the caller at once. No request and no
  pause outlives the deadline: each request's timeout is what is left of the time budget, and
  a body still arriving when it is spent is cut short.
- Events are written by ``rpc("ingest_engagement_events")``, the write path the direct sink
  calls too (functions.sinks): it finds unknown users and other users' ids itself and applies
  the identity rules, so both sinks answer alike. The rate limit rides on the first call.
- Partial mode sends chunks; chunks are separate transactions, so a failure after the first
  chunk reports how many events are already stored. The caller's retry is idempotent: every
  event's id is its event_id or derived from its identity, and an event already stored is a
  duplicate. Atomic mode sends one request.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import httpx

from functions.errors import StoreError, StoreUnavailable
from functions.sinks import (
    INGEST_FUNCTION,
    EventRow,
    FailureRecord,
    RateLimit,
    WriteResult,
    combined,
    has_counts,
    ingest_element,
    out_of_time,
    rate_arguments,
    refusal,
    remaining,
    write_result,
)

if TYPE_CHECKING:
    from postgrest.base_request_builder import RequestConfig

    from supabase import Client

logger = logging.getLogger(__name__)

RECORD_FAILURES_FUNCTION = "record_engagement_failures"
RATE_LIMIT_FUNCTION = "take_engagement_rate_limit"

# PostgREST's codes for "could not reach or use the database": retry like a 503.
_TRANSIENT_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})
_TRANSIENT_STATUSES = frozenset({408, 429})
# Time kept in hand so that the error itself is raised before the deadline, and the least
# time worth starting a request with.
_MARGIN_S = 0.25
_MIN_ATTEMPT_S = 0.05


class RestSink:
    """Writes events to ``engagement_events`` through the Data API as service_role."""

    def __init__(
        self,
        supabase_url: str,
        service_key: str,
        *,
        chunk_size: int = 500,
        max_attempts: int = 4,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        max_retry_after_s: float = 5.0,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self._url = supabase_url
        self._key = service_key
        self._chunk_size = chunk_size
        self._max_attempts = max(1, max_attempts)
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._max_retry_after_s = max_retry_after_s
        self._client: Client | None = None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:  # the key never appears in logs or tracebacks
        return f"RestSink({self._url!r}, chunk_size={self._chunk_size})"

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
        client = self._supabase()
        elements = [ingest_element(index, row) for index, row in enumerate(rows)]
        chunks = [elements] if atomic else _chunks(elements, self._chunk_size)
        results: list[WriteResult] = []
        stored = 0
        for number, chunk in enumerate(chunks):
            params: dict[str, Any] = {"events": chunk, "atomic": atomic}
            if number == 0:
                params.update(rate_arguments(rate))
            # postgrest-py types rpc params as dict[str, str]; PostgREST takes any JSON value.
            request = client.rpc(INGEST_FUNCTION, cast(dict[str, str], params)).request
            result = write_result(self._send(request, deadline, stored=stored, expect_counts=True))
            if result.retry_after:
                return result  # the rate limit refused the request: nothing was written
            results.append(result)
            stored += result.written
        return combined(results)

    def record_failures(self, failures: Sequence[FailureRecord], *, deadline: float) -> int:
        if not failures:
            return 0
        # postgrest-py types rpc params as dict[str, str]; PostgREST takes any JSON value.
        params = cast(dict[str, str], {"failures": [failure.as_json() for failure in failures]})
        request = self._supabase().rpc(RECORD_FAILURES_FUNCTION, params).request
        answer = self._send(request, deadline, stored=0)
        return answer if isinstance(answer, int) else 0

    def take_rate_limit(
        self,
        caller: str,
        events: int,
        *,
        requests_per_minute: int,
        events_per_minute: int,
        deadline: float,
    ) -> int:
        params = cast(
            dict[str, str],
            {
                "caller": caller,
                "events": events,
                "requests_per_minute": requests_per_minute,
                "events_per_minute": events_per_minute,
            },
        )
        request = self._supabase().rpc(RATE_LIMIT_FUNCTION, params).request
        answer = self._send(request, deadline, stored=0)
        return answer if isinstance(answer, int) else 0

    def close(self) -> None:
        with self._lock:
            http, self._http, self._client = self._http, None, None
        if http is not None:
            http.close()

    # -- requests ------------------------------------------------------------------------

    def _supabase(self) -> Client:
        with self._lock:
            if self._client is None:
                from supabase import ClientOptions, create_client

                self._http = httpx.Client(
                    http2=True,
                    follow_redirects=True,
                    event_hooks={
                        "request": [self._apply_time_left],
                        "response": [self._bound_body],
                    },
                )
                options = ClientOptions(
                    httpx_client=self._http,
                    auto_refresh_token=False,
                    persist_session=False,
                )
                self._client = create_client(self._url, self._key, options=options)
            return self._client

    def _send(
        self,
        request: RequestConfig[httpx.Client],
        deadline: float,
        *,
        stored: int,
        expect_counts: bool = False,
    ) -> Any:
        """Send one request, retrying transient failures; the decoded JSON of the answer.

        With ``expect_counts`` a success must carry the counts of a write (a JSON object with
        ``inserted``): any other body (a proxy's page, a cut answer) says nothing about what was
        stored, so it is retried like a network error rather than counted as "nothing stored".
        """
        attempt = 0
        while True:
            attempt += 1
            left = remaining(deadline) - _MARGIN_S
            if left < _MIN_ATTEMPT_S:
                raise out_of_time(stored=stored)
            self._local.time_left = left
            self._local.until = time.monotonic() + left
            retry_after: float | None = None
            try:
                response = request.send(httpx.Headers())
            except httpx.TimeoutException:
                code, why = "timeout", "the Data API did not answer in time"
            except (httpx.TransportError, httpx.DecodingError):
                # Dropped before or after the request was processed: either way the retry is
                # safe, because writes ignore ids already stored and the rpcs only read.
                code, why = "network_error", "the Data API could not be reached"
            else:
                if response.is_success:
                    answer = _json(response)
                    if not expect_counts or has_counts(answer):
                        return answer
                    code, why = "bad_answer", "the Data API answered without the counts"
                else:
                    body = _error_body(response)
                    code = body.get("code") or str(response.status_code)
                    if not (
                        response.status_code >= 500
                        or response.status_code in _TRANSIENT_STATUSES
                        or code in _TRANSIENT_CODES
                    ):
                        raise _refused(response, body, stored=stored)
                    why = f"the Data API answered {response.status_code}"
                    retry_after = _retry_after(response)
            finally:
                self._local.time_left = self._local.until = None
            pause = self._pause(attempt, retry_after)
            # A Retry-After longer than max_retry_after_s is the caller's to wait out, not this
            # instance's: holding the request would only hold the instance.
            if (
                attempt >= self._max_attempts
                or (retry_after is not None and retry_after > self._max_retry_after_s)
                or remaining(deadline) - pause < _MARGIN_S + _MIN_ATTEMPT_S
            ):
                raise StoreUnavailable(
                    f"{why}; giving up after {attempt} attempt(s)",
                    code=code,
                    stored=stored,
                    retry_after=max(
                        1, math.ceil(retry_after if retry_after is not None else pause)
                    ),
                )
            logger.warning("Data API write failed (%s), attempt %d; retrying", code, attempt)
            time.sleep(pause)

    def _pause(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not secrecy

    def _apply_time_left(self, request: httpx.Request) -> None:
        """httpx request hook: bound every phase of the request by the time budget left."""
        left: float | None = getattr(self._local, "time_left", None)
        if left is not None:
            request.extensions["timeout"] = httpx.Timeout(left).as_dict()

    def _bound_body(self, response: httpx.Response) -> None:
        """httpx response hook: the body, too, must arrive within the time budget.

        httpx's timeouts bound each read, not the whole answer, so a server that sends a byte
        now and then would hold the request for ever. From here on every read waits at most for
        what is left of the budget, and the body is cut short once the budget is spent.
        """
        until: float | None = getattr(self._local, "until", None)
        if until is None:
            return
        timeout = response.request.extensions.get("timeout")
        if isinstance(timeout, dict):  # httpcore reads it when the body starts
            timeout["read"] = max(until - time.monotonic(), 0.001)
        response.stream = _DeadlineStream(response.stream, until, response.request)


class _DeadlineStream(httpx.SyncByteStream):
    """A response body that raises ``httpx.ReadTimeout`` once ``until`` has passed."""

    def __init__(
        self,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream,
        until: float,
        request: httpx.Request,
    ) -> None:
        self._stream = cast(httpx.SyncByteStream, stream)  # the sink's client is synchronous
        self._until = until
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._until:
                raise httpx.ReadTimeout(
                    "the answer did not arrive within the time budget", request=self._request
                )
            yield chunk

    def close(self) -> None:
        self._stream.close()


def _chunks(elements: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """``elements`` in chunks of about ``size``, in the order of each id's first event, where
    the events that name one id (the same event_id, or the same identity) share a chunk: the
    write path decides them together, once, as it does for a batch written in one call."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for element in elements:
        key = element["id"] if "id" in element else "identity:" + element["identity"]
        groups.setdefault(key, []).append(element)
    chunks: list[list[dict[str, Any]]] = [[]]
    for group in groups.values():
        if chunks[-1] and len(chunks[-1]) + len(group) > size:
            chunks.append([])
        chunks[-1].extend(group)
    return chunks


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _error_body(response: httpx.Response) -> dict[str, str | None]:
    """PostgREST's ``{"code","message","details","hint"}``, or empty fields."""
    data = _json(response)
    if not isinstance(data, dict):
        return {}
    return {
        key: (str(data[key]) if data.get(key) is not None else None)
        for key in ("code", "message", "details", "hint")
    }


def _refused(response: httpx.Response, body: dict[str, str | None], *, stored: int) -> StoreError:
    return refusal(
        body.get("code") or str(response.status_code),
        body.get("message") or f"the Data API refused the write ({response.status_code})",
        details=body.get("details"),
        hint=body.get("hint"),
        stored=stored,
    )


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    header = response.headers.get("Retry-After")
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


__all__ = ["RestSink"]

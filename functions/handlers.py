"""One function per job: parse -> authenticate -> validate -> sink -> respond.

The process-wide state (settings, authenticator, sink) is built once, at cold start for the
settings and on first use for clients, and reused by every request this instance serves.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import flask

from functions import dead_letter, http, log, messages, rate_limit, timestamps, validation
from functions.config import Settings
from functions.errors import (
    AuthError,
    EngagementError,
    MalformedRequest,
    NotServiceRole,
    StoreError,
)
from functions.messages import FieldError
from functions.service_auth import Credential, ServiceAuthenticator, presented_credential
from functions.sinks import Sink, WriteResult

logger = logging.getLogger(__name__)


@dataclass
class _State:
    settings: Settings
    authenticator: ServiceAuthenticator
    _sink: Sink | None = None

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            self._sink = _make_sink(self.settings)
        return self._sink


def _make_sink(settings: Settings) -> Sink:
    if settings.sink == "postgres":
        from functions.sinks.postgres import PostgresSink

        return PostgresSink(str(settings.database_url))
    from functions.sinks.rest import RestSink

    return RestSink(str(settings.supabase_url), str(settings.service_role_key))


@functools.cache
def state() -> _State:
    """Settings and clients of this instance; ConfigError if the configuration is unusable."""
    target = os.environ.get("FUNCTION_TARGET", "batch_import")
    settings = Settings.from_env(needs_sink=target == "batch_import")
    authenticator = ServiceAuthenticator(
        jwt_secret=settings.jwt_secret,
        jwks_url=settings.jwks_url,
        secret_keys=settings.secret_keys,
    )
    return _State(settings, authenticator)


def prepare() -> None:
    """Cold start: set up logging and read the configuration, failing with one clear line."""
    log.setup()
    try:
        state()
    except EngagementError as exc:
        logger.critical("configuration error: %s", exc.message)
        raise


def _serve(
    request: flask.Request, job: Callable[[flask.Request, _State, str], flask.Response], name: str
) -> flask.Response:
    request_id = http.request_id_for(request)
    log.request_id_var.set(request_id)
    log.trace_var.set(log.trace_from_header(request.headers.get("X-Cloud-Trace-Context")))
    started = time.perf_counter()
    fields: dict[str, Any] = {"function": name, "method": request.method}
    try:
        response = job(request, state(), request_id)
    except EngagementError as exc:
        response = http.error_response(exc, request_id)
        fields["error"] = exc.code
    except Exception:
        logger.exception("unexpected failure in %s", name)
        response = http.internal_error_response(request_id)
        fields["error"] = "internal_error"
    # Whatever the answer, the body is read to its end here, a chunk at a time, so that no
    # early answer leaves functions-framework a whole body to buffer.
    if not http.drain(request):
        response = http.unbuffered(response)
    fields["status"] = response.status_code
    fields["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    counts = getattr(response, "engagement_counts", None)
    if isinstance(counts, dict):
        fields.update(counts)
    severity = logging.WARNING if response.status_code >= 500 else logging.INFO
    logger.log(severity, "%s answered %s", name, response.status_code, extra={"fields": fields})
    return response


def _credential_of(request: flask.Request) -> str:
    return presented_credential(request.headers.get("Authorization"), request.headers.get("apikey"))


def _authenticate(request: flask.Request, st: _State) -> Credential:
    return st.authenticator.require_service_role(_credential_of(request))


# ------------------------------------------------------------------------------ batch_import


def batch_import(request: flask.Request) -> flask.Response:
    return _serve(request, _batch_import, "batch_import")


def _batch_import(request: flask.Request, st: _State, request_id: str) -> flask.Response:
    http.require_method(request, "POST")
    presented = _credential_of(request)
    credential = st.authenticator.require_service_role(presented)
    settings = st.settings
    body = http.read_json(request, max_body_bytes=settings.max_body_bytes)
    envelope = validation.parse_envelope(body, max_events=settings.max_batch_events)
    deadline = time.monotonic() + settings.time_budget_seconds
    caller = rate_limit.caller_of(credential, presented)
    outcomes = validation.check_events(
        envelope.events,
        default_timezone=envelope.default_timezone,
        received_at=datetime.now(UTC),
        settings=settings,
        body_within_event_limit=http.body_at_most(request, settings.max_event_bytes),
    )
    valid: list[validation.NormalisedEvent] = []
    positions: list[int] = []  # index in the request of each valid event
    rejected: list[validation.Rejection] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, validation.Rejection):
            rejected.append(outcome)
        else:
            valid.append(outcome)
            positions.append(index)

    atomic = envelope.mode == "atomic"
    result = WriteResult(inserted=0, duplicates=0)
    if valid and not (atomic and rejected):
        # The rate limit is taken in the write's own round trip.
        result = st.sink.write(
            valid,
            atomic=atomic,
            deadline=deadline,
            rate=rate_limit.limit_for(settings, caller, len(envelope.events)),
        )
        if result.retry_after:
            raise rate_limit.refused(settings, result.retry_after)
        for position, error in (
            *((p, messages.UNKNOWN_USER) for p in result.unknown_users),
            *((p, _taken(valid[p])) for p in result.conflicts),
        ):
            index = positions[position]
            rejected.append(
                validation.Rejection(
                    index, validation.echoed_event_id(envelope.events[index]), (error,)
                )
            )
    else:
        rate_limit.take(st.sink, settings, caller, len(envelope.events), deadline)
    rejected.sort(key=lambda r: r.index)
    dead_lettered = 0
    if rejected:
        failures = [
            dead_letter.failure_record(
                r,
                envelope.events[r.index],
                request_id=request_id,
                credential_type=credential.key_type,
                default_timezone=envelope.default_timezone,
            )
            for r in rejected
        ]
        try:
            dead_lettered = st.sink.record_failures(failures, deadline=deadline)
        except StoreError as exc:
            # The valid events may already be committed; say so, so that the caller knows
            # its retry (idempotent) completes the batch.
            exc.stored = result.written
            raise
    status = 422 if rejected and (atomic or result.written == 0) else 200
    counts = {
        "inserted": result.inserted,
        "updated": result.updated,
        "deleted": result.deleted,
        "duplicates": result.duplicates,
    }
    response = http.json_response(
        {**counts, "rejected": [r.as_dict() for r in rejected]}, status, request_id
    )
    response.engagement_counts = {  # type: ignore[attr-defined]
        "events": len(envelope.events),
        **counts,
        "rejected": len(rejected),
        "dead_lettered": dead_lettered,
        "mode": envelope.mode,
    }
    return response


def _taken(event: validation.NormalisedEvent) -> FieldError:
    """The rejection of an event whose id is another user's: at /event_id when it was sent,
    at the event itself when derived."""
    return messages.TAKEN_EVENT_ID if event.id is not None else messages.TAKEN_DERIVED_ID


# ------------------------------------------------------------------------- convert_timestamps


def convert_timestamps(request: flask.Request) -> flask.Response:
    return _serve(request, _convert_timestamps, "convert_timestamps")


def _convert_timestamps(request: flask.Request, st: _State, request_id: str) -> flask.Response:
    http.require_method(request, "GET", "POST")
    _authenticate(request, st)
    skew = timedelta(seconds=st.settings.future_skew_seconds)
    now = datetime.now(UTC)
    if request.method == "GET":
        utc = timestamps.to_utc(
            http.required_query(request, "timestamp"),
            timezone=request.args.get("timezone"),
            now=now,
            future_skew=skew,
        )
        return http.json_response({"utc": timestamps.format_utc(utc)}, 200, request_id)
    body = http.read_json(request, max_body_bytes=st.settings.max_body_bytes)
    conversion = validation.parse_conversion(body, max_items=st.settings.max_batch_events)
    results = validation.convert_all(conversion, now=now, future_skew=skew)
    return http.json_response({"results": results}, 200, request_id)


# -------------------------------------------------------------------------- verify_service_jwt


def verify_service_jwt(request: flask.Request) -> flask.Response:
    return _serve(request, _verify_service_jwt, "verify_service_jwt")


def _verify_service_jwt(request: flask.Request, st: _State, request_id: str) -> flask.Response:
    http.require_method(request, "GET", "POST")
    token: str | None = None
    if request.method == "POST" and request.content_length:
        body = http.read_json(request, max_body_bytes=64 * 1024)
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise MalformedRequest('the body must be an object with a "token" string')
        token = body["token"]
    try:
        credential = st.authenticator.require_service_role(token or _credential_of(request))
    except AuthError as exc:
        answer: dict[str, Any] = {"valid": False, "error": exc.code, "message": exc.message}
        if isinstance(exc, NotServiceRole):
            answer["role"] = exc.role
        return http.json_response(answer, http.status_for(exc), request_id)
    expires = credential.expires_at
    return http.json_response(
        {
            "valid": True,
            "role": credential.role,
            "key_type": credential.key_type,
            "expires_at": timestamps.format_utc(expires) if expires else None,
        },
        200,
        request_id,
    )

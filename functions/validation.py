"""Validation and normalisation of engagement events against the schemas (``functions.schemas``).

Every problem of an event is reported, not just the first: all schema errors of the event and
of its payload, plus the timestamp or time zone error of the UTC conversion, plus a value that
PostgreSQL's jsonb cannot store. Messages (``functions.messages``) never repeat a value the
caller sent.

One path validates and normalises every event, valid or not. A batch's events are checked
against their schemas in one call (:data:`functions.schemas.EVENTS_VALIDATOR`), and only the
events that fail it have their schema errors collected and worded; every event then has its
timestamp converted (``functions.timestamps.to_utc``), its value encoded as canonical JSON
(``functions.canonical``) and, when it was sent without ``event_id``, its id derived
(``functions.ids``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, NamedTuple

from functions import messages, schemas, timestamps
from functions.canonical import UnstorableValue, canonical_value, compact_json
from functions.errors import MalformedRequest, TimestampError
from functions.ids import derive_event_id
from functions.messages import FieldError

__all__ = [
    "DEFAULT_FUTURE_SKEW",
    "MAX_ECHOED_EVENT_ID_CHARS",
    "Envelope",
    "FieldError",
    "Mode",
    "NormalisedEvent",
    "Rejection",
    "echoed_event_id",
    "normalise_all",
    "normalise_batch",
    "normalise_event",
    "parse_envelope",
]

DEFAULT_FUTURE_SKEW: Final = timestamps.DEFAULT_FUTURE_SKEW
"""How far in the future a timestamp may be (the table's check constraint allows the same)."""

MAX_ECHOED_EVENT_ID_CHARS: Final = 64
"""A rejected event's ``event_id`` is repeated only up to this length (a UUID has 36)."""

Mode = Literal["partial", "atomic"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A batch whose envelope is valid; its events have not been looked at yet."""

    events: list[Any]
    mode: Mode
    default_timezone: str | None


class NormalisedEvent(NamedTuple):
    """A valid event, ready for a sink: ids parsed, timestamp in UTC, ``value`` defaulted."""

    id: uuid.UUID
    user_id: uuid.UUID
    event_type: str
    timestamp: datetime
    value: dict[str, Any]
    value_json: str | None = None
    """``value`` as canonical JSON text (already checked to be storable as jsonb), so that a
    sink need not encode it again; None when the event was built without it."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An invalid event: its position in the batch, the ``event_id`` it was sent with (when
    that was a string) and every problem found."""

    index: int
    event_id: str | None
    errors: tuple[FieldError, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "errors": [error.as_dict() for error in self.errors],
        }


# --- the envelope -----------------------------------------------------------------------------


def parse_envelope(body: Any) -> Envelope:
    """Check a decoded request body and return its envelope; a bare array means
    ``{"events": array}``. Raises MalformedRequest, naming every problem of the envelope."""
    if isinstance(body, list):
        body = {"events": body}
    elif not isinstance(body, dict):
        raise MalformedRequest(
            "The request body must be a JSON object with an 'events' array, "
            "or a JSON array of events."
        )
    try:
        problems = _envelope_problems(body)
    except UnicodeEncodeError:
        # jsonschema-rs cannot read unpaired surrogates (JSON lets "\ud800" through). Inside an
        # event they are that event's problem, reported by normalise_event; so the envelope
        # is checked with its events blanked out, and only a surrogate outside them fails it.
        try:
            problems = _envelope_problems(_without_events(body))
        except UnicodeEncodeError:
            raise MalformedRequest(
                "The batch envelope contains an unpaired UTF-16 surrogate (an escape in "
                "\\ud800-\\udfff without its pair) outside its events."
            ) from None
    if problems:
        raise MalformedRequest("The batch envelope is not valid: " + "; ".join(problems) + ".")
    default_timezone: str | None = body.get("default_timezone")
    if default_timezone is not None:
        try:
            timestamps.get_zone(default_timezone)
        except TimestampError:
            raise MalformedRequest(
                "default_timezone is not a known IANA time zone name (such as Europe/Berlin)."
            ) from None
    return Envelope(
        events=body["events"],
        mode=body.get("mode", "partial"),
        default_timezone=default_timezone,
    )


def _envelope_problems(body: dict[str, Any]) -> list[str]:
    validator = schemas.BATCH_VALIDATOR
    if validator.is_valid(body):
        return []
    return [messages.envelope_problem(error) for error in validator.iter_errors(body)]


def _without_events(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with each event replaced by null: what the envelope schema sees of it."""
    events = body.get("events")
    return {**body, "events": [None] * len(events)} if isinstance(events, list) else body


# --- events -----------------------------------------------------------------------------------


def normalise_all(
    events: Sequence[Any],
    *,
    default_timezone: str | None,
    received_at: datetime,
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
    max_event_bytes: int | None = None,
) -> list[NormalisedEvent | Rejection]:
    """Validate every event of a batch and bring each valid one into the form the sinks store;
    in batch order (event ``i`` has index ``i``).

    The timestamp becomes aware UTC (see ``functions.timestamps.to_utc``); an event without
    one gets ``received_at``. The id is the sender's ``event_id`` when given, else derived
    from the normalised content (``functions.ids``), so that a retried event keeps its id.
    With ``max_event_bytes``, an event larger than that as compact JSON is rejected for its
    size alone, valid or not.
    """
    received_at = received_at.astimezone(UTC)
    failing = _failing_schemas(events)
    outcomes = [
        _normalise(event, index, index not in failing, default_timezone, received_at, future_skew)
        for index, event in enumerate(events)
    ]
    if max_event_bytes is not None:
        for index, (event, outcome) in enumerate(zip(events, outcomes, strict=True)):
            if _oversized(event, outcome, max_event_bytes):
                outcomes[index] = Rejection(
                    index,
                    echoed_event_id(event),
                    (FieldError("", messages.too_large(max_event_bytes)),),
                )
    return outcomes


def normalise_event(
    event: Any,
    index: int,
    *,
    default_timezone: str | None,
    received_at: datetime,
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> NormalisedEvent | Rejection:
    """:func:`normalise_all` of one event at position ``index`` of its batch."""
    return _normalise(
        event,
        index,
        _passes_schemas(event),
        default_timezone,
        received_at.astimezone(UTC),
        future_skew,
    )


def normalise_batch(
    envelope: Envelope,
    *,
    received_at: datetime,
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> tuple[list[NormalisedEvent], list[Rejection]]:
    """Normalise every event of a batch; returns the valid events and the rejections, each
    in batch order."""
    outcomes = normalise_all(
        envelope.events,
        default_timezone=envelope.default_timezone,
        received_at=received_at,
        future_skew=future_skew,
    )
    accepted = [o for o in outcomes if not isinstance(o, Rejection)]
    rejected = [o for o in outcomes if isinstance(o, Rejection)]
    return accepted, rejected


def echoed_event_id(event: Any) -> str | None:
    """The ``event_id`` a rejection repeats to the caller: the string sent, so that callers
    with ids of their own can match rejections, unless it is longer than
    :data:`MAX_ECHOED_EVENT_ID_CHARS` (then it is no id but data, and not repeated)."""
    sent = event.get("event_id") if isinstance(event, dict) else None
    return sent if isinstance(sent, str) and len(sent) <= MAX_ECHOED_EVENT_ID_CHARS else None


def _failing_schemas(events: Sequence[Any]) -> set[int]:
    """The positions of the events that fail their schemas, found by one call for the batch;
    each event on its own when that call cannot read the batch (jsonschema-rs refuses
    unpaired surrogates, and nesting deeper than its recursion limit)."""
    validator = schemas.EVENTS_VALIDATOR
    try:
        if validator.is_valid(events):
            return set()
        return {int(error.instance_path[0]) for error in validator.iter_errors(events)}
    except (UnicodeEncodeError, ValueError):
        return {index for index, event in enumerate(events) if not _passes_schemas(event)}


def _passes_schemas(event: Any) -> bool:
    """Whether ``event`` is valid against the event schema and its type's payload schema."""
    try:
        return bool(schemas.WHOLE_EVENT_VALIDATOR.is_valid(event))
    except (UnicodeEncodeError, ValueError):
        return False  # the checks apart find out why


_ABSENT: Final = object()
_NO_FIELDS: Final[frozenset[str]] = frozenset()


def _normalise(
    event: Any,
    index: int,
    passes_schemas: bool,
    default_timezone: str | None,
    received_at: datetime,
    future_skew: timedelta,
) -> NormalisedEvent | Rejection:
    """One event, of which :func:`_passes_schemas` (or the batch's check) said
    ``passes_schemas``: normalised, or rejected with every problem worded."""
    if not isinstance(event, dict):
        return Rejection(index, None, (FieldError("", messages.NOT_AN_OBJECT),))
    value = event.get("value", {})

    errors: list[FieldError] = []
    bad_fields: frozenset[str] = _NO_FIELDS
    if not passes_schemas:
        try:
            bad_fields = _schema_errors(event, value, errors)
        except UnicodeEncodeError:
            # The compiled validator takes UTF-8 strings only; a lone surrogate (JSON's
            # "\ud800" escape without its pair) is not Unicode and cannot be stored either.
            return Rejection(index, None, (FieldError("", messages.SURROGATE),))

    moment = _resolve_timestamp(
        event, bad_fields, errors, default_timezone, received_at, future_skew
    )

    value_json: str | None = None
    if isinstance(value, dict):
        try:
            value_json = canonical_value(value)
        except UnstorableValue as exc:
            errors.append(FieldError("/value", str(exc)))

    if errors or moment is None or value_json is None:
        return Rejection(index, echoed_event_id(event), tuple(errors))

    # The schemas have been passed: user_id is a UUID, event_id one when sent, event_type a
    # well-formed string.
    user_id = _user_uuid(event["user_id"])
    event_type: str = event["event_type"]
    sent_id = event.get("event_id")
    return NormalisedEvent(
        id=uuid.UUID(sent_id)
        if sent_id is not None
        else derive_event_id(user_id, event_type, moment, value_json),
        user_id=user_id,
        event_type=event_type,
        timestamp=moment,
        value=value,
        value_json=value_json,
    )


@functools.lru_cache(maxsize=16_384)
def _user_uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, cached: a batch names the same few users again and again (UUIDs
    are immutable, so one object can stand in every event of a user)."""
    return uuid.UUID(text)


def _schema_errors(event: dict[str, Any], value: Any, errors: list[FieldError]) -> frozenset[str]:
    """Append the worded errors of the event schema and of the payload schema, checked apart;
    returns the top-level fields the event schema found fault with."""
    bad_fields: set[str] = set()
    if not schemas.EVENT_VALIDATOR.is_valid(event):
        for error in schemas.EVENT_VALIDATOR.iter_errors(event):
            if error.instance_path:
                bad_fields.add(str(error.instance_path[0]))
            errors.extend(messages.event_errors(error))
    event_type = event.get("event_type")
    if not isinstance(event_type, str):
        return frozenset(bad_fields)
    payload_validator = schemas.PAYLOAD_VALIDATORS.get(event_type)
    if (
        payload_validator is not None
        and isinstance(value, dict)
        and not payload_validator.is_valid(value)
    ):
        schema = schemas.PAYLOAD_SCHEMAS[event_type]
        errors.extend(
            messages.payload_error(error, schema, event_type)
            for error in payload_validator.iter_errors(value)
        )
    return frozenset(bad_fields)


def _resolve_timestamp(
    event: dict[str, Any],
    bad_fields: frozenset[str],
    errors: list[FieldError],
    default_timezone: str | None,
    received_at: datetime,
    future_skew: timedelta,
) -> datetime | None:
    """The event's instant in UTC, or None when it cannot be had; appends the reasons.

    A time zone that fails the schema or is unknown is reported once, at /timezone; the
    timestamp is then still checked on its own (an offset timestamp can be fully checked),
    but not read in some other zone, and its missing zone is not reported a second time.
    """
    zone: str | None = None
    zone_broken = "timezone" in bad_fields
    if "timezone" in event and not zone_broken:
        try:
            timestamps.get_zone(event["timezone"])
            zone = event["timezone"]
        except TimestampError:
            errors.append(FieldError("/timezone", messages.UNKNOWN_ZONE))
            zone_broken = True

    raw = event.get("timestamp", _ABSENT)
    if raw is _ABSENT:
        return received_at
    if "timestamp" in bad_fields:
        return None
    try:
        return timestamps.to_utc(
            raw,
            timezone=zone,
            default_timezone=None if zone_broken else default_timezone,
            now=received_at,
            future_skew=future_skew,
        )
    except TimestampError as exc:
        if not (zone_broken and exc.code == "missing_timezone"):
            errors.append(messages.timestamp_error(exc, future_skew))
        return None


# What a valid event holds besides `value`, at most: its keys and punctuation, two UUIDs,
# event_type, timestamp and timezone of at most 64 ASCII characters each (schemas/event.schema.json).
_VALID_EVENT_FIELDS_MAX_BYTES: Final = 512


def _oversized(event: Any, outcome: NormalisedEvent | Rejection, limit: int) -> bool:
    """Whether ``event`` is larger than ``limit`` bytes as compact JSON.

    A valid event's size is bounded by its value's canonical JSON (UTF-8 takes at most 4 bytes
    a character) plus its other fields, so most events need no second encoding; the rest are
    measured exactly.
    """
    if isinstance(outcome, NormalisedEvent) and outcome.value_json is not None:
        bound = 4 * len(outcome.value_json) + _VALID_EVENT_FIELDS_MAX_BYTES
        if bound <= limit:
            return False
    return len(compact_json(event).encode(errors="surrogatepass")) > limit

"""Validation and normalisation of engagement events against the schemas (``functions.schemas``).

Every problem of an event is reported, not just the first: all schema errors of the event and
of its payload, plus the timestamp or time zone error of the UTC conversion, plus a value that
PostgreSQL's jsonb cannot store. Messages (``functions.messages``) never repeat a value the
caller sent.

One path validates and normalises every event, valid or not. A batch's events are checked
against their schemas in one call (:data:`functions.schemas.EVENTS_VALIDATOR`), and only the
events that fail it have their schema errors collected and worded; every event then has its
timestamp converted (``functions.timestamps.to_utc``), its value encoded as canonical JSON
(``functions.canonical``) and, when it was sent without ``event_id``, its identity text
written (``functions.ids``), from which the database derives its id.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, NamedTuple

import jsonschema_rs

from functions import messages, schemas, timestamps
from functions.canonical import UnstorableValue, canonical_value, compact_json
from functions.config import Settings
from functions.errors import MalformedRequest, PayloadTooLarge, TimestampError
from functions.ids import content_identity, declared_identity
from functions.messages import FieldError

__all__ = [
    "DEFAULT_FUTURE_SKEW",
    "MAX_ECHOED_EVENT_ID_CHARS",
    "Conversion",
    "Envelope",
    "FieldError",
    "Mode",
    "NormalisedEvent",
    "Rejection",
    "convert_all",
    "echoed_event_id",
    "normalise_all",
    "normalise_batch",
    "normalise_event",
    "parse_conversion",
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

    id: uuid.UUID | None
    """The sender's ``event_id``; None when the database derives the id from ``identity``."""
    user_id: uuid.UUID
    event_type: str
    timestamp: datetime
    value: dict[str, Any]
    value_json: str | None = None
    """``value`` as canonical JSON text (already checked to be storable as jsonb), so that a
    sink need not encode it again; None when the event was built without it."""
    identity: str | None = None
    """The identity text of an event sent without ``event_id`` (``functions.ids``)."""
    revision: int | None = None
    deleted: bool = False


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


def parse_envelope(body: Any, *, max_events: int | None = None) -> Envelope:
    """Check a decoded batch_import body and return its envelope; a bare array means
    ``{"events": array}``. Raises MalformedRequest naming every problem of the envelope, and
    PayloadTooLarge when it has more than ``max_events`` events."""
    if isinstance(body, list):
        body = {"events": body}
    elif not isinstance(body, dict):
        raise MalformedRequest(
            "The request body must be a JSON object with an 'events' array, "
            "or a JSON array of events."
        )
    _check_body(
        body, "events", schemas.BATCH_VALIDATOR, messages.envelope_problem, "batch envelope"
    )
    _check_count(len(body["events"]), max_events, f"the batch has {len(body['events'])} events")
    default_timezone: str | None = body.get("default_timezone")
    if default_timezone is not None:
        try:
            timestamps.get_zone(default_timezone)
        except TimestampError as exc:
            raise MalformedRequest(messages.default_zone_problem(exc.code)) from None
    return Envelope(
        events=body["events"],
        mode=body.get("mode", "partial"),
        default_timezone=default_timezone,
    )


def _check_body(
    body: Any,
    items: str,
    validator: jsonschema_rs.Validator,
    problem: Callable[[jsonschema_rs.ValidationError], str],
    what: str,
) -> None:
    """Raise MalformedRequest naming every error of ``body`` against ``validator`` (worded by
    ``problem``), where ``body[items]`` holds the items that are checked on their own later."""
    try:
        problems = _problems(validator, problem, body)
    except (UnicodeEncodeError, ValueError):
        # jsonschema-rs cannot read unpaired surrogates (JSON lets "\ud800" through), and
        # raises ValueError past its recursion limit (about 250 levels). Inside an item either
        # is that item's problem, reported with it; so the body is checked with its items
        # blanked out, and only what lies outside them fails it.
        try:
            problems = _problems(validator, problem, _without_items(body, items))
        except UnicodeEncodeError:
            raise MalformedRequest(
                f"The {what} contains an unpaired UTF-16 surrogate (an escape in "
                f"\\ud800-\\udfff without its pair) outside its {items}."
            ) from None
        except ValueError:
            raise MalformedRequest(messages.too_deep_for_schema(what)) from None
    if problems:
        raise MalformedRequest(f"The {what} is not valid: " + "; ".join(problems) + ".")


def _problems(
    validator: jsonschema_rs.Validator,
    problem: Callable[[jsonschema_rs.ValidationError], str],
    body: Any,
) -> list[str]:
    if validator.is_valid(body):
        return []
    return [problem(error) for error in validator.iter_errors(body)]


def _without_items(body: Any, items: str) -> Any:
    """``body`` with each of ``body[items]`` replaced by null: what its schema sees of it."""
    listed = body.get(items) if isinstance(body, dict) else None
    return {**body, items: [None] * len(listed)} if isinstance(listed, list) else body


def _check_count(count: int, limit: int | None, what: str) -> None:
    if limit is not None and count > limit:
        raise PayloadTooLarge(f"{what}; the limit is {limit}")


# --- convert_timestamps -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conversion:
    """A convert_timestamps body that is valid (``schemas/convert.schema.json``, a known
    ``default_timezone``); its items have not been looked at yet."""

    items: list[Any]
    default_timezone: str | None


def parse_conversion(body: Any, *, max_items: int | None = None) -> Conversion:
    """Check a decoded convert_timestamps body. Raises MalformedRequest naming every problem,
    and PayloadTooLarge when it has more than ``max_items`` items."""
    _check_body(
        body, "timestamps", schemas.CONVERT_VALIDATOR, messages.conversion_problem, "request body"
    )
    items: list[Any] = body["timestamps"]
    _check_count(len(items), max_items, f"{len(items)} timestamps")
    default_timezone: str | None = body.get("default_timezone")
    if default_timezone is not None:
        try:
            timestamps.get_zone(default_timezone)
        except TimestampError as exc:
            raise MalformedRequest(f"default_timezone: {exc.message}") from None
    return Conversion(items, default_timezone)


def convert_all(
    conversion: Conversion, *, now: datetime, future_skew: timedelta = DEFAULT_FUTURE_SKEW
) -> list[dict[str, Any]]:
    """The result of each item, in order: ``{"index", "utc"}`` or ``{"index", "error",
    "message"}``, under the rules of ``functions.timestamps.to_utc``."""
    return [
        _convert_one(index, item, conversion.default_timezone, now, future_skew)
        for index, item in enumerate(conversion.items)
    ]


def _convert_one(
    index: int, item: Any, default_zone: str | None, now: datetime, skew: timedelta
) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("timestamp"), str):
        return {
            "index": index,
            "error": "invalid_timestamp",
            "message": messages.CONVERSION_ITEM_NOT_A_TIMESTAMP,
        }
    zone = item.get("timezone")
    if zone is not None and not isinstance(zone, str):
        return {
            "index": index,
            "error": "unknown_timezone",
            "message": messages.CONVERSION_ZONE_NOT_A_STRING,
        }
    try:
        utc = timestamps.to_utc(
            item["timestamp"],
            timezone=zone,
            default_timezone=default_zone,
            now=now,
            future_skew=skew,
        )
    except TimestampError as exc:
        return {"index": index, "error": exc.code, "message": exc.message}
    return {"index": index, "utc": timestamps.format_utc(utc)}


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
    one gets ``received_at``. The id is the sender's ``event_id`` when given, else the
    database derives it from the event's identity text (``functions.ids``), so that a retried
    event keeps its id.
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


def check_events(
    events: Sequence[Any],
    *,
    default_timezone: str | None,
    received_at: datetime,
    settings: Settings,
    body_within_event_limit: bool = False,
) -> list[NormalisedEvent | Rejection]:
    """batch_import's validation step, which replay takes too: :func:`normalise_all` with the
    deployment's limits from ``settings`` (``FUTURE_SKEW_SECONDS``, ``MAX_EVENT_BYTES``), so
    that what one refuses the other refuses as well. ``body_within_event_limit``: the caller
    knows the whole body is no larger than ``MAX_EVENT_BYTES``, so no event can exceed it and
    the sizes are not measured."""
    return normalise_all(
        events,
        default_timezone=default_timezone,
        received_at=received_at,
        future_skew=timedelta(seconds=settings.future_skew_seconds),
        max_event_bytes=None if body_within_event_limit else settings.max_event_bytes,
    )


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
        except ValueError:
            # jsonschema-rs's recursion limit ("Recursion limit reached", about 250 levels):
            # the event cannot be checked, so it is rejected alone, and kept.
            return Rejection(index, echoed_event_id(event), (FieldError("", messages.TOO_DEEP),))

    moment = _resolve_timestamp(
        event, bad_fields, errors, default_timezone, received_at, future_skew
    )

    value_json: str | None = None
    if isinstance(value, dict):
        try:
            value_json = canonical_value(value)
        except UnstorableValue as exc:
            errors.append(FieldError("/value", str(exc)))

    deleted = event.get("deleted") is True
    sent_id = event.get("event_id")
    if deleted and sent_id is None and not bad_fields:
        errors.extend(_unnamed_deletion(event, value))

    if errors or moment is None or value_json is None:
        return Rejection(index, echoed_event_id(event), tuple(errors))

    # The schemas have been passed: user_id is a UUID, event_id one when sent, event_type a
    # well-formed string, revision an integer in range when sent.
    user_id = _user_uuid(event["user_id"])
    event_type: str = event["event_type"]
    revision = event.get("revision")
    return NormalisedEvent(
        id=None if sent_id is None else uuid.UUID(sent_id),
        user_id=user_id,
        event_type=event_type,
        timestamp=moment,
        value=value,
        value_json=value_json,
        identity=None
        if sent_id is not None
        else _identity(user_id, event_type, moment, value, value_json),
        # JSON Schema counts 3.0 as an integer; the database takes 3.
        revision=None if revision is None else int(revision),
        deleted=deleted,
    )


def _identity(
    user_id: uuid.UUID, event_type: str, moment: datetime, value: dict[str, Any], value_json: str
) -> str:
    """The identity text of a valid event sent without event_id: its declared identity
    fields when its type has them and it carries them all, else its content."""
    fields = schemas.IDENTITY_FIELDS.get(event_type)
    if fields:
        declared = declared_identity(
            user_id, event_type, value, fields, schemas.INSTANT_FIELDS[event_type]
        )
        if declared is not None:
            return declared
    return content_identity(user_id, event_type, moment, value_json)


def _unnamed_deletion(event: dict[str, Any], value: Any) -> list[FieldError]:
    """What a deletion without event_id lacks to name the event it deletes: its type's
    identity fields, or (for a type without them) its timestamp."""
    event_type = event.get("event_type")
    fields = schemas.IDENTITY_FIELDS.get(event_type) if isinstance(event_type, str) else None
    if fields and isinstance(event_type, str):
        missing = [name for name in fields if not isinstance(value, dict) or name not in value]
        return [messages.deletion_without_identity(event_type, missing)] if missing else []
    if "timestamp" not in event:
        return [messages.DELETION_WITHOUT_TIMESTAMP]
    return []


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
    deletion = event.get("deleted") is True
    validators = schemas.DELETION_VALIDATORS if deletion else schemas.PAYLOAD_VALIDATORS
    payload_validator = validators.get(event_type)
    if (
        payload_validator is not None
        and isinstance(value, dict)
        and not payload_validator.is_valid(value)
    ):
        schema = (schemas.DELETION_SCHEMAS if deletion else schemas.PAYLOAD_SCHEMAS)[event_type]
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
        except TimestampError as exc:
            errors.append(messages.zone_error(exc.code))
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
# event_type, timestamp and timezone of at most 64 ASCII characters each, a revision of at
# most 16 digits and a boolean (schemas/event.schema.json): under 420 bytes.
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

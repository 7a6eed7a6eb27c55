"""Validation and normalisation of engagement events against the JSON Schemas in ``schemas/``.

The schemas are data: they are read and compiled once, at import, with jsonschema-rs
(Draft 2020-12, ``format`` checked). ``batch.schema.json`` describes the request envelope,
``event.schema.json`` one event, and every file ``schemas/events/<event_type>.schema.json``
the ``value`` of one known event type; adding such a file adds a known type. An event type
without a file is accepted if it is well formed, and its ``value`` only has to be a JSON
object.

Every problem of an event is reported, not just the first: all schema errors of the event and
of its payload, plus the timestamp or time zone error of the UTC conversion. Messages never
repeat a value the caller sent (payloads are health data): they name the field and the rule.
Property names are caller-chosen too, so the one place a name is repeated is an unknown
property of the event itself (its first 64 characters, to point at typos such as
``timestmap``); unknown properties inside ``value`` are counted, never named.

Speed: valid events take a quick route (``_quick_normalise_all``: one loop over the batch, one
schema call per event, no messages); any event it gives up on takes the full route, which
checks everything apart to word each problem. tests/test_validation_fast_paths.py holds the two
routes to the same answers. The quick route exists twice: in Python here, and compiled in
``accelerator/`` (the optional package ``engagement-accel``), which is taken when it is
installed (:data:`QUICK_ROUTE`); tests/test_accelerator.py holds the two to the same answers.
docs/performance.md (section 3) has the measurements.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, cast

import jsonschema_rs
import orjson
from jsonschema_rs import ValidationError, ValidationErrorKind

from functions import timestamps
from functions.errors import ConfigError, MalformedRequest, TimestampError

SCHEMA_DIR: Final = Path(__file__).resolve().parent.parent / "schemas"
"""Where the schema files live: ``schemas/`` beside the package."""

PAYLOAD_SCHEMA_SUFFIX: Final = ".schema.json"

EVENT_ID_NAMESPACE: Final = uuid.UUID("d659e04c-afcf-4dd0-8753-9d06bf53c340")
"""Namespace of the uuid5 ids derived from event content. Never change it: stored ids and the
idempotency of retried batches depend on it."""

DEFAULT_FUTURE_SKEW: Final = timestamps.DEFAULT_FUTURE_SKEW
"""How far in the future a timestamp may be (the table's check constraint allows the same)."""

MAX_ECHOED_KEY_CHARS: Final = 64
"""At most this many characters of an unknown event property's name appear in a message."""

MAX_NAMED_UNKNOWN_KEYS: Final = 10
"""Unknown event properties reported one by one; any further ones are counted in one error."""

Mode = Literal["partial", "atomic"]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem of one event: where it is (a JSON pointer inside the event) and what rule
    it breaks. ``path`` is ``""`` for the event itself; ``message`` never contains a value."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A batch whose envelope is valid; its events have not been looked at yet."""

    events: list[Any]
    mode: Mode
    default_timezone: str | None


class NormalisedEvent(NamedTuple):
    """A valid event, ready for a sink: ids parsed, timestamp in UTC, ``value`` defaulted.

    A named tuple rather than a dataclass: a batch builds one per event, and a tuple is built
    in a quarter of the time."""

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


# --- the schemas, loaded and compiled once ---------------------------------------------------


def load_schema(path: Path) -> dict[str, Any]:
    """Read one schema file; a missing or broken file fails the cold start."""
    try:
        with path.open(encoding="utf-8") as handle:
            schema = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read JSON Schema {path.name}: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"JSON Schema {path.name} is not a JSON object")
    return cast(dict[str, Any], schema)


def compile_schema(schema: Mapping[str, Any]) -> jsonschema_rs.Validator:
    """Compile a schema the way this module does: Draft 2020-12, ``format`` asserted
    (``uuid``, ``date-time``), and never fetching anything over the network."""
    return jsonschema_rs.Draft202012Validator(dict(schema), validate_formats=True, offline=True)


def _discover_payload_schemas(directory: Path) -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob(f"*{PAYLOAD_SCHEMA_SUFFIX}")):
        event_type = path.name.removesuffix(PAYLOAD_SCHEMA_SUFFIX)
        if not _EVENT_TYPE_VALIDATOR.is_valid(event_type):
            raise ConfigError(f"payload schema {path.name} is not named after a valid event_type")
        schemas[event_type] = load_schema(path)
    return schemas


BATCH_SCHEMA: Final = MappingProxyType(load_schema(SCHEMA_DIR / "batch.schema.json"))
EVENT_SCHEMA: Final = MappingProxyType(load_schema(SCHEMA_DIR / "event.schema.json"))
_EVENT_TYPE_VALIDATOR: Final = compile_schema(EVENT_SCHEMA["properties"]["event_type"])
PAYLOAD_SCHEMAS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        event_type: MappingProxyType(schema)
        for event_type, schema in _discover_payload_schemas(SCHEMA_DIR / "events").items()
    }
)
"""Payload schema of every known event type, by event type."""

KNOWN_EVENT_TYPES: Final = frozenset(PAYLOAD_SCHEMAS)

_BATCH_VALIDATOR: Final = compile_schema(BATCH_SCHEMA)
_EVENT_VALIDATOR: Final = compile_schema(EVENT_SCHEMA)
_PAYLOAD_VALIDATORS: Final = {name: compile_schema(s) for name, s in PAYLOAD_SCHEMAS.items()}


def _resource_free(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key not in ("$id", "$schema")}


_WHOLE_EVENT_VALIDATORS: Final = {
    # Per known event type: the event schema, and the type's payload schema at /value.
    name: compile_schema(
        {
            "allOf": [
                _resource_free(EVENT_SCHEMA),
                {"properties": {"value": _resource_free(schema)}},
            ]
        }
    )
    for name, schema in PAYLOAD_SCHEMAS.items()
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
    if _BATCH_VALIDATOR.is_valid(body):
        return []
    return [_envelope_problem(error) for error in _BATCH_VALIDATOR.iter_errors(body)]


def _without_events(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with each event replaced by null: what the envelope schema sees of it."""
    events = body.get("events")
    return {**body, "events": [None] * len(events)} if isinstance(events, list) else body


def _envelope_problem(error: ValidationError) -> str:
    kind = error.kind
    if isinstance(kind, ValidationErrorKind.MinItems) and error.instance_path == ["events"]:
        return "the batch must contain at least one event"
    if isinstance(kind, ValidationErrorKind.Required):
        return f"the request body must have an {_quote_key(kind.property)} property"
    if isinstance(kind, ValidationErrorKind.AdditionalProperties):
        allowed = ", ".join(sorted(BATCH_SCHEMA["properties"]))
        names = ", ".join(_quote_key(name) for name in kind.unexpected[:MAX_NAMED_UNKNOWN_KEYS])
        return f"unknown property {names} (a batch has only: {allowed})"
    return _describe(error, prefix="", root=BATCH_SCHEMA, subject="the request body")


# --- one event --------------------------------------------------------------------------------

_ABSENT: Final = object()
_NO_FIELDS: Final[set[str]] = set()  # shared by valid events, never written to


def normalise_event(
    event: Any,
    index: int,
    *,
    default_timezone: str | None,
    received_at: datetime,
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> NormalisedEvent | Rejection:
    """Validate one event and bring it into the form the sinks store, or say everything that
    is wrong with it.

    The timestamp becomes aware UTC (see ``functions.timestamps.to_utc``); an event without
    one gets ``received_at``. The id is the sender's ``event_id`` when given, else
    :func:`derive_event_id` of the normalised content, so that a retried event keeps its id.
    """
    zone = _batch_zone(default_timezone)
    if zone is not _NO_QUICK_ROUTE:
        quick = _quick_normalise(event, zone, received_at, future_skew)
        if quick is not None:
            return quick
    return _full_normalise(event, index, default_timezone, received_at, future_skew)


def _batch_zone(default_timezone: str | None) -> Any:
    """The zone of a batch's ``default_timezone`` for :func:`_quick_normalise` (None when
    there is none), or ``_NO_QUICK_ROUTE`` when the name is unknown: every event then needs
    the full route, which reports the name where it matters."""
    if default_timezone is None:
        return None
    try:
        return timestamps.get_zone(default_timezone)
    except TimestampError:
        return _NO_QUICK_ROUTE


_NO_QUICK_ROUTE: Final = object()


def _quick_normalise(
    event: Any, default_zone: Any, received_at: datetime, future_skew: timedelta
) -> NormalisedEvent | None:
    """:func:`_quick_normalise_all` of one event."""
    return _quick_normalise_all([event], default_zone, received_at, future_skew)[0]


def _quick_normalise_all_python(
    events: Iterable[Any], default_zone: Any, received_at: datetime, future_skew: timedelta
) -> list[NormalisedEvent | None]:
    """Each valid event by the shortest route, or None for any event that is invalid or unusual.

    The full route (:func:`_full_normalise`) checks everything apart so that it can word each
    problem; a valid event passes all those checks, so this route takes only the accepting
    branch of each (one schema call, the timestamp without messages, the canonical value, the
    ids) and gives up at the first doubt. It returns exactly what the full route returns,
    which then also finds every error of the events it gives up on. One loop over the batch,
    every name it uses bound locally: a call and a few global lookups per event add up.
    """
    whole_validators, event_validator = _WHOLE_EVENT_VALIDATORS, _EVENT_VALIDATOR
    payload_types = _PAYLOAD_VALIDATORS
    get_zone, utc_or_none = timestamps.get_zone, timestamps.utc_or_none
    canonical_json, derive_id, new_tuple = _canonical_json, _derive_id, _new_tuple
    uuid_of_text, user_uuid = _uuid_of_text, _user_uuid
    received_utc = received_at.astimezone(UTC)
    latest = received_utc + future_skew
    results: list[NormalisedEvent | None] = []
    append = results.append
    for event in events:
        if type(event) is not dict:
            append(None)
            continue
        event_type = event.get("event_type")
        if type(event_type) is not str:
            append(None)
            continue
        value = event.get("value", _ABSENT)
        if value is _ABSENT:
            if event_type in payload_types:
                append(None)  # the payload schema decides whether {} will do: the full route
                continue
            value = {}
            validator = event_validator
        else:
            validator = whole_validators.get(event_type, event_validator)
        try:
            if not validator.is_valid(event):
                append(None)
                continue
        except UnicodeEncodeError:
            append(None)
            continue

        # The schema has been passed: user_id is a UUID, event_id one when sent, the zone a
        # string, the timestamp a string.
        zone = default_zone
        zone_name = event.get("timezone")
        if zone_name is not None:  # an unknown zone is an error even without a timestamp
            try:
                zone = get_zone(zone_name)
            except TimestampError:
                append(None)
                continue
        raw = event.get("timestamp")
        if raw is None:
            moment = received_utc
        else:
            converted = utc_or_none(raw, zone, latest)
            if converted is None:
                append(None)
                continue
            moment = converted

        try:  # _canonical_value, without its messages
            value_json = canonical_json(value)
        except (ValueError, RecursionError):  # NaN, Infinity, a lone surrogate, too deep
            append(None)
            continue
        if "\\u0000" in value_json:
            append(None)  # perhaps an escaped NUL: the full route decides
            continue
        user_id_text: str = event["user_id"]
        sent_id = event.get("event_id")
        append(
            new_tuple(
                NormalisedEvent,
                (
                    uuid_of_text(sent_id)
                    if sent_id is not None
                    else derive_id(user_id_text.lower(), event_type, moment, value_json),
                    user_uuid(user_id_text),
                    event_type,
                    moment,
                    value,
                    value_json,
                ),
            )
        )
    return results


def _full_normalise(
    event: Any,
    index: int,
    default_timezone: str | None,
    received_at: datetime,
    future_skew: timedelta,
) -> NormalisedEvent | Rejection:
    """normalise_event the long way: every check apart, every problem worded."""
    if not isinstance(event, dict):
        return Rejection(index, None, (FieldError("", "the event must be a JSON object"),))

    value = event.get("value", _ABSENT)
    value_sent = value is not _ABSENT
    if not value_sent:
        value = {}
    event_type = event.get("event_type")
    payload_validator = _PAYLOAD_VALIDATORS.get(event_type) if isinstance(event_type, str) else None

    errors: list[FieldError] = []
    bad_fields: set[str] = _NO_FIELDS
    try:
        # A sent value of a known type: one call checks both schemas; only when it fails are
        # they checked apart (below), to report every error in its own words.
        whole = (
            _WHOLE_EVENT_VALIDATORS[cast(str, event_type)]
            if value_sent and payload_validator is not None
            else None
        )
        if whole is None or not whole.is_valid(event):
            if not _EVENT_VALIDATOR.is_valid(event):
                bad_fields = set()
                for error in _EVENT_VALIDATOR.iter_errors(event):
                    if error.instance_path:
                        bad_fields.add(str(error.instance_path[0]))
                    errors.extend(_event_errors(error))
            if (
                payload_validator is not None
                and isinstance(value, dict)
                and not payload_validator.is_valid(value)
            ):
                schema = PAYLOAD_SCHEMAS[cast(str, event_type)]
                errors.extend(
                    _payload_error(error, schema, cast(str, event_type))
                    for error in payload_validator.iter_errors(value)
                )
    except UnicodeEncodeError:
        # The compiled validator takes UTF-8 strings only; a lone surrogate (JSON's
        # "\ud800" escape without its pair) is not Unicode and cannot be stored either.
        return Rejection(index, None, (FieldError("", _SURROGATE_MESSAGE),))

    moment = _resolve_timestamp(
        event, bad_fields, errors, default_timezone, received_at, future_skew
    )

    value_json: str | None = None
    if isinstance(value, dict):
        try:
            value_json = _canonical_value(value)
        except _UnstorableValue as exc:
            errors.append(FieldError("/value", str(exc)))

    sent_id = event.get("event_id")
    if errors or moment is None or value_json is None:
        return Rejection(index, echoed_event_id(event), tuple(errors))

    user_id_text: str = event["user_id"]
    event_type = event["event_type"]  # a str: the schema has been passed
    event_id = (
        _uuid_of_text(sent_id)
        if sent_id is not None
        # The schema let through only 8-4-4-4-12 hex digits: lower() is str(UUID(...)).
        else _derive_id(user_id_text.lower(), event_type, moment, value_json)
    )
    return NormalisedEvent(
        id=event_id,
        user_id=_user_uuid(user_id_text),
        event_type=event_type,
        timestamp=moment,
        value=value,
        value_json=value_json,
    )


@functools.lru_cache(maxsize=16_384)
def _user_uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, cached: a batch names the same few users again and again, and
    parsing a UUID costs more than the rest of an event's id handling (UUIDs are immutable)."""
    return _uuid_of_text(text)


_SAFE_UNKNOWN: Final = uuid.SafeUUID.unknown
_new_object: Final = object.__new__
_set_uuid_int: Final = uuid.UUID.__dict__["int"].__set__
_set_uuid_is_safe: Final = uuid.UUID.__dict__["is_safe"].__set__


def _uuid_of_int_quickly(number: int) -> uuid.UUID:
    # What UUID.__init__ ends with, through the slots' own setters (UUID.__setattr__ refuses),
    # without its argument handling: a third of its cost.
    made: uuid.UUID = _new_object(uuid.UUID)
    _set_uuid_int(made, number)
    _set_uuid_is_safe(made, _SAFE_UNKNOWN)
    return made


def _uuid_of_int_plainly(number: int) -> uuid.UUID:
    return uuid.UUID(int=number)


def _same_uuid(made: uuid.UUID, expected: uuid.UUID) -> bool:
    return (
        type(made) is uuid.UUID
        and made == expected
        and str(made) == str(expected)
        and hash(made) == hash(expected)
        and made.is_safe == expected.is_safe
        and made.__reduce__() == expected.__reduce__()
    )


_uuid_of_int: Final[Callable[[int], uuid.UUID]] = (
    # uuid.UUID(int=...) by the short route, if this Python's UUID is built the way the short
    # route assumes (checked once here); else by the plain constructor.
    _uuid_of_int_quickly
    if _same_uuid(_uuid_of_int_quickly(EVENT_ID_NAMESPACE.int), EVENT_ID_NAMESPACE)
    else _uuid_of_int_plainly
)


def _uuid_of_text(text: str) -> uuid.UUID:
    """``uuid.UUID(text)`` for a string the schema's ``uuid`` format has passed (8-4-4-4-12
    hexadecimal digits), for which the constructor does just this; anything else goes to the
    constructor itself."""
    if len(text) == 36:
        try:
            return _uuid_of_int(int(text.replace("-", ""), 16))
        except ValueError:
            pass
    return uuid.UUID(text)


MAX_ECHOED_EVENT_ID_CHARS: Final = 64
"""A rejected event's ``event_id`` is repeated only up to this length (a UUID has 36)."""


def echoed_event_id(event: Any) -> str | None:
    """The ``event_id`` a rejection repeats to the caller: the string sent, so that callers
    with ids of their own can match rejections, unless it is longer than
    :data:`MAX_ECHOED_EVENT_ID_CHARS` (then it is no id but data, and not repeated)."""
    sent = event.get("event_id") if isinstance(event, dict) else None
    return sent if isinstance(sent, str) and len(sent) <= MAX_ECHOED_EVENT_ID_CHARS else None


def normalise_all(
    events: Sequence[Any],
    *,
    default_timezone: str | None,
    received_at: datetime,
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> list[NormalisedEvent | Rejection]:
    """:func:`normalise_event` of every event of a batch, in batch order (event ``i`` has
    index ``i``), with the batch's zone looked up once and the valid events taken by one loop.
    Call it inside :func:`collection_paused`."""
    received_at = received_at.astimezone(UTC)
    zone = _batch_zone(default_timezone)
    quick: list[NormalisedEvent | None] = (
        [None] * len(events)
        if zone is _NO_QUICK_ROUTE
        else _quick_normalise_all(events, zone, received_at, future_skew)
    )
    return [
        outcome
        if outcome is not None
        else _full_normalise(events[index], index, default_timezone, received_at, future_skew)
        for index, outcome in enumerate(quick)
    ]


def normalise_batch(
    envelope: Envelope,
    *,
    received_at: datetime,
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> tuple[list[NormalisedEvent], list[Rejection]]:
    """Normalise every event of a batch; returns the valid events and the rejections, each
    in batch order."""
    with collection_paused():
        outcomes = normalise_all(
            envelope.events,
            default_timezone=envelope.default_timezone,
            received_at=received_at,
            future_skew=future_skew,
        )
        accepted = [o for o in outcomes if not isinstance(o, Rejection)]
        rejected = [o for o in outcomes if isinstance(o, Rejection)]
    return accepted, rejected


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the block, if it is running.

    Normalising a batch allocates a few objects per event and no reference cycles, so the
    collector has nothing to find; yet every few hundred allocations start a collection, and
    now and then a full one walks every object of the process (measured: a quarter of a
    10,000-event batch's time when it comes). Reference counting still frees everything as
    usual; the collector runs again after the block. With threads, the block that paused it
    switches it back on, and a block that found it paused leaves it alone.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# --- deterministic ids ------------------------------------------------------------------------


def derive_event_id(
    user_id: uuid.UUID, event_type: str, timestamp: datetime, value: Mapping[str, Any]
) -> uuid.UUID:
    """The id of an event sent without ``event_id``: uuid5 in :data:`EVENT_ID_NAMESPACE` of
    the canonical JSON (sorted keys, no whitespace, non-ASCII as UTF-8) of
    ``[user_id, event_type, timestamp, value]``, where user_id is the lowercase hyphenated
    UUID and timestamp the instant in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    So the same event sent twice gets the same id, and so does the same instant written with
    different offsets; any change to the value (even ``1`` versus ``1.0``) gives another id.
    This format is part of the stored data: changing it would duplicate retried events.
    Raises ValueError for a value PostgreSQL's jsonb cannot store.
    """
    return _derive_id(str(user_id), event_type, timestamp, _canonical_value(value))


_NAMESPACE_BYTES: Final = EVENT_ID_NAMESPACE.bytes
_UTC_MIN: Final = datetime.min.replace(tzinfo=UTC)
_NAIVE_MIN: Final = datetime.min

_new_tuple: Final[Callable[..., Any]] = tuple.__new__
"""``_new_tuple(NormalisedEvent, fields)`` is ``NormalisedEvent(*fields)`` without the keyword
handling of a named tuple's ``__new__`` (half its cost)."""


def _derive_id(user_id: str, event_type: str, timestamp: datetime, value_json: str) -> uuid.UUID:
    # The instant in UTC as "YYYY-MM-DDTHH:MM:SS.ffffffZ", always six fraction digits. Built
    # from a naive datetime: its isoformat() costs half an aware one's, and a fifth of
    # isoformat(timespec=...); it has the fraction only when it is not zero.
    if timestamp.tzinfo is None:
        timestamp = timestamp.astimezone(UTC)  # read as the machine's local time, as always
    naive = _NAIVE_MIN + (timestamp - _UTC_MIN)
    text = naive.isoformat()
    instant = text + "Z" if naive.microsecond else text + ".000000Z"
    # user_id, event_type and the instant have been validated to need no JSON escaping, so
    # joining them by hand to the value's canonical JSON gives exactly the canonical JSON of
    # the list, only faster.
    canonical = f'["{user_id}","{event_type}","{instant}",{value_json}]'.encode()
    # uuid.uuid5 computes exactly this; spelt out, it is a third faster.
    digest = hashlib.sha1(_NAMESPACE_BYTES + canonical).digest()  # noqa: S324 - no security use
    # uuid.UUID(bytes=digest[:16], version=5): the variant and version bits set by hand.
    return _uuid_of_int(
        (int.from_bytes(digest[:16], "big") & _CLEAR_VERSION_BITS) | _VERSION_5_BITS
    )


_CLEAR_VERSION_BITS: Final = ~((0xC000 << 48) | (0xF000 << 64))
_VERSION_5_BITS: Final = (0x8000 << 48) | (5 << 76)


_SURROGATE_MESSAGE: Final = (
    "the event contains an unpaired UTF-16 surrogate (an escape in \\ud800-\\udfff without "
    "its pair), which is not valid Unicode"
)


class _UnstorableValue(ValueError):
    """A value that is valid JSON to Python but that PostgreSQL's jsonb refuses."""


_ESCAPED_NUL: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _compact_encoder(*, sort_keys: bool, allow_nan: bool) -> Callable[[Any], str]:
    """``JSONEncoder(sort_keys=..., separators=(",", ":"), ensure_ascii=False,
    allow_nan=...).encode``, with the C encoder that ``encode`` builds on every call built
    once instead (half the cost per event). Circular references are not checked: a value
    parsed from JSON cannot have any, and a deep one still ends in RecursionError."""
    encoder = json.JSONEncoder(
        sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (not CPython)
        return encoder.encode
    # The arguments JSONEncoder.iterencode passes: markers (None: no circularity check),
    # default, string encoder, indent, separators, sort_keys, skipkeys, allow_nan.
    chunks = make(
        None,
        encoder.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        sort_keys,
        False,
        allow_nan,
    )

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


_CANONICAL_ENCODE: Final = _compact_encoder(sort_keys=True, allow_nan=False)
_ORJSON_DUMPS: Final = orjson.dumps
_ORJSON_SORT_KEYS: Final = orjson.OPT_SORT_KEYS

compact_json: Final = _compact_encoder(sort_keys=False, allow_nan=True)
"""A JSON document as compact text (no whitespace, non-ASCII as is, keys in their order):
exactly ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``, only faster."""


def _canonical_json_plainly(value: Any) -> str:
    text = _CANONICAL_ENCODE(value)
    text.encode()  # a lone surrogate raises UnicodeEncodeError, as it must
    return text


def _canonical_json_quickly(value: Any) -> str:
    # orjson writes the same canonical JSON as the json module, a fifth of the time, except in
    # cases it either refuses (integers beyond 64 bits, lone surrogates, nesting deeper than
    # 254) or that show in its output: NaN and Infinity become null, and floats under 1e-4
    # are spelt 1e-5 or 0.00001 where Python spells 1e-05. Those values, and any that merely
    # look like them, go to the json module, which answers (or raises) as it always has.
    try:
        text = _ORJSON_DUMPS(value, option=_ORJSON_SORT_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return _canonical_json_plainly(value)
    # (Searching the text costs a third of searching orjson's bytes.)
    if ("null" in text or "e-" in text or "0.0000" in text) and _MAY_DIFFER(text):
        return _canonical_json_plainly(value)
    return text


_MAY_DIFFER: Final = re.compile(
    # A null, a number with a negative exponent, or one under 1e-4 spelt out. In compact JSON
    # a value starts the document or follows ":", "," or "[", so a string can rarely look so.
    r"[:,\[](?:null|-?[0-9.]+e-|-?0\.0000)"
).search


def _writes_canonical_json(encode: Callable[[Any], str]) -> bool:
    # A sample of each kind of JSON value, spelt alike by both encoders.
    sample = {"b": [1, -2.5, 1e16, 0.0001, True, False, '\u00e9\U0001f600\x00\n"\\'], "a": {}}
    return encode(sample) == _canonical_json_plainly(sample)


_canonical_json: Final[Callable[[Any], str]] = (
    # The canonical JSON of a value: by orjson where it writes what the json module writes
    # (checked once here), else by the json module. Raises what _canonical_json_plainly
    # raises. tests/test_validation_fast_paths.py holds the two to the same output.
    _canonical_json_quickly
    if _writes_canonical_json(_canonical_json_quickly)
    else _canonical_json_plainly
)


def _canonical_value(value: Any) -> str:
    """The canonical JSON of a value; proves on the way that jsonb can store it."""
    try:
        text = _canonical_json(value)
    except UnicodeEncodeError:
        raise _UnstorableValue("/value must not contain unpaired UTF-16 surrogates") from None
    except ValueError:
        # Python's json module reads NaN and Infinity; JSON and jsonb have no such numbers.
        raise _UnstorableValue("/value must not contain NaN or Infinity") from None
    except RecursionError:
        raise _UnstorableValue("/value is nested too deeply") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise _UnstorableValue("/value must not contain the NUL character (\\u0000)")
    return text


# --- timestamps -------------------------------------------------------------------------------


def _resolve_timestamp(
    event: dict[str, Any],
    bad_fields: set[str],
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
    zone_arg: str | None = None
    zone_broken = "timezone" in bad_fields
    if "timezone" in event and not zone_broken:
        try:
            timestamps.get_zone(event["timezone"])
            zone_arg = event["timezone"]
        except TimestampError:
            errors.append(FieldError("/timezone", _UNKNOWN_ZONE))
            zone_broken = True

    raw = event.get("timestamp", _ABSENT)
    if raw is _ABSENT:
        return received_at.astimezone(UTC)
    if "timestamp" in bad_fields:
        return None
    try:
        return timestamps.to_utc(
            raw,
            timezone=zone_arg,
            default_timezone=None if zone_broken else default_timezone,
            now=received_at,
            future_skew=future_skew,
        )
    except TimestampError as exc:
        if not (zone_broken and exc.code == "missing_timezone"):
            errors.append(_timestamp_error(exc, future_skew))
        return None


_UNKNOWN_ZONE: Final = "/timezone is not a known IANA time zone name (such as Europe/Berlin)"

_TIMESTAMP_MESSAGES: Final = {
    "invalid_timestamp": (
        "/timestamp must be an ISO 8601 date and time, such as 2024-12-01T08:30:00+01:00"
    ),
    "missing_timezone": (
        "/timestamp has no UTC offset, and neither the event's timezone nor the batch's "
        "default_timezone says in which time zone to read it"
    ),
    "nonexistent_local_time": (
        "/timestamp does not exist in its time zone: the local time falls in a "
        "daylight-saving gap; send it with a UTC offset"
    ),
    "ambiguous_local_time": (
        "/timestamp is ambiguous in its time zone: the local time occurs twice in a "
        "daylight-saving overlap; send it with a UTC offset"
    ),
}


def _timestamp_error(exc: TimestampError, future_skew: timedelta) -> FieldError:
    # Messages are built from the code, never from exc.message, which may quote the input.
    field = exc.field
    if exc.code == "unknown_timezone":
        if field == "timezone":
            return FieldError("/timezone", _UNKNOWN_ZONE)
        return FieldError(
            "/timestamp",
            "/timestamp has no UTC offset and the batch's default_timezone is not a known "
            "IANA time zone name",
        )
    path = "/timezone" if field == "timezone" else "/timestamp"
    if exc.code == "timestamp_in_future":
        message = f"/timestamp is more than {_duration(future_skew)} in the future"
    else:
        message = _TIMESTAMP_MESSAGES.get(
            exc.code, f"{path} cannot be converted to UTC ({exc.code})"
        )
    return FieldError(path, message)


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"
    return f"{seconds} seconds"


# --- schema errors as value-free messages ----------------------------------------------------


def _event_errors(error: ValidationError) -> Iterable[FieldError]:
    kind = error.kind
    if isinstance(kind, ValidationErrorKind.AdditionalProperties) and not error.instance_path:
        allowed = sorted(EVENT_SCHEMA["properties"])
        for name in kind.unexpected[:MAX_NAMED_UNKNOWN_KEYS]:
            guess = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            yield FieldError(
                "",
                f"unknown property {_quote_key(name)}{hint}; an event has only: "
                + ", ".join(allowed),
            )
        if len(kind.unexpected) > MAX_NAMED_UNKNOWN_KEYS:
            more = len(kind.unexpected) - MAX_NAMED_UNKNOWN_KEYS
            yield FieldError("", f"and {more} more unknown properties")
        return
    yield FieldError(
        _pointer(error.instance_path, _required_name(error)),
        _describe(error, prefix="", root=EVENT_SCHEMA, subject="the event"),
    )


def _payload_error(
    error: ValidationError, schema: Mapping[str, Any], event_type: str
) -> FieldError:
    kind = error.kind
    path = _pointer(error.instance_path, _required_name(error), prefix="/value")
    if isinstance(kind, ValidationErrorKind.AdditionalProperties):
        # Names inside value are never repeated: a key can carry health data as well as a value.
        node = _schema_node(schema, error.schema_path[:-1])
        allowed = ", ".join(sorted(node.get("properties", {})))
        count = len(kind.unexpected)
        noun = "property" if count == 1 else "properties"
        return FieldError(
            path,
            f"{path} has {count} {noun} that the {event_type} payload does not define "
            f"(allowed: {allowed})",
        )
    return FieldError(path, _describe(error, prefix="/value", root=schema, subject="/value"))


def _required_name(error: ValidationError) -> str | None:
    kind = error.kind
    return kind.property if isinstance(kind, ValidationErrorKind.Required) else None


def _pointer(parts: Iterable[str | int], extra: str | None = None, prefix: str = "") -> str:
    """RFC 6901 JSON pointer of an instance path (``extra`` appended for a missing property)."""
    tokens = [str(part) for part in parts]
    if extra is not None:
        tokens.append(extra)
    return prefix + "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _quote_key(name: str) -> str:
    """A caller's property name for a message: at most MAX_ECHOED_KEY_CHARS characters, quoted
    as a JSON string so control characters cannot break a log line."""
    if len(name) > MAX_ECHOED_KEY_CHARS:
        name = name[:MAX_ECHOED_KEY_CHARS] + "..."
    return "'" + json.dumps(name, ensure_ascii=True)[1:-1] + "'"


def _schema_node(root: Mapping[str, Any], path: Iterable[str | int]) -> Mapping[str, Any]:
    node: Any = root
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node if isinstance(node, Mapping) else {}


_ARTICLES: Final = {
    "array": "an array",
    "boolean": "a boolean (true or false)",
    "integer": "an integer",
    "null": "null",
    "number": "a number",
    "object": "an object",
    "string": "a string",
}

_FORMATS: Final = {
    "uuid": "a UUID in its 8-4-4-4-12 hexadecimal form",
    "date-time": "an RFC 3339 date-time with a UTC offset, such as 2024-12-01T08:30:00Z",
    "date": "an RFC 3339 date, such as 2024-12-01",
}

_PATTERN_HINTS: Final = {
    "^[a-z][a-z0-9_]{0,63}$": "lower snake case, 1-64 characters",
    "^[a-z][a-z0-9_]{0,31}$": "lower snake case, 1-32 characters",
}


def _describe(error: ValidationError, *, prefix: str, root: Mapping[str, Any], subject: str) -> str:
    """A sentence for one schema error, from its kind and the schema alone.

    jsonschema-rs's own messages quote the offending value, so they are never used.
    """
    kind = error.kind
    path = _pointer(error.instance_path, prefix=prefix) or subject
    if isinstance(kind, ValidationErrorKind.Required):
        return f"{_pointer(error.instance_path, kind.property, prefix=prefix)} is required"
    if isinstance(kind, ValidationErrorKind.Type):
        return f"{path} must be " + " or ".join(_ARTICLES.get(t, t) for t in kind.types)
    if isinstance(kind, ValidationErrorKind.Enum):
        return f"{path} must be one of: " + ", ".join(_literal(o) for o in kind.options)
    if isinstance(kind, ValidationErrorKind.Constant):
        return f"{path} must be {_literal(kind.expected_value)}"
    if isinstance(kind, ValidationErrorKind.Format):
        return f"{path} must be " + _FORMATS.get(kind.format, f"a valid {kind.format}")
    if isinstance(kind, ValidationErrorKind.Pattern):
        node = _schema_node(root, error.schema_path[:-1])
        hint = _PATTERN_HINTS.get(kind.pattern)
        if hint is None and node.get("examples"):
            hint = "for example " + " or ".join(_literal(x) for x in node["examples"][:2])
        return f"{path} must match {kind.pattern}" + (f" ({hint})" if hint else "")
    if isinstance(kind, ValidationErrorKind.Minimum):
        return f"{path} must be at least {kind.limit}"
    if isinstance(kind, ValidationErrorKind.Maximum):
        return f"{path} must be at most {kind.limit}"
    if isinstance(kind, ValidationErrorKind.ExclusiveMinimum):
        return f"{path} must be greater than {kind.limit}"
    if isinstance(kind, ValidationErrorKind.ExclusiveMaximum):
        return f"{path} must be less than {kind.limit}"
    if isinstance(kind, ValidationErrorKind.MultipleOf):
        return f"{path} must be a multiple of {kind.multiple_of}"
    if isinstance(kind, ValidationErrorKind.MinLength):
        return f"{path} must be at least {_count(kind.limit, 'character')} long"
    if isinstance(kind, ValidationErrorKind.MaxLength):
        return f"{path} must be at most {_count(kind.limit, 'character')} long"
    if isinstance(kind, ValidationErrorKind.MinItems):
        return f"{path} must contain at least {_count(kind.limit, 'item')}"
    if isinstance(kind, ValidationErrorKind.MaxItems):
        return f"{path} must contain at most {_count(kind.limit, 'item')}"
    if isinstance(kind, ValidationErrorKind.MinProperties):
        return f"{path} must have at least {_count(kind.limit, 'property', 'properties')}"
    if isinstance(kind, ValidationErrorKind.MaxProperties):
        return f"{path} must have at most {_count(kind.limit, 'property', 'properties')}"
    if isinstance(kind, ValidationErrorKind.UniqueItems):
        return f"{path} must not contain duplicate items"
    if isinstance(kind, ValidationErrorKind.AdditionalProperties):
        return f"{path} has {_count(len(kind.unexpected), 'property', 'properties')} not allowed"
    if isinstance(kind, ValidationErrorKind.FalseSchema):
        return f"{path} is not allowed"
    return f"{path} does not satisfy the schema's '{kind.name}' rule"


def _literal(value: Any) -> str:
    """A schema-side constant (an enum option, an example) as it would be written in JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else (plural or singular + 's')}"


# --- the quick route, compiled ----------------------------------------------------------------


ACCELERATOR_SOURCE: Final = SCHEMA_DIR.parent / "accelerator" / "engagement_accel.c"
"""The C source of the compiled quick route; the module is used only when built from it."""


def _configured_accelerator() -> tuple[Any, str]:
    """The compiled quick route (``accelerator/``, the optional package ``engagement-accel``)
    handed the objects it calls, and ``""``; or None and why not: the package is not installed
    (built without a C compiler, or left out of requirements.txt), or it was built from another
    version of its source (a build cache, say) and may not give this code's answers. Without it
    the pure-Python route runs, with the same answers."""
    try:
        import engagement_accel  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None, "engagement-accel is not installed"
    try:
        source_sha256 = hashlib.sha256(ACCELERATOR_SOURCE.read_bytes()).hexdigest()
    except OSError:
        return (
            None,
            "accelerator/engagement_accel.c is missing, so engagement-accel cannot be checked",
        )
    if getattr(engagement_accel, "source_sha256", None) != source_sha256:
        return None, (
            "engagement-accel was built from another version of accelerator/engagement_accel.c"
        )
    engagement_accel.configure(
        whole_is_valid={name: v.is_valid for name, v in _WHOLE_EVENT_VALIDATORS.items()},
        event_is_valid=_EVENT_VALIDATOR.is_valid,
        payload_types=dict.fromkeys(_PAYLOAD_VALIDATORS),
        get_zone=timestamps.get_zone,
        utc_or_none=timestamps.utc_or_none,
        canonical_json=_canonical_json,
        # orjson is called directly only where _canonical_json takes orjson's text.
        orjson_dumps=_ORJSON_DUMPS if _canonical_json is _canonical_json_quickly else None,
        orjson_option=_ORJSON_SORT_KEYS,
        user_uuid=_user_uuid,
        uuid_of_text=_uuid_of_text,
        uuid_of_int=_uuid_of_int,
        derive_id=_derive_id,
        normalised_type=NormalisedEvent,
        timestamp_error=TimestampError,
        namespace_bytes=_NAMESPACE_BYTES,
        sha1=hashlib.sha1,
        # UUIDs are made through their slots only where _uuid_of_int makes them so.
        uuid_slots=(
            (uuid.UUID, uuid.UUID.__dict__["int"], uuid.UUID.__dict__["is_safe"], _SAFE_UNKNOWN)
            if _uuid_of_int is _uuid_of_int_quickly
            else None
        ),
    )
    return engagement_accel, ""


_ACCELERATOR, QUICK_ROUTE_WHY_NOT = _configured_accelerator()
"""The configured compiled quick route, or None; and why not (``""`` when it is there)."""

QUICK_ROUTE: Final[Literal["compiled", "python"]] = (
    "compiled" if _ACCELERATOR is not None else "python"
)
"""Which quick route this process takes for valid events: the compiled one when the optional
``engagement-accel`` package is installed (and built from ``accelerator/engagement_accel.c`` as
it is here), else the pure-Python one. Both give the same answers
(tests/test_validation_fast_paths.py, tests/test_accelerator.py); the compiled one is about
twice as fast (docs/performance.md, section 3)."""


def _quick_normalise_all_compiled(
    events: Iterable[Any], default_zone: Any, received_at: datetime, future_skew: timedelta
) -> list[NormalisedEvent | None]:
    """:func:`_quick_normalise_all_python`, compiled (``accelerator/engagement_accel.c``)."""
    received_utc = received_at.astimezone(UTC)
    results: list[NormalisedEvent | None] = _ACCELERATOR.quick_normalise_all(
        events, default_zone, received_utc, received_utc + future_skew
    )
    return results


_quick_normalise_all: Final = (
    _quick_normalise_all_compiled if _ACCELERATOR is not None else _quick_normalise_all_python
)

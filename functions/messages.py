"""The wording of validation errors: one value-free sentence per problem.

Messages never repeat a value the caller sent (payloads are health data): they name the field
and the rule, from the kind of a schema error and the schema alone (jsonschema-rs's own
messages quote the offending value, so they are never used), or from a timestamp error's code
(never from its message, which may quote the input). Property names are caller-chosen too, so
the one place a name is repeated is an unknown property of the event itself (its first 64
characters, to point at typos such as ``timestmap``); unknown properties inside ``value`` are
counted, never named.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from jsonschema_rs import ValidationError, ValidationErrorKind

from functions.errors import TimestampError
from functions.schemas import BATCH_SCHEMA, CONVERT_SCHEMA, EVENT_SCHEMA

MAX_ECHOED_KEY_CHARS: Final = 64
"""At most this many characters of an unknown event property's name appear in a message."""

MAX_NAMED_UNKNOWN_KEYS: Final = 10
"""Unknown event properties reported one by one; any further ones are counted in one error."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem of one event: where it is (a JSON pointer inside the event) and what rule
    it breaks. ``path`` is ``""`` for the event itself; ``message`` never contains a value."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


NOT_AN_OBJECT: Final = "the event must be a JSON object"

SURROGATE: Final = (
    "the event contains an unpaired UTF-16 surrogate (an escape in \\ud800-\\udfff without "
    "its pair), which is not valid Unicode"
)

TOO_DEEP: Final = (
    "the event is nested too deeply for its schemas to be checked (jsonschema-rs stops at "
    "about 250 levels)"
)


def too_deep_for_schema(what: str) -> str:
    """The 400 for a body whose part outside its items is nested past jsonschema-rs's limit."""
    return (
        f"The {what} is nested too deeply for its schema to be checked (jsonschema-rs stops "
        "at about 250 levels)."
    )


UNKNOWN_ZONE: Final = "/timezone is not a known IANA time zone name (such as Europe/Berlin)"

_NO_PLACES_CLOCK: Final = (
    "names no place's clock (Factory is tzdata's zone for machines whose time zone was never "
    "set); send the IANA name of the place, such as Europe/Berlin"
)
UNUSABLE_ZONE: Final = "/timezone " + _NO_PLACES_CLOCK


def zone_error(code: str) -> FieldError:
    """The event's error for a ``timezone`` that ``functions.timestamps.get_zone`` refused
    with ``code``: unknown, or ``Factory`` (``unusable_timezone``)."""
    return FieldError("/timezone", UNUSABLE_ZONE if code == "unusable_timezone" else UNKNOWN_ZONE)


def default_zone_problem(code: str) -> str:
    """The 400 message for a batch's ``default_timezone`` that ``get_zone`` refused with
    ``code``."""
    if code == "unusable_timezone":
        return f"default_timezone {_NO_PLACES_CLOCK}."
    return "default_timezone is not a known IANA time zone name (such as Europe/Berlin)."


def too_large(limit: int) -> str:
    return f"the event is larger than the limit of {limit} bytes"


# --- identity ---------------------------------------------------------------------------------

DELETION_WITHOUT_TIMESTAMP: Final = FieldError(
    "/timestamp",
    "a deletion without event_id names the event it deletes by its timestamp and value: "
    "send the timestamp, or the event_id",
)


def deletion_without_identity(event_type: str, missing: Iterable[str]) -> FieldError:
    """The error of a deletion without event_id that lacks identity fields of its type (the
    names come from the schema, not from the caller)."""
    return FieldError(
        "/value",
        f"a deletion without event_id names the {event_type} event it deletes by its identity "
        f"fields; /value lacks {', '.join(missing)}",
    )


UNKNOWN_USER: Final = FieldError("/user_id", "user_id is not a user of this project")

TAKEN_EVENT_ID: Final = FieldError(
    "/event_id",
    "event_id is already the id of another user's event; this event was not stored",
)
TAKEN_DERIVED_ID: Final = FieldError(
    "",
    "the id derived from this event's identity is already the id of another user's event; "
    "this event was not stored (send it with an event_id of its own)",
)


# --- the envelope -----------------------------------------------------------------------------


def envelope_problem(error: ValidationError) -> str:
    """A phrase for one error of batch_import's envelope (joined into one 400 message)."""
    return _body_problem(error, BATCH_SCHEMA, "events", "the batch must contain at least one event")


def conversion_problem(error: ValidationError) -> str:
    """A phrase for one error of convert_timestamps' request body (joined into one 400 message)."""
    return _body_problem(
        error, CONVERT_SCHEMA, "timestamps", "the request must contain at least one timestamp"
    )


def _body_problem(
    error: ValidationError, schema: Mapping[str, Any], items: str, no_items: str
) -> str:
    """A phrase for one error of a request body checked against ``schema``, whose list
    property ``items`` must not be empty (``no_items`` says so)."""
    kind = error.kind
    if isinstance(kind, ValidationErrorKind.MinItems) and error.instance_path == [items]:
        return no_items
    if isinstance(kind, ValidationErrorKind.Required):
        return f"the request body must have the {quote_key(kind.property)} property"
    if isinstance(kind, ValidationErrorKind.AdditionalProperties):
        allowed = ", ".join(sorted(schema["properties"]))
        names = ", ".join(quote_key(name) for name in kind.unexpected[:MAX_NAMED_UNKNOWN_KEYS])
        return f"unknown property {names} (the request body has only: {allowed})"
    return describe(error, prefix="", root=schema, subject="the request body")


CONVERSION_ITEM_NOT_A_TIMESTAMP: Final = 'each item must be an object with a "timestamp" string'
CONVERSION_ZONE_NOT_A_STRING: Final = "timezone must be a string"


# --- one event --------------------------------------------------------------------------------


def event_errors(error: ValidationError) -> Iterator[FieldError]:
    """The errors an error of the event schema stands for (one per unknown property)."""
    kind = error.kind
    if isinstance(kind, ValidationErrorKind.AdditionalProperties) and not error.instance_path:
        allowed = sorted(EVENT_SCHEMA["properties"])
        for name in kind.unexpected[:MAX_NAMED_UNKNOWN_KEYS]:
            guess = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            yield FieldError(
                "",
                f"unknown property {quote_key(name)}{hint}; an event has only: "
                + ", ".join(allowed),
            )
        if len(kind.unexpected) > MAX_NAMED_UNKNOWN_KEYS:
            more = len(kind.unexpected) - MAX_NAMED_UNKNOWN_KEYS
            yield FieldError("", f"and {more} more unknown properties")
        return
    yield FieldError(
        _pointer(error.instance_path, _required_name(error)),
        describe(error, prefix="", root=EVENT_SCHEMA, subject="the event"),
    )


def payload_error(error: ValidationError, schema: Mapping[str, Any], event_type: str) -> FieldError:
    """The error at ``/value`` for an error of the ``event_type`` payload schema ``schema``."""
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
    return FieldError(path, describe(error, prefix="/value", root=schema, subject="/value"))


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


def timestamp_error(exc: TimestampError, future_skew: timedelta) -> FieldError:
    """The event's error for a failed UTC conversion, from the error's code and field."""
    field = exc.field
    if exc.code in ("unknown_timezone", "unusable_timezone"):
        if field == "timezone":
            return zone_error(exc.code)
        if exc.code == "unusable_timezone":
            return FieldError("/timestamp", "the batch's default_timezone " + _NO_PLACES_CLOCK)
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


# --- schema errors as sentences ----------------------------------------------------------------


def _required_name(error: ValidationError) -> str | None:
    kind = error.kind
    return kind.property if isinstance(kind, ValidationErrorKind.Required) else None


def _pointer(parts: Iterable[str | int], extra: str | None = None, prefix: str = "") -> str:
    """RFC 6901 JSON pointer of an instance path (``extra`` appended for a missing property)."""
    tokens = [str(part) for part in parts]
    if extra is not None:
        tokens.append(extra)
    return prefix + "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def quote_key(name: str) -> str:
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


def describe(error: ValidationError, *, prefix: str, root: Mapping[str, Any], subject: str) -> str:
    """A sentence for one schema error, from its kind and the schema ``root`` alone; the
    instance path is written after ``prefix``, and ``subject`` names the instance itself."""
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

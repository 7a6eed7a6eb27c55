"""Property-based tests (Hypothesis) of validation and timestamps: rules that must hold for any
input, not only for the sample files.

Deterministic (derandomized, no example database) and small, so they cost about a second each.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import pytz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions import schemas, timestamps, validation
from functions.canonical import canonical_value
from functions.errors import MalformedRequest, TimestampError
from functions.ids import content_identity
from functions.validation import NormalisedEvent, Rejection
from tests import tzif_reference

FAST = settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RECEIVED_AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)
USER = "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f"
CANARY = "CANARY-7731"

# Strings as JSON can carry them: any code point, lone surrogates and NUL included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
zone_names = st.sampled_from(sorted(pytz.all_timezones))
naive_times = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31))
field_values = {
    "user_id": st.sampled_from([USER, USER.upper(), "not-a-uuid", ""]) | json_values,
    "event_type": st.sampled_from(["app_open", "goal_complete", "steps_import", "custom_x", "X"])
    | json_values,
    "timestamp": naive_times.map(datetime.isoformat)
    | st.sampled_from(["2024-03-10T02:30:00", "2024-11-03T01:30:00", "2024-12-01T07:30:00Z"])
    | json_values,
    "timezone": zone_names | st.sampled_from(["Mars/Olympus", "europe/berlin"]) | json_values,
    "value": st.dictionaries(
        st.sampled_from(["platform", "steps", "goal_id", "source", "x~y", "a/b"]) | any_text,
        json_values,
        max_size=4,
    )
    | json_values,
    "event_id": st.uuids().map(str) | json_values,
}
event_like = st.fixed_dictionaries({}, optional=dict(field_values.items())) | st.dictionaries(
    any_text, json_values, max_size=3
)


def _resolve(document: Any, pointer: str) -> tuple[bool, Any]:
    """(True, node) when the RFC 6901 pointer names a node of ``document``."""
    node = document
    if pointer == "":
        return True, node
    assert pointer.startswith("/"), pointer
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False, None
    return True, node


def _required_at(pointer: str) -> set[str]:
    """The property names a schema requires in the object that ``pointer``'s parent names."""
    if pointer.count("/") == 1:
        return set(schemas.EVENT_SCHEMA["required"])
    if pointer.startswith("/value/") and pointer.count("/") == 2:
        return {
            name
            for schema in schemas.PAYLOAD_SCHEMAS.values()
            for name in schema.get("required", ())
        }
    return set()


def _normalise(event: Any, zone: str | None = None) -> NormalisedEvent | Rejection:
    return validation.normalise_event(
        event, 3, default_timezone=zone, received_at=RECEIVED_AT, future_skew=timedelta(minutes=5)
    )


@FAST
@given(event=json_values | event_like, zone=st.none() | st.just("Europe/Berlin"))
def test_any_event_is_normalised_or_rejected_with_pointers_into_it(
    event: Any, zone: str | None
) -> None:
    outcome = _normalise(event, zone)
    if isinstance(outcome, NormalisedEvent):
        assert isinstance(event, dict)
        assert outcome.user_id == uuid.UUID(event["user_id"])
        assert outcome.timestamp.utcoffset() == timedelta(0)
        assert outcome.timestamp - RECEIVED_AT <= timedelta(minutes=5)
        return
    assert isinstance(outcome, Rejection)
    assert outcome.index == 3
    assert outcome.errors, "a rejection says why"
    for error in outcome.errors:
        exists, _ = _resolve(event, error.path)
        if exists:
            continue
        parent, _, last = error.path.rpartition("/")
        # A missing property of an object that exists, or of a `value` left out (it is {}).
        assert _resolve(event, parent)[0] or parent == "/value", error
        assert last.replace("~1", "/").replace("~0", "~") in _required_at(error.path), error


@FAST
@given(event=event_like)
def test_the_outcome_does_not_depend_on_anything_but_the_event(event: dict[str, Any]) -> None:
    copy = json.loads(json.dumps(event))
    first, second = _normalise(event), _normalise(copy)
    assert type(first) is type(second)
    assert first == second or isinstance(first, Rejection)
    if isinstance(first, Rejection) and isinstance(second, Rejection):
        assert first.errors == second.errors


@FAST
@given(
    secret=st.text(min_size=1, max_size=20).map(lambda s: f"{CANARY}{s}"),
    place=st.sampled_from(["value-string", "value-key", "value-nested", "event-id"]),
    event_type=st.sampled_from(["app_open", "goal_complete", "steps_import", "custom_type"]),
)
def test_messages_never_repeat_payload_values_or_keys(
    secret: str, place: str, event_type: str
) -> None:
    value: dict[str, Any] = {"platform": "ios", "steps": 10, "goal_id": USER}
    event: dict[str, Any] = {"user_id": USER, "event_type": event_type, "value": value}
    if place == "value-string":
        value["device"] = secret
        value["platform"] = secret
    elif place == "value-key":
        value[secret] = 1
    elif place == "value-nested":
        value["steps"] = {"deep": [secret]}
    else:
        event["event_id"] = secret
    outcome = _normalise(event)
    if isinstance(outcome, Rejection):
        for error in outcome.errors:
            assert CANARY not in error.message
            assert CANARY not in error.path


@settings(FAST, max_examples=50)
@given(body=json_values | st.fixed_dictionaries({"events": json_values}, optional=field_values))
def test_any_body_is_an_envelope_or_a_malformed_request(body: Any) -> None:
    try:
        envelope = validation.parse_envelope(body)
    except MalformedRequest as exc:
        refusal: MalformedRequest | None = exc
    else:
        refusal = None
    if refusal is not None:
        assert refusal.message
        return
    assert isinstance(envelope.events, list)
    assert envelope.events
    assert envelope.mode in ("partial", "atomic")


# --- timestamps ---------------------------------------------------------------------------------


def _converted(
    text: str, *, timezone: str | None = None, default_timezone: str | None = None
) -> datetime | TimestampError:
    """to_utc with no future bound to speak of; the error instead of raising it."""
    try:
        return timestamps.to_utc(
            text, timezone=timezone, default_timezone=default_timezone, now=FAR_FUTURE
        )
    except TimestampError as exc:
        return exc


offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
instants = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
)


@FAST
@given(instant=instants, offset=offsets, separator=st.sampled_from(["T", " ", "t"]))
def test_an_aware_time_in_any_offset_converts_to_its_instant(
    instant: datetime, offset: timezone, separator: str
) -> None:
    text = instant.astimezone(offset).isoformat(sep=separator)
    utc = timestamps.to_utc(text, now=FAR_FUTURE)
    assert utc == instant
    assert utc.utcoffset() == timedelta(0)
    formatted = timestamps.format_utc(utc)
    assert formatted.endswith("Z")
    assert timestamps.to_utc(formatted, now=FAR_FUTURE) == instant


@FAST
@given(local=naive_times, zone_name=zone_names)
def test_a_naive_local_time_converts_back_or_is_rejected_exactly_when_the_tz_data_says(
    local: datetime, zone_name: str
) -> None:
    # The zone's TZif file in pytz's database, read by hand: the instants whose wall time is
    # ``local`` (none in a gap, two in an overlap).
    readings = tzif_reference.load(zone_name).readings(tzif_reference.seconds(local))
    expected: datetime | str
    if not readings:
        expected = "nonexistent_local_time"
    elif len(readings) > 1:
        expected = "ambiguous_local_time"
    else:
        expected = tzif_reference.instant(readings[0]).replace(microsecond=local.microsecond)
    utc = _converted(local.isoformat(), timezone=zone_name)
    if isinstance(utc, TimestampError):
        assert utc.code == expected, utc.message
        assert utc.field == "timestamp"
        assert zone_name in utc.message
        return
    assert isinstance(expected, datetime), f"the tz data says {expected}"
    assert utc == expected
    assert utc.astimezone(timestamps.get_zone(zone_name)).replace(tzinfo=None) == local


@FAST
@given(local=naive_times, zone_name=zone_names)
def test_the_default_zone_is_used_exactly_like_the_event_zone(
    local: datetime, zone_name: str
) -> None:
    def outcome(**zones: str) -> datetime | str:
        converted = _converted(local.isoformat(), **zones)
        return converted.code if isinstance(converted, TimestampError) else converted

    assert outcome(timezone=zone_name) == outcome(default_timezone=zone_name)
    assert outcome(timezone=zone_name) == outcome(
        timezone=zone_name, default_timezone="Pacific/Kiritimati"
    )


@FAST
@given(
    local=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)),
    skew_seconds=st.integers(min_value=0, max_value=3600),
)
def test_the_future_bound_is_exact(local: datetime, skew_seconds: int) -> None:
    instant = local.replace(tzinfo=UTC)
    skew = timedelta(seconds=skew_seconds)
    text = instant.isoformat()
    assert timestamps.to_utc(text, now=instant - skew, future_skew=skew) == instant
    with pytest.raises(TimestampError) as caught:
        timestamps.to_utc(text, now=instant - skew - timedelta(microseconds=1), future_skew=skew)
    assert caught.value.code == "timestamp_in_future"


@FAST
@given(text=any_text | st.text(st.sampled_from("0123456789-:T+Zz .,"), max_size=40))
def test_any_text_converts_or_is_rejected_with_a_known_code(text: str) -> None:
    utc = _converted(text, timezone="UTC")
    if isinstance(utc, TimestampError):
        assert utc.code == "invalid_timestamp"
        return
    assert utc.tzinfo is not None


# --- deterministic ids --------------------------------------------------------------------------


def _storable(value: Any) -> bool:
    """jsonb stores it: no NUL and no lone surrogate in a string."""
    return not (
        isinstance(value, str) and any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in value)
    )


payloads = st.dictionaries(
    st.text(max_size=6).filter(_storable), json_scalars.filter(_storable), max_size=4
)


@FAST
@given(
    user=st.uuids(),
    event_type=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    instant=instants,
    offset=offsets,
    value=payloads,
)
def test_derived_ids_are_stable_and_ignore_how_the_instant_is_written(
    user: uuid.UUID, event_type: str, instant: datetime, offset: timezone, value: dict[str, Any]
) -> None:
    first = content_identity(user, event_type, instant, canonical_value(value))
    again = content_identity(
        uuid.UUID(str(user)),
        event_type,
        instant.astimezone(offset),
        canonical_value(json.loads(json.dumps(value))),
    )
    assert first == again
    assert json.loads(first)[:2] == [str(user), event_type]


@FAST
@given(
    user=st.uuids(),
    event_type=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    instant=instants,
    value=payloads,
    change=st.sampled_from(["user", "type", "instant", "value"]),
)
def test_derived_ids_differ_when_the_content_differs(
    user: uuid.UUID,
    event_type: str,
    instant: datetime,
    value: dict[str, Any],
    change: str,
) -> None:
    other_user, other_type, other_instant, other_value = user, event_type, instant, dict(value)
    if change == "user":
        other_user = uuid.UUID(int=user.int ^ 1)
    elif change == "type":
        other_type = event_type + "x"
    elif change == "instant":
        other_instant = instant + timedelta(microseconds=1)
    else:
        other_value["__changed__"] = [other_value.get("__changed__")]
    first = content_identity(user, event_type, instant, canonical_value(value))
    second = content_identity(other_user, other_type, other_instant, canonical_value(other_value))
    assert first != second


@FAST
@given(event=event_like.filter(lambda e: "event_id" not in e))
def test_an_event_normalised_twice_keeps_its_id(event: dict[str, Any]) -> None:
    first, second = _normalise(event), _normalise(json.loads(json.dumps(event)))
    if isinstance(first, NormalisedEvent):
        assert isinstance(second, NormalisedEvent)
        assert (first.id, first.identity) == (second.id, second.identity)

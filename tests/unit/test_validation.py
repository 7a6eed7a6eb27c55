"""Validation and normalisation of events (functions.validation), driven by sample files.

``tests/data/events/valid/*.json`` hold events that must be accepted, with the UTC instant
they must be stored at (``null``: the time of receipt); ``tests/data/events/invalid/*.json``
hold events that must be rejected, with the JSON pointer of every error expected (order does
not matter, a pointer appears once per error). Both may name the batch's ``default_timezone``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from functions.canonical import canonical_value
from functions.errors import MalformedRequest
from functions.ids import EVENT_ID_NAMESPACE, derive_event_id
from functions.messages import MAX_NAMED_UNKNOWN_KEYS
from functions.validation import (
    Envelope,
    FieldError,
    NormalisedEvent,
    Rejection,
    normalise_batch,
    normalise_event,
    parse_envelope,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "events"
RECEIVED_AT = datetime(2024, 12, 2, 12, 0, tzinfo=UTC)
"""When the sample batches arrive: after every sample timestamp except the future ones."""

USER = "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f"
GOAL = "5f0c6a2e-8d41-4b7a-9c3e-2a1b0c9d8e7f"
SECRET = "SENSITIVE-12345"


def _cases(folder: str) -> list[Any]:
    return [
        pytest.param(json.loads(path.read_text(encoding="utf-8")), id=path.stem)
        for path in sorted((DATA / folder).glob("*.json"))
    ]


def _normalise(event: Any, *, default_timezone: str | None = None) -> Any:
    return normalise_event(event, 0, default_timezone=default_timezone, received_at=RECEIVED_AT)


def _accepted(event: Any, **kwargs: Any) -> NormalisedEvent:
    result = _normalise(event, **kwargs)
    assert isinstance(result, NormalisedEvent), result
    return result


def _rejected(event: Any, **kwargs: Any) -> Rejection:
    result = _normalise(event, **kwargs)
    assert isinstance(result, Rejection), result
    return result


def _steps(steps: Any = 8000, **fields: Any) -> dict[str, Any]:
    event = {
        "user_id": USER,
        "event_type": "steps_import",
        "timestamp": "2024-12-01T07:30:00Z",
        "value": {"steps": steps, "source": "garmin"},
    }
    event.update(fields)
    return event


# --- the sample files -------------------------------------------------------------------------


def test_there_are_samples() -> None:
    assert len(_cases("valid")) >= 15
    assert len(_cases("invalid")) >= 40


@pytest.mark.parametrize("case", _cases("valid"))
def test_valid_sample_is_accepted_and_normalised(case: dict[str, Any]) -> None:
    event = case["event"]
    result = _accepted(event, default_timezone=case.get("default_timezone"))

    expected = RECEIVED_AT if case["utc"] is None else datetime.fromisoformat(case["utc"])
    assert result.timestamp == expected
    assert result.timestamp.utcoffset() == timedelta(0)
    assert result.user_id == uuid.UUID(event["user_id"])
    assert result.event_type == event["event_type"]
    assert result.value == event.get("value", {})
    if "event_id" in event:
        assert result.id == uuid.UUID(event["event_id"])
    else:
        assert result.id == derive_event_id(
            result.user_id, result.event_type, result.timestamp, canonical_value(result.value)
        )


@pytest.mark.parametrize("case", _cases("invalid"))
def test_invalid_sample_reports_every_error(case: dict[str, Any]) -> None:
    event = case["event"]
    result = normalise_event(
        event, 7, default_timezone=case.get("default_timezone"), received_at=RECEIVED_AT
    )

    assert isinstance(result, Rejection)
    assert result.index == 7
    assert sorted(error.path for error in result.errors) == sorted(case["errors"])
    for error in result.errors:
        assert error.message, error
        # The message names the field it is about (the event itself has the empty pointer).
        assert error.path == "" or error.path in error.message


@pytest.mark.parametrize(
    "case",
    [
        case
        for case in _cases("invalid")
        if isinstance(case.values[0]["event"], dict)
        and isinstance(case.values[0]["event"].get("value"), dict)
    ],
)
def test_invalid_sample_messages_do_not_repeat_payload_text(case: dict[str, Any]) -> None:
    event = case["event"]
    texts = [leaf for leaf in _string_leaves(event["value"]) if len(leaf) >= 4]
    result = _rejected(event, default_timezone=case.get("default_timezone"))
    for error in result.errors:
        for text in texts:
            assert text not in error.message


def _string_leaves(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _string_leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _string_leaves(item)]
    return []


# --- every error, and what the messages say ---------------------------------------------------


def test_three_problems_give_three_errors_with_their_pointers() -> None:
    event = _steps(steps="many", user_id="not-a-uuid", timestamp="2024-12-01T25:00:00Z")

    errors = {error.path: error.message for error in _rejected(event).errors}

    assert set(errors) == {"/user_id", "/value/steps", "/timestamp"}
    assert errors["/user_id"] == "/user_id must be a UUID in its 8-4-4-4-12 hexadecimal form"
    assert errors["/value/steps"] == "/value/steps must be an integer"
    assert errors["/timestamp"].startswith("/timestamp must be an ISO 8601 date and time")


@pytest.mark.parametrize(
    ("event", "path", "message"),
    [
        (_steps(200001), "/value/steps", "/value/steps must be at most 200000"),
        (_steps(-1), "/value/steps", "/value/steps must be at least 0"),
        (
            {"user_id": USER, "event_type": "Steps"},
            "/event_type",
            "/event_type must match ^[a-z][a-z0-9_]{0,63}$ (lower snake case, 1-64 characters)",
        ),
        ({"event_type": "app_open"}, "/user_id", "/user_id is required"),
        (
            {"user_id": USER, "event_type": "steps_import", "value": {}},
            "/value/steps",
            "/value/steps is required",
        ),
        (
            {"user_id": USER, "event_type": "app_open", "value": {"platform": "bb10"}},
            "/value/platform",
            "/value/platform must be one of: ios, android, web",
        ),
        (
            {"user_id": USER, "event_type": "x", "value": []},
            "/value",
            "/value must be an object",
        ),
        (
            _steps(timestamp="2024-12-02T12:06:00Z"),
            "/timestamp",
            "/timestamp is more than 5 minutes in the future",
        ),
        (
            _steps(timezone="Europe/Atlantis"),
            "/timezone",
            "/timezone is not a known IANA time zone name (such as Europe/Berlin)",
        ),
        (
            _steps(timestamp="2024-12-01T08:30:00"),
            "/timestamp",
            "/timestamp has no UTC offset, and neither the event's timezone nor the batch's "
            "default_timezone says in which time zone to read it",
        ),
        ([], "", "the event must be a JSON object"),
    ],
)
def test_message(event: Any, path: str, message: str) -> None:
    assert FieldError(path, message) in _rejected(event).errors


def test_misspelt_property_is_named_with_a_suggestion() -> None:
    event = _steps()
    event["timestmap"] = event.pop("timestamp")

    (error,) = _rejected(event).errors

    assert error.path == ""
    assert error.message.startswith("unknown property 'timestmap' (did you mean 'timestamp'?)")


def test_unknown_event_property_names_are_cut_to_64_characters() -> None:
    name = "k" * 64 + SECRET
    (error,) = _rejected(_steps(**{name: 1})).errors

    assert "k" * 64 + "..." in error.message
    assert SECRET not in error.message


def test_many_unknown_event_properties_are_summed_up() -> None:
    extra = {f"extra_{n:02d}": n for n in range(25)}

    errors = _rejected(_steps(**extra)).errors

    assert len(errors) == MAX_NAMED_UNKNOWN_KEYS + 1
    assert errors[-1].message == "and 15 more unknown properties"


def test_unknown_payload_property_names_are_never_repeated() -> None:
    event = _steps()
    event["value"][SECRET] = 1
    event["value"]["hiv_status"] = "positive"

    (error,) = _rejected(event).errors

    assert error.path == "/value"
    assert error.message.startswith("/value has 2 properties that the steps_import payload")
    assert SECRET not in error.message
    assert "hiv" not in error.message


@pytest.mark.parametrize(
    "event",
    [
        _steps(SECRET),
        _steps(user_id=SECRET),
        _steps(event_id=SECRET),
        _steps(event_type=SECRET),
        _steps(timestamp=SECRET),
        _steps(timestamp=f"2024-12-01T07:30:00Z{SECRET}"),
        _steps(timezone=SECRET),
        _steps(timezone=f"Europe/{SECRET}", timestamp="2024-12-01T08:30:00"),
        _steps(value=SECRET),
        _steps(value={"steps": 1, "source": SECRET}),
        _steps(value={"steps": 1, "period_start": SECRET, "device": SECRET * 10}),
        _steps(value={"steps": 1, SECRET: SECRET}),
        {"user_id": USER, "event_type": "app_open", "value": {"platform": "ios", "locale": SECRET}},
        {"user_id": USER, "event_type": "app_open", "value": {"app_version": SECRET}},
        {"user_id": USER, "event_type": "goal_complete", "value": {"goal_id": SECRET}},
        {
            "user_id": USER,
            "event_type": "goal_complete",
            "value": {"goal_id": GOAL, "unit": SECRET},
        },
        {"user_id": USER, "event_type": "diary", "value": {"note": f"{SECRET}\u0000"}},
        {"user_id": USER, "event_type": "diary", "value": {"note": SECRET, "x": float("nan")}},
        SECRET,
    ],
)
def test_messages_never_contain_payload_values(event: Any) -> None:
    result = _rejected(event)

    assert result.errors
    assert all(SECRET not in error.message for error in result.errors)


# --- values PostgreSQL could not store, and other hostile input --------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"x": float("nan")}, "NaN or Infinity"),
        ({"x": [float("inf")]}, "NaN or Infinity"),
        ({"x": "a\u0000b"}, "NUL"),
        ({"a\u0000": 1}, "NUL"),
        ({"x": "\ud800"}, "surrogates"),
    ],
)
def test_value_that_jsonb_cannot_store_is_rejected(value: dict[str, Any], says: str) -> None:
    event = {"user_id": USER, "event_type": "diary", "value": value}
    event_with_id = {**event, "event_id": str(uuid.uuid4())}

    for candidate in (event, event_with_id):
        (error,) = _rejected(candidate).errors
        assert error.path == "/value"
        assert says in error.message


def test_escaped_backslash_before_u0000_is_ordinary_text() -> None:
    accepted = _accepted({"user_id": USER, "event_type": "diary", "value": {"x": "\\u0000"}})
    assert accepted.value == {"x": "\\u0000"}


def test_deeply_nested_payload_is_validated_without_crashing() -> None:
    value: dict[str, Any] = {}
    node = value
    for _ in range(500):
        node["a"] = {}
        node = node["a"]
    assert isinstance(
        _normalise({"user_id": USER, "event_type": "diary", "value": value}),
        (
            NormalisedEvent,
            Rejection,
        ),
    )


@pytest.mark.parametrize("steps", [2**80, -(2**80), 1e308])
def test_huge_numbers_are_rejected_not_crashed_on(steps: Any) -> None:
    (error,) = _rejected(_steps(steps)).errors
    assert error.path == "/value/steps"


def test_rejection_keeps_a_string_event_id_only() -> None:
    assert _rejected(_steps(-1, event_id="batch-1-3")).event_id == "batch-1-3"
    assert _rejected(_steps(-1, event_id=17)).event_id is None
    assert _rejected("not an event").event_id is None


def test_as_dict_has_the_response_shape() -> None:
    rejection = _rejected(_steps(-1, event_id="e-1"))

    assert rejection.as_dict() == {
        "index": 0,
        "event_id": "e-1",
        "errors": [
            {
                "path": "/event_id",
                "message": "/event_id must be a UUID in its 8-4-4-4-12 hexadecimal form",
            },
            {"path": "/value/steps", "message": "/value/steps must be at least 0"},
        ],
    }
    json.dumps(rejection.as_dict())


def test_future_skew_is_configurable() -> None:
    event = _steps(timestamp="2024-12-02T12:02:00Z")
    assert isinstance(_normalise(event), NormalisedEvent)

    result = normalise_event(
        event,
        0,
        default_timezone=None,
        received_at=RECEIVED_AT,
        future_skew=timedelta(minutes=1),
    )

    assert isinstance(result, Rejection)
    assert result.errors == (
        FieldError("/timestamp", "/timestamp is more than 1 minute in the future"),
    )


def test_unknown_default_timezone_is_reported_at_the_timestamp() -> None:
    (error,) = _rejected(_steps(timestamp="2024-12-01T08:30:00"), default_timezone="Nowhere").errors

    assert error.path == "/timestamp"
    assert "default_timezone" in error.message


# --- deterministic ids ------------------------------------------------------------------------


def test_same_event_sent_twice_gets_the_same_id() -> None:
    first = _accepted(_steps())
    again = _accepted(json.loads(json.dumps(_steps())))

    assert first.id == again.id


def test_key_order_does_not_change_the_id() -> None:
    event = _steps()
    reordered = dict(reversed(list(event.items())))
    reordered["value"] = dict(reversed(list(event["value"].items())))

    assert _accepted(event).id == _accepted(reordered).id


def test_same_instant_with_another_offset_gets_the_same_id() -> None:
    in_berlin = _accepted(_steps(timestamp="2024-12-01T08:30:00+01:00"))
    in_utc = _accepted(_steps(timestamp="2024-12-01T07:30:00Z"))
    as_local = _accepted(_steps(timestamp="2024-12-01T02:30:00", timezone="America/New_York"))

    assert in_berlin.id == in_utc.id == as_local.id


def test_upper_case_user_id_gets_the_same_id() -> None:
    assert _accepted(_steps(user_id=USER.upper())).id == _accepted(_steps()).id


@pytest.mark.parametrize(
    "change",
    [
        {"value": {"steps": 8001, "source": "garmin"}},
        {"value": {"steps": 8000.0, "source": "garmin"}},
        {"value": {"steps": 8000}},
        {"timestamp": "2024-12-01T07:30:00.000001Z"},
        {"user_id": "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e60"},
        {"event_type": "steps_import_v2"},
    ],
)
def test_any_content_change_gives_another_id(change: dict[str, Any]) -> None:
    assert _accepted(_steps(**change)).id != _accepted(_steps()).id


def test_event_id_is_used_verbatim() -> None:
    event_id = "0B8E5B8A-4A7E-4F0E-9A55-1C2D3E4F5A6B"

    first = _accepted(_steps(event_id=event_id))
    changed = _accepted(_steps(event_id=event_id, value={"steps": 1}))

    assert first.id == uuid.UUID(event_id)
    assert changed.id == first.id


def test_event_without_timestamp_gets_its_id_from_the_time_of_receipt() -> None:
    event = _steps()
    del event["timestamp"]

    def at(moment: datetime) -> NormalisedEvent:
        result = normalise_event(event, 0, default_timezone=None, received_at=moment)
        assert isinstance(result, NormalisedEvent)
        return result

    now, later = at(RECEIVED_AT), at(RECEIVED_AT + timedelta(seconds=1))
    assert now.timestamp == RECEIVED_AT
    assert now.id != later.id
    assert now.id == at(RECEIVED_AT).id


def test_derived_id_format_is_pinned() -> None:
    """The derivation is part of the stored data; this known answer must never change."""
    moment = datetime(2024, 12, 1, 7, 30, tzinfo=UTC)
    value = {"steps": 8000, "source": "garmin", "note": "Grüße"}

    derived = derive_event_id(uuid.UUID(USER), "steps_import", moment, canonical_value(value))

    canonical = (
        '["7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f","steps_import","2024-12-01T07:30:00.000000Z",'
        '{"note":"Grüße","source":"garmin","steps":8000}]'
    )
    assert derived == uuid.uuid5(EVENT_ID_NAMESPACE, canonical)
    assert derived == uuid.UUID("30e79888-e65c-51ae-8769-8750c7174081")
    assert derived.version == 5


# --- batches ----------------------------------------------------------------------------------


def test_bare_array_is_a_batch_in_partial_mode() -> None:
    events: list[Any] = [_steps(), "junk"]

    envelope = parse_envelope(events)

    assert envelope == Envelope(events=events, mode="partial", default_timezone=None)


def test_object_envelope_keeps_mode_and_default_timezone() -> None:
    events = [_steps()]
    body = {"events": events, "mode": "atomic", "default_timezone": "Europe/Berlin"}

    envelope = parse_envelope(body)

    assert envelope == Envelope(events=events, mode="atomic", default_timezone="Europe/Berlin")


def test_envelope_items_are_left_to_the_event_checks() -> None:
    envelope = parse_envelope({"events": [1, None, "x", {}]})
    accepted, rejected = normalise_batch(envelope, received_at=RECEIVED_AT)

    assert accepted == []
    assert [rejection.index for rejection in rejected] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "at least one event"),
        ({"events": []}, "at least one event"),
        ({}, "'events'"),
        ({"mode": "atomic"}, "'events'"),
        ({"events": {"0": {}}}, "/events must be an array"),
        ({"events": [{}], "mode": "all_or_nothing"}, "/mode must be one of: partial, atomic"),
        ({"events": [{}], "mode": None}, "/mode must be a string"),
        ({"events": [{}], "default_timezone": 1}, "/default_timezone must be a string"),
        ({"events": [{}], "default_timezone": "Nowhere/Special"}, "default_timezone is not a"),
        ({"events": [{}], "defaut_timezone": "UTC"}, "unknown property 'defaut_timezone'"),
        ("events", "must be a JSON object"),
        (42, "must be a JSON object"),
        (None, "must be a JSON object"),
        (True, "must be a JSON object"),
    ],
)
def test_malformed_envelope(body: Any, says: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_envelope(body)

    assert says in caught.value.message
    assert caught.value.code == "malformed_request"


def test_envelope_messages_do_not_repeat_values() -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_envelope({"events": [{}], "mode": SECRET, "default_timezone": SECRET * 10})

    assert SECRET not in caught.value.message
    assert "/mode" in caught.value.message
    assert "/default_timezone" in caught.value.message


def test_envelope_names_every_problem() -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_envelope({"events": [], "mode": "x", "extra": 1})

    message = caught.value.message
    assert "at least one event" in message
    assert "/mode" in message
    assert "'extra'" in message


def test_batch_keeps_order_and_indexes() -> None:
    events = [
        _steps(1),
        _steps(-1),
        "junk",
        _steps(3, timestamp="2024-12-01T08:30:00"),
        _steps(4),
    ]
    envelope = Envelope(events=events, mode="partial", default_timezone="Europe/Berlin")

    accepted, rejected = normalise_batch(envelope, received_at=RECEIVED_AT)

    assert [event.value["steps"] for event in accepted] == [1, 3, 4]
    assert accepted[1].timestamp == datetime(2024, 12, 1, 7, 30, tzinfo=UTC)
    assert [rejection.index for rejection in rejected] == [1, 2]


def test_batch_uses_one_time_of_receipt_in_utc() -> None:
    events = [{"user_id": USER, "event_type": "ping"}, {"user_id": USER, "event_type": "pong"}]
    envelope = parse_envelope(events)
    received = RECEIVED_AT.astimezone(timezone(timedelta(hours=9)))

    accepted, _ = normalise_batch(envelope, received_at=received)

    assert [event.timestamp for event in accepted] == [RECEIVED_AT, RECEIVED_AT]
    assert all(event.timestamp.utcoffset() == timedelta(0) for event in accepted)

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
from functions.errors import MalformedRequest, PayloadTooLarge
from functions.ids import content_identity
from functions.messages import MAX_NAMED_UNKNOWN_KEYS
from functions.validation import (
    Envelope,
    FieldError,
    NormalisedEvent,
    Rejection,
    convert_all,
    normalise_batch,
    normalise_event,
    parse_conversion,
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
        assert result.identity is None
    else:
        # The database derives the id from the identity text (functions.ids).
        assert result.id is None
        assert result.identity is not None
        assert result.identity.startswith(f'["{result.user_id}","{result.event_type}",')


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


def _nested(depth: int, inner: Any, as_object: bool) -> Any:
    for _ in range(depth):
        inner = {"k": inner} if as_object else [inner]
    return inner


PAST_THE_SCHEMA_RECURSION_LIMIT = 300
"""Deeper than jsonschema-rs follows (its iter_errors raises "Recursion limit reached" at
about 255 levels); the body's own depth limit keeps requests far from it, these calls do not."""

_VALID_APP_OPEN: dict[str, Any] = {
    "user_id": USER,
    "event_type": "app_open",
    "timestamp": "2024-12-01T07:30:00Z",
    "value": {"platform": "ios"},
}
_DEEP = PAST_THE_SCHEMA_RECURSION_LIMIT


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({**_VALID_APP_OPEN, "typo": _nested(_DEEP, 1, False)}, id="unknown key"),
        pytest.param({**_VALID_APP_OPEN, "event_id": _nested(_DEEP, 1, False)}, id="event_id"),
        pytest.param({**_VALID_APP_OPEN, "timezone": _nested(_DEEP, 1, True)}, id="timezone"),
        pytest.param(
            {**_VALID_APP_OPEN, "value": {"platform": _nested(_DEEP, 1, False)}},
            id="a known payload's field",
        ),
        pytest.param(
            {**_VALID_APP_OPEN, "value": {"unlisted": _nested(_DEEP, 1, True)}},
            id="a known payload's unknown key",
        ),
        pytest.param({**_VALID_APP_OPEN, "user_id": _nested(_DEEP, 1, True)}, id="user_id"),
    ],
)
def test_an_event_too_deep_for_the_schemas_is_rejected_alone(event: dict[str, Any]) -> None:
    valid, rejected = normalise_batch(
        Envelope(
            events=[_VALID_APP_OPEN, event, _VALID_APP_OPEN], mode="partial", default_timezone=None
        ),
        received_at=RECEIVED_AT,
    )
    assert len(valid) == 2
    assert [r.index for r in rejected] == [1]
    assert rejected[0].errors == (
        FieldError(
            "",
            "the event is nested too deeply for its schemas to be checked (jsonschema-rs stops "
            "at about 250 levels)",
        ),
    )
    assert normalise_event(event, 0, default_timezone=None, received_at=RECEIVED_AT) == Rejection(
        0, None, rejected[0].errors
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"events": [_VALID_APP_OPEN], "mode": _nested(_DEEP, 1, False)}, id="mode"),
        pytest.param(
            {"events": [_VALID_APP_OPEN], "default_timezone": _nested(_DEEP, 1, True)},
            id="default_timezone",
        ),
        pytest.param(
            {"events": [_VALID_APP_OPEN], "unknown": _nested(_DEEP, SECRET, True)},
            id="an unknown envelope key",
        ),
    ],
)
def test_an_envelope_too_deep_for_its_schema_is_malformed(body: dict[str, Any]) -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_envelope(body)
    assert "nested too deeply" in caught.value.message
    assert SECRET not in caught.value.message


def test_events_too_deep_for_the_schemas_leave_the_envelope_valid() -> None:
    deep_event = {**_VALID_APP_OPEN, "typo": _nested(_DEEP, 1, True)}
    envelope = parse_envelope({"events": [deep_event, _nested(_DEEP, 1, False)]})
    assert len(envelope.events) == 2


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


# --- identity (the database derives ids from it) ------------------------------------------------------------------------


def test_same_event_sent_twice_gets_the_same_id() -> None:
    first = _accepted(_steps())
    again = _accepted(json.loads(json.dumps(_steps())))

    assert first.identity == again.identity


def test_key_order_does_not_change_the_id() -> None:
    event = _steps()
    reordered = dict(reversed(list(event.items())))
    reordered["value"] = dict(reversed(list(event["value"].items())))

    assert _accepted(event).identity == _accepted(reordered).identity


def test_same_instant_with_another_offset_gets_the_same_id() -> None:
    in_berlin = _accepted(_steps(timestamp="2024-12-01T08:30:00+01:00"))
    in_utc = _accepted(_steps(timestamp="2024-12-01T07:30:00Z"))
    as_local = _accepted(_steps(timestamp="2024-12-01T02:30:00", timezone="America/New_York"))

    assert in_berlin.identity == in_utc.identity == as_local.identity


def test_upper_case_user_id_gets_the_same_id() -> None:
    assert _accepted(_steps(user_id=USER.upper())).identity == _accepted(_steps()).identity


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
    assert _accepted(_steps(**change)).identity != _accepted(_steps()).identity


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
    assert now.identity != later.identity
    assert now.identity == at(RECEIVED_AT).identity


def test_content_identity_format_is_pinned() -> None:
    """The identity text is part of the stored data (ids are derived from it); this known
    answer must never change."""
    moment = datetime(2024, 12, 1, 7, 30, tzinfo=UTC)
    value = {"steps": 8000, "source": "garmin", "note": "Grüße"}

    assert content_identity(uuid.UUID(USER), "app_open", moment, canonical_value(value)) == (
        '["7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f","app_open","2024-12-01T07:30:00.000000Z",'
        '{"note":"Grüße","source":"garmin","steps":8000}]'
    )


def test_declared_identity_format_is_pinned() -> None:
    result = _accepted(
        _steps(
            value={
                "steps": 8000,
                "source": "garmin",
                "period_start": "2024-12-01T00:00:00+01:00",
                "period_end": "2024-12-02T00:00:00+01:00",
            }
        )
    )

    assert result.identity == (
        '["7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f","steps_import",'
        '{"period_end":"2024-12-01T23:00:00.000000Z","period_start":"2024-11-30T23:00:00.000000Z",'
        '"source":"garmin"}]'
    )


def _period(steps: int = 8000, **value: Any) -> dict[str, Any]:
    return _steps(
        value={
            "steps": steps,
            "source": "garmin",
            "period_start": "2024-12-01T00:00:00Z",
            "period_end": "2024-12-02T00:00:00Z",
            **value,
        }
    )


def test_a_new_total_for_the_same_period_is_the_same_measurement() -> None:
    morning = _accepted(_period(1200, device="Forerunner 265"))
    evening = _accepted(_period(9400) | {"timestamp": "2024-12-01T21:00:00Z"})

    assert morning.identity == evening.identity


def test_period_instants_are_compared_in_utc() -> None:
    in_utc = _accepted(_period())
    in_berlin = _accepted(
        _period(period_start="2024-12-01T01:00:00+01:00", period_end="2024-12-02T01:00:00+01:00")
    )

    assert in_berlin.identity == in_utc.identity


@pytest.mark.parametrize(
    "change",
    [
        {"source": "fitbit"},
        {"period_start": "2024-12-01T00:00:01Z"},
        {"period_end": "2024-12-01T12:00:00Z"},
    ],
)
def test_another_source_or_period_is_another_measurement(change: dict[str, Any]) -> None:
    assert _accepted(_period(**change)).identity != _accepted(_period()).identity


def test_identity_fields_are_the_users_own() -> None:
    other = "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e60"
    assert _accepted(_period() | {"user_id": other}).identity != _accepted(_period()).identity


def test_without_all_identity_fields_the_content_identifies() -> None:
    partial = _accepted(
        _steps(value={"steps": 8000, "source": "garmin", "period_start": "2024-12-01T00:00:00Z"})
    )

    assert partial.identity == content_identity(
        uuid.UUID(USER), "steps_import", partial.timestamp, canonical_value(partial.value)
    )


# --- revisions and deletions ------------------------------------------------------------------


def test_revision_and_deletion_are_carried() -> None:
    result = _accepted(_period() | {"revision": 1733090400000.0, "deleted": True})

    assert result.revision == 1733090400000
    assert type(result.revision) is int
    assert result.deleted is True


@pytest.mark.parametrize("revision", [-1, 2**53, 1.5, "7", True])
def test_revision_must_be_a_whole_number_from_0_to_2_53_minus_1(revision: Any) -> None:
    (error,) = _rejected(_steps(revision=revision)).errors
    assert error.path == "/revision"


def test_a_deletion_may_carry_its_identity_fields_alone() -> None:
    deletion = _accepted(
        _period()
        | {
            "deleted": True,
            "value": {
                "source": "garmin",
                "period_start": "2024-12-01T00:00:00Z",
                "period_end": "2024-12-02T00:00:00Z",
            },
        }
    )

    assert deletion.deleted
    assert deletion.identity == _accepted(_period()).identity


def test_a_deletion_with_event_id_may_carry_nothing() -> None:
    event_id = "0b8e5b8a-4a7e-4f0e-9a55-1c2d3e4f5a6b"
    deletion = _accepted(
        {"user_id": USER, "event_type": "steps_import", "event_id": event_id, "deleted": True}
    )

    assert deletion.id == uuid.UUID(event_id)
    assert deletion.value == {}


def test_a_deletion_without_event_id_must_name_its_identity_fields() -> None:
    (error,) = _rejected(
        _steps(deleted=True, value={"source": "garmin", "period_start": "2024-12-01T00:00:00Z"})
    ).errors

    assert error == FieldError(
        "/value",
        "a deletion without event_id names the steps_import event it deletes by its identity "
        "fields; /value lacks period_end",
    )


def test_a_deletion_is_still_checked_against_its_payload_schema() -> None:
    (error,) = _rejected(_period(steps=-1) | {"deleted": True}).errors

    assert error.path == "/value/steps"


def test_a_deletion_of_a_type_without_identity_fields_needs_its_timestamp() -> None:
    event = {"user_id": USER, "event_type": "app_open", "deleted": True}

    (error,) = _rejected(event).errors

    assert error.path == "/timestamp"


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


def test_envelope_over_the_event_limit_is_too_large() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        parse_envelope([{}, {}, {}], max_events=2)

    assert caught.value.message == "the batch has 3 events; the limit is 2"
    assert len(parse_envelope([{}, {}], max_events=2).events) == 2


# --- convert_timestamps' body ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "must have the 'timestamps' property"),
        ({"timestamps": []}, "at least one timestamp"),
        ({"timestamps": "2024-12-01T07:30:00Z"}, "/timestamps must be an array"),
        ({"timestamps": [{}], "default_timezone": 1}, "/default_timezone must be a string"),
        ({"timestamps": [{}], "default_timezone": "Nowhere/Special"}, "not a known IANA"),
        ({"timestamps": [{}], "default_timezone": "Factory"}, "names no place's clock"),
        ({"timestamps": [{}], "defaut_timezone": "UTC"}, "unknown property 'defaut_timezone'"),
        ([{"timestamp": "2024-12-01T07:30:00Z"}], "the request body must be an object"),
        (None, "the request body must be an object"),
    ],
)
def test_malformed_conversion(body: Any, says: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_conversion(body)

    assert says in caught.value.message


def test_conversion_messages_do_not_repeat_values() -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_conversion({"timestamps": SECRET, "default_timezone": SECRET * 10})

    assert SECRET not in caught.value.message
    assert "/timestamps" in caught.value.message
    assert "/default_timezone" in caught.value.message


def test_conversion_over_the_item_limit_is_too_large() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        parse_conversion({"timestamps": [{}, {}, {}]}, max_items=2)

    assert caught.value.message == "3 timestamps; the limit is 2"


def test_each_conversion_item_has_its_own_result() -> None:
    conversion = parse_conversion(
        {
            "timestamps": [
                {"timestamp": "2024-12-01T08:30:00", "timezone": "Europe/Berlin"},
                {"timestamp": "2024-12-01T08:30:00"},
                "2024-12-01T08:30:00Z",
                {"timestamp": "2024-12-01T08:30:00", "timezone": 1},
                {"timestamp": "\ud800"},
            ],
            "default_timezone": "Asia/Kathmandu",
        }
    )

    results = convert_all(conversion, now=RECEIVED_AT)

    assert results[0] == {"index": 0, "utc": "2024-12-01T07:30:00Z"}
    assert results[1] == {"index": 1, "utc": "2024-12-01T02:45:00Z"}
    assert [r.get("error") for r in results[2:]] == [
        "invalid_timestamp",
        "unknown_timezone",
        "invalid_timestamp",
    ]


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

"""The shortcuts of validation give the answers of the slower ways they replace.

- ``compact_json`` writes exactly what ``json.dumps`` writes, and the canonical encoder (orjson,
  with the json module for what orjson spells differently) exactly what
  ``JSONEncoder(sort_keys=True, ...).encode`` writes;
- the one-call check of a whole event (and of a whole list of events) accepts exactly the
  events that pass the event schema and the payload schema checked apart;
- the canonical JSON a valid event carries (``value_json``) is its value, and the direct sink
  stores that value unchanged, escapes and all;
- a batch, whose events are checked against their schemas in one call, gets the answers its
  events get one by one, also when that call cannot read the batch (an unpaired surrogate);
- identity texts are the documented canonical JSON.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions import schemas, validation
from functions.canonical import canonical_value, compact_json
from functions.ids import content_identity
from functions.sinks.postgres import PostgresSink

SAMPLES = Path(__file__).parent / "data" / "events"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_compact_json_is_json_dumps(value: Any) -> None:
    assert compact_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_floats = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-1e-3, max_value=1e-3)
    | st.floats(min_value=1e14, max_value=1e18)
    | st.sampled_from([1e-4, 1e-5, -2.5e-05, 1e-7, 0.00012, 1e16, 1e15, 5e-324, -0.0])
)
_integers = st.integers() | st.integers(min_value=2**63 - 3, max_value=2**64 + 3).map(
    lambda n: n * (-1 if n % 2 else 1)
)
canonical_values = st.recursive(
    st.none() | st.booleans() | _integers | _floats | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.text(max_size=8), canonical_values, max_size=6))
def test_canonical_value_is_the_sorted_compact_encoding(value: dict[str, Any]) -> None:
    """orjson writes the canonical JSON where it can; whichever encoder writes it, the text is
    the json module's, to the last digit of every float (derived ids depend on it)."""
    expected = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode(value)
    try:
        expected.encode()
    except UnicodeEncodeError:  # a lone surrogate: not storable, reported as such
        with pytest.raises(ValueError, match="surrogates"):
            canonical_value(value)
        return
    if "\\u0000" in expected:
        return  # NUL handling has its own tests in tests/unit/test_validation.py
    assert canonical_value(value) == expected


def test_the_canonical_json_of_the_sample_payloads_is_the_json_modules() -> None:
    values = [e["value"] for e in _sample_events() if isinstance(e.get("value"), dict)]
    assert len(values) > 10
    for value in values:
        expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if "\\u0000" in expected:
            with pytest.raises(ValueError, match="NUL"):
                canonical_value(value)
        else:
            assert canonical_value(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"x": float("nan")},
        {"x": [1, float("inf")]},
        {"x": -float("inf")},
    ],
)
def test_non_finite_numbers_are_refused(value: dict[str, Any]) -> None:
    # orjson would write null for them: the canonical encoder must not let that through.
    with pytest.raises(ValueError, match="NaN or Infinity"):
        canonical_value(value)
    outcome = validation.normalise_event(
        {"user_id": USER, "event_type": "custom_x", "value": value},
        0,
        default_timezone=None,
        received_at=RECEIVED,
    )
    assert isinstance(outcome, validation.Rejection)
    assert [e.as_dict() for e in outcome.errors] == [
        {"path": "/value", "message": "/value must not contain NaN or Infinity"}
    ]


def _sample_events() -> list[dict[str, Any]]:
    events = []
    for path in sorted(SAMPLES.glob("*/*.json")):
        event = json.loads(path.read_text())["event"]
        if isinstance(event, dict):
            events.append(event)
    return events


def _mutations(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The event, and variants with one property removed, retyped or added."""
    variants = [event]
    for key in list(event):
        removed = {k: v for k, v in event.items() if k != key}
        retyped = {**event, key: 12345}
        variants += [removed, retyped]
    variants.append({**event, "timestmap": "2024-12-01T07:30:00Z"})
    value = event.get("value")
    if isinstance(value, dict):
        for key in list(value):
            variants.append({**event, "value": {**value, key: ["not", "this"]}})
            variants.append({**event, "value": {k: v for k, v in value.items() if k != key}})
        variants.append({**event, "value": {**value, "extra_property": 1}})
    return [copy.deepcopy(v) for v in variants]


def test_whole_event_check_agrees_with_the_two_schemas_apart() -> None:
    """One call checks the event schema and the payload schema of its type (of the value sent,
    or of the default {}); so does the check of a list, event by event."""
    checked = known = 0
    events: list[Any] = []
    for sample in _sample_events():
        for event in _mutations(sample):
            event_type = event.get("event_type")
            value = event.get("value", {})
            payload = (
                schemas.PAYLOAD_VALIDATORS.get(event_type) if isinstance(event_type, str) else None
            )
            apart = schemas.EVENT_VALIDATOR.is_valid(event) and (
                payload is None or not isinstance(value, dict) or payload.is_valid(value)
            )
            assert schemas.WHOLE_EVENT_VALIDATOR.is_valid(event) == apart, event
            assert schemas.EVENTS_VALIDATOR.is_valid([event]) == apart, event
            events.append(event)
            checked += 1
            known += payload is not None
    assert checked > 200
    assert known > 100
    assert not schemas.EVENTS_VALIDATOR.is_valid(events)
    assert schemas.EVENTS_VALIDATOR.is_valid(
        [e for e in events if schemas.WHOLE_EVENT_VALIDATOR.is_valid(e)]
    )


def _valid_events() -> list[validation.NormalisedEvent]:
    received = datetime.now(UTC)
    results = [
        validation.normalise_event(event, i, default_timezone="Europe/Berlin", received_at=received)
        for i, event in enumerate(_sample_events())
    ]
    return [r for r in results if isinstance(r, validation.NormalisedEvent)]


def test_value_json_of_a_valid_event_is_its_value() -> None:
    events = _valid_events()
    assert len(events) >= 10
    for event in events:
        assert event.value_json is not None
        assert json.loads(event.value_json) == event.value


@pytest.mark.db
def test_direct_sink_stores_the_value_as_sent(db: Any) -> None:
    user = "a1a1a1a1-0000-4000-8000-000000000001"
    tricky = {
        "device": 'quote " backslash \\ tab \t newline \n é 漢字 \U0001f600 \\u0000 as text',
        "steps": 12,
    }
    event_id = uuid.uuid4()
    event = validation.normalise_event(
        {
            "user_id": user,
            "event_type": "steps_import",
            "timestamp": "2024-06-01T12:00:00Z",
            "value": tricky,
            "event_id": str(event_id),
        },
        0,
        default_timezone=None,
        received_at=datetime.now(UTC),
    )
    assert isinstance(event, validation.NormalisedEvent)
    sink = PostgresSink(db.url)
    try:
        result = sink.write([event], atomic=True, deadline=time.monotonic() + 30)
    finally:
        sink.close()
    assert result.inserted == 1
    with db.connect() as conn:
        stored = conn.execute(
            "select value from engagement_events where id = %s", (event_id,)
        ).fetchone()
    assert stored is not None
    assert stored[0] == tricky


# --- a batch and its events one by one ------------------------------------------------------

RECEIVED = datetime(2024, 12, 1, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
ZONES = (None, "UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu")
USER = "a1a1a1a1-0000-4000-8000-000000000001"


def _same_event(got: validation.NormalisedEvent, want: validation.NormalisedEvent) -> None:
    assert type(got) is validation.NormalisedEvent
    assert got == want
    assert got.id is None or type(got.id) is uuid.UUID
    assert (got.id is None) != (got.identity is None)
    assert type(got.user_id) is uuid.UUID
    assert got.timestamp.tzinfo is UTC
    assert repr(got) == repr(want)


def _timestamp_variants(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The event with its timestamp written in the shapes senders use, some of them broken."""
    shapes = [
        "2024-06-01T12:00:00Z",
        "2024-06-01t12:00:00z",
        "2024-06-01 12:00:00.5+05:45",
        "2024-06-01T12:00:00.123456789-03:30",
        "2024-06-01T12:00+0130",
        "2024-06-01T12:00:00+01",
        "2024-06-01T12:00:00-00:00",
        "2024-06-01T12:00:00",
        "2024-03-31T02:30:00",  # in Berlin's gap
        "2024-10-27T02:30:00",  # in Berlin's overlap
        "2024-10-26T02:30:00",  # a day before a change: not the steady case
        "0001-01-01T00:30:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:30:00-01:00",  # after 9999 in UTC
        "2024-12-01T12:05:00Z",  # exactly the allowed skew ahead
        "2024-12-01T12:05:00.000001Z",  # just beyond it
        "2024-02-30T12:00:00Z",
        "2024-06-01T24:00:00Z",
        "2024-06-01T12:00:00+24:00",
        "20240601T120000Z",
    ]
    variants = []
    for shape in shapes:
        for zone in ZONES:
            variant = {**event, "timestamp": shape}
            if zone is not None:
                variant["timezone"] = zone
            variants.append(variant)
    variants.append({k: v for k, v in event.items() if k != "timestamp"})
    variants.append({**event, "timezone": "Mars/Olympus_Mons"})
    if isinstance(event.get("user_id"), str):
        variants.append({**event, "user_id": event["user_id"].upper()})
    variants.append({**event, "event_id": "0B8E5B8A-4A7E-4F0E-9A55-1C2D3E4F5A6B"})
    return variants


def _batches() -> list[list[Any]]:
    events: list[Any] = []
    for sample in _sample_events():
        events += [*_mutations(sample), *_timestamp_variants(sample)]
    events += ["junk", None, [1]]
    valid = [e for e in events if schemas.WHOLE_EVENT_VALIDATOR.is_valid(e)]
    # A lone surrogate, which the one call for the batch cannot read.
    surrogate = {**valid[0], "value": {"note": "\ud800"}}
    return [events, valid, [*valid[:20], surrogate, *events[:200]]]


SURROGATE_MESSAGE = (
    "the event contains an unpaired UTF-16 surrogate (an escape in \\ud800-\\udfff without "
    "its pair), which is not valid Unicode"
)
surrogate_error = validation.FieldError("", SURROGATE_MESSAGE)


@pytest.mark.parametrize("batch", range(3), ids=["mixed", "all valid", "with a surrogate"])
def test_a_batch_gives_the_answers_of_its_events_one_by_one(batch: int) -> None:
    events = _batches()[batch]
    for default in (None, "Europe/Berlin"):
        envelope = validation.Envelope(events=events, mode="partial", default_timezone=default)
        accepted, rejected = validation.normalise_batch(
            envelope, received_at=RECEIVED, future_skew=SKEW
        )
        one_by_one = [
            validation.normalise_event(
                e, i, default_timezone=default, received_at=RECEIVED, future_skew=SKEW
            )
            for i, e in enumerate(events)
        ]
        assert rejected == [r for r in one_by_one if isinstance(r, validation.Rejection)]
        expected = [r for r in one_by_one if isinstance(r, validation.NormalisedEvent)]
        assert len(accepted) == len(expected) > 0
        for got, want in zip(accepted, expected, strict=True):
            _same_event(got, want)
        # batch_import's own call: every outcome in batch order, rejections with their index.
        outcomes = validation.normalise_all(
            events, default_timezone=default, received_at=RECEIVED, future_skew=SKEW
        )
        assert len(outcomes) == len(one_by_one)
        for got_outcome, want_outcome in zip(outcomes, one_by_one, strict=True):
            if isinstance(want_outcome, validation.Rejection):
                assert got_outcome == want_outcome
            else:
                assert isinstance(got_outcome, validation.NormalisedEvent)
                _same_event(got_outcome, want_outcome)
        if batch == 2:
            assert outcomes[20] == validation.Rejection(
                20, validation.echoed_event_id(events[20]), (surrogate_error,)
            )


_storable_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=5)


@settings(max_examples=500, deadline=None)
@given(
    st.uuids(),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=45)), timezone(-timedelta(hours=23))]
        ),
    ),
    st.dictionaries(_storable_text, st.integers() | _storable_text, max_size=3),
)
def test_content_identity_is_the_documented_canonical_json(
    user: uuid.UUID, moment: datetime, value: dict[str, Any]
) -> None:
    """The canonical JSON of [user_id, event_type, instant with six fraction digits in UTC,
    value], as functions.ids documents it, with microseconds and without."""
    instant = moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"
    canonical = json.dumps(
        [str(user), "steps_import", instant, value],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert content_identity(user, "steps_import", moment, canonical_value(value)) == canonical

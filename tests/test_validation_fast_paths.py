"""The fast paths of validation give the answers of the slow ones they replace.

- ``compact_json`` (the json module's C encoder built once) writes exactly what ``json.dumps``
  writes, and the canonical encoder (orjson, with the json module for what orjson spells
  differently) exactly what ``JSONEncoder(sort_keys=True, ...).encode`` writes;
- the one-call check of a whole event of a known type accepts exactly the events that pass
  the event schema and the payload schema checked apart;
- the canonical JSON a valid event carries (``value_json``) is its value, and the direct sink
  stores that value unchanged, escapes and all;
- the quick route of a valid event (``_quick_normalise_all``, ``timestamps.utc_or_none``,
  UUIDs built through their slots, the derived id's instant from a naive datetime), in both
  its implementations (pure Python, and compiled in accelerator/), returns exactly what the
  full route returns, and gives up on everything the full route rejects.
  tests/test_accelerator.py holds the two implementations to each other on generated events.
"""

from __future__ import annotations

import copy
import gc
import json
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions import timestamps, validation
from functions.errors import TimestampError
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
    assert validation.compact_json(value) == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False
    )


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
            validation._canonical_value(value)
        return
    if "\\u0000" in expected:
        return  # NUL handling has its own tests in tests/unit/test_validation.py
    assert validation._canonical_value(value) == expected


def test_orjson_writes_the_canonical_json_of_ordinary_payloads() -> None:
    """The quick encoder is the one in use, and takes no detour through the json module for
    payloads like the sample events' (else it would be no quicker)."""
    assert validation._canonical_json is validation._canonical_json_quickly
    values = [e["value"] for e in _sample_events() if isinstance(e.get("value"), dict)]
    assert len(values) > 10
    for value in values:
        text = validation._canonical_json(value)
        assert text == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if "null" not in text:
            assert validation._MAY_DIFFER(text) is None, text


@pytest.mark.parametrize(
    "value",
    [
        {"x": float("nan")},
        {"x": [1, float("inf")]},
        {"x": -float("inf")},
    ],
)
def test_non_finite_numbers_are_refused_by_both_encoders(value: dict[str, Any]) -> None:
    # orjson would write null for them: the quick encoder must not let that through, and the
    # json module, which it falls back to, refuses them. (The compiled route's handling is
    # tested in tests/test_accelerator.py.)
    assert validation._canonical_json is validation._canonical_json_quickly
    with pytest.raises(ValueError, match="NaN or Infinity"):
        validation._canonical_value(value)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        validation._canonical_json_plainly(value)


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
    checked = 0
    for sample in _sample_events():
        for event in _mutations(sample):
            event_type = event.get("event_type")
            value = event.get("value")
            if not isinstance(event_type, str) or event_type not in validation.KNOWN_EVENT_TYPES:
                continue
            if "value" not in event:
                continue
            apart = validation._EVENT_VALIDATOR.is_valid(event) and (
                not isinstance(value, dict)
                or validation._PAYLOAD_VALIDATORS[event_type].is_valid(value)
            )
            whole = validation._WHOLE_EVENT_VALIDATORS[event_type].is_valid(event)
            assert whole == apart, event
            checked += 1
    assert checked > 100


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
    event = validation.normalise_event(
        {
            "user_id": user,
            "event_type": "steps_import",
            "timestamp": "2024-06-01T12:00:00Z",
            "value": tricky,
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
            "select value from engagement_events where id = %s", (event.id,)
        ).fetchone()
    assert stored is not None
    assert stored[0] == tricky


# --- the quick route of a valid event ----------------------------------------------------------

RECEIVED = datetime(2024, 12, 1, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
ZONES = (None, "UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu")


def _same_event(quick: validation.NormalisedEvent, full: validation.NormalisedEvent) -> None:
    assert type(quick) is validation.NormalisedEvent
    assert (quick.id, quick.user_id, quick.event_type, quick.timestamp, quick.value) == (
        full.id,
        full.user_id,
        full.event_type,
        full.timestamp,
        full.value,
    )
    assert quick.value_json == full.value_json
    assert type(quick.id) is uuid.UUID
    assert type(quick.user_id) is uuid.UUID
    assert str(quick.id) == str(full.id)
    assert quick.id.version == full.id.version
    assert quick.timestamp.tzinfo is UTC
    assert repr(quick) == repr(full)


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


QUICK_ROUTES = {
    "python": validation._quick_normalise_all_python,
    "compiled": validation._quick_normalise_all_compiled,
}


@pytest.fixture(params=sorted(QUICK_ROUTES))
def quick_route(request: pytest.FixtureRequest) -> Any:
    """Each implementation of the quick route: the pure-Python loop and the compiled one
    (accelerator/, which scripts/setup.sh builds)."""
    if request.param == "compiled":
        assert validation._ACCELERATOR is not None, (
            "engagement_accel is not installed: scripts/setup.sh builds it from accelerator/"
        )
    return QUICK_ROUTES[request.param]


def test_quick_route_returns_the_full_routes_answer(quick_route: Any) -> None:
    """Every sample event and variant: where the quick route answers, the full route accepts
    the event with exactly that result; where the full route rejects, the quick one gave up.
    Both implementations of the quick route, each on its own."""
    answered = rejected = 0
    for sample in _sample_events():
        for event in [*_mutations(sample), *_timestamp_variants(sample)]:
            for default in (None, "Europe/Berlin", "not/a_zone"):
                zone = validation._batch_zone(default)
                full = validation._full_normalise(event, 3, default, RECEIVED, SKEW)
                quick = (
                    None
                    if zone is validation._NO_QUICK_ROUTE
                    else quick_route([event], zone, RECEIVED, SKEW)[0]
                )
                through_api = validation.normalise_event(
                    event, 3, default_timezone=default, received_at=RECEIVED, future_skew=SKEW
                )
                if isinstance(full, validation.Rejection):
                    assert quick is None, event
                    assert through_api == full
                    rejected += 1
                    continue
                assert isinstance(through_api, validation.NormalisedEvent)
                _same_event(through_api, full)
                if quick is not None:
                    _same_event(quick, full)
                    answered += 1
    assert answered > 500
    assert rejected > 500


def test_a_batch_gives_the_answers_of_its_events_one_by_one() -> None:
    events: list[Any] = []
    for sample in _sample_events():
        events += _timestamp_variants(sample)
    events += ["junk", None, [1]]
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


_digits = st.integers


@st.composite
def _timestamp_texts(draw: st.DrawFn) -> str:
    """Date-time texts near and beyond the edges of what to_utc accepts."""
    year = draw(st.sampled_from([1, 2, 2024, 2025, 9998, 9999]) | _digits(1, 9999))
    text = f"{year:04d}-{draw(_digits(0, 13)):02d}-{draw(_digits(0, 32)):02d}"
    text += draw(st.sampled_from("Tt ")) + f"{draw(_digits(0, 24)):02d}:{draw(_digits(0, 60)):02d}"
    if draw(st.booleans()):
        text += f":{draw(_digits(0, 60)):02d}"
        if draw(st.booleans()):
            text += draw(st.sampled_from(".,")) + draw(st.from_regex(r"[0-9]{1,9}", fullmatch=True))
    sign = draw(st.sampled_from("+-"))
    hours, minutes = draw(_digits(0, 24)), draw(_digits(0, 60))
    text += draw(
        st.sampled_from(
            ["", "Z", "z", f"{sign}{hours:02d}", f"{sign}{hours:02d}{minutes:02d}"]
            + [f"{sign}{hours:02d}:{minutes:02d}"] * 3
        )
    )
    return text


def _near_changes(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


local_times = st.datetimes(min_value=datetime(2023, 1, 1), max_value=datetime(2026, 12, 31)).map(
    _near_changes
)


@settings(max_examples=1500, deadline=None)
@given(_timestamp_texts() | local_times, st.sampled_from(ZONES))
def test_utc_or_none_is_to_utc_or_nothing(text: str, zone_name: str | None) -> None:
    zone = None if zone_name is None else timestamps.get_zone(zone_name)
    try:
        expected: datetime | None = timestamps.to_utc(
            text, timezone=zone_name, now=RECEIVED, future_skew=SKEW
        )
    except TimestampError:
        expected = None
    got = timestamps.utc_or_none(text, zone, RECEIVED + SKEW)
    assert got == expected
    if got is not None:
        assert expected is not None
        assert got.tzinfo is UTC
        assert (got.replace(tzinfo=None), got.fold) == (expected.replace(tzinfo=None), 0)


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
def test_derived_id_is_the_documented_uuid5(
    user: uuid.UUID, moment: datetime, value: dict[str, Any]
) -> None:
    """uuid5 of the canonical JSON of [user_id, event_type, instant with six fraction digits
    in UTC, value], as derive_event_id documents it, with microseconds and without."""
    instant = moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"
    canonical = json.dumps(
        [str(user), "steps_import", instant, value],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    derived = validation.derive_event_id(user, "steps_import", moment, value)
    assert derived == uuid.uuid5(validation.EVENT_ID_NAMESPACE, canonical)
    assert type(derived) is uuid.UUID
    assert derived.version == 5
    assert str(derived) == str(uuid.uuid5(validation.EVENT_ID_NAMESPACE, canonical))


@settings(max_examples=300, deadline=None)
@given(st.uuids(), st.booleans())
def test_uuid_of_text_is_the_uuid_constructor(value: uuid.UUID, upper: bool) -> None:
    text = str(value).upper() if upper else str(value)
    made = validation._uuid_of_text(text)
    assert made == uuid.UUID(text)
    assert type(made) is uuid.UUID
    assert (str(made), hash(made), made.is_safe) == (str(value), hash(value), value.is_safe)


def test_the_garbage_collector_runs_again_after_a_batch() -> None:
    """normalise_batch pauses the cyclic collector; it must be back on afterwards, also when
    the batch fails, and a collector someone else paused stays paused."""
    envelope = validation.Envelope(events=_sample_events(), mode="partial", default_timezone=None)
    assert gc.isenabled()
    validation.normalise_batch(envelope, received_at=RECEIVED)
    assert gc.isenabled()

    class Exploding(dict[str, Any]):
        def get(self, *args: Any) -> Any:
            assert not gc.isenabled()  # inside the paused block
            raise RuntimeError("boom")

    failing = validation.Envelope(events=[Exploding()], mode="partial", default_timezone=None)
    with pytest.raises(RuntimeError, match="boom"):
        validation.normalise_batch(failing, received_at=RECEIVED)
    assert gc.isenabled()

    gc.disable()
    try:
        validation.normalise_batch(envelope, received_at=RECEIVED)
        assert not gc.isenabled()
    finally:
        gc.enable()

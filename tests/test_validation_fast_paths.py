"""The fast paths of validation give the answers of the slow ones they replace.

- ``compact_json`` and the canonical encoder (C encoders built once) write exactly what
  ``json.dumps`` / ``JSONEncoder.encode`` write;
- the one-call check of a whole event of a known type accepts exactly the events that pass
  the event schema and the payload schema checked apart;
- the canonical JSON a valid event carries (``value_json``) is its value, and the direct sink
  stores that value unchanged, escapes and all.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions import validation
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


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_value_is_the_sorted_compact_encoding(value: dict[str, Any]) -> None:
    expected = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode(value)
    try:
        expected_bytes = expected.encode()
    except UnicodeEncodeError:  # a lone surrogate: not storable, reported as such
        with pytest.raises(ValueError, match="surrogates"):
            validation._canonical_value(value)
        return
    if "\\u0000" in expected:
        return  # NUL handling has its own tests in tests/unit/test_validation.py
    assert validation._canonical_value(value) == (expected, expected_bytes)


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

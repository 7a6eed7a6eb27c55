"""The compiled quick route (accelerator/engagement_accel.c) against the pure-Python one.

The compiled loop stands in for the Python code every valid event goes through. These tests
hold it to that code's answers event by event, on generated events: timestamps of every shape
and at the edges of the calendar, zones with unusual histories, local times around every clock
change, values that orjson spells differently from the json module, ids in either case. It is
C reading data from outside, so they also check that it keeps no reference to what it is given
and that its memory does not grow from batch to batch.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import tracemalloc
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions import handlers, timestamps, validation
from tests.test_validation_fast_paths import (
    RECEIVED,
    SKEW,
    _same_event,
    _sample_events,
    _timestamp_texts,
    canonical_values,
)

ROOT = Path(__file__).resolve().parents[1]

python_route = validation._quick_normalise_all_python
compiled_route = validation._quick_normalise_all_compiled

ZONES = [
    "UTC",
    "Etc/GMT+5",  # a zone without transitions
    "Europe/Berlin",
    "Europe/Dublin",  # "winter time" is its DST
    "America/New_York",
    "America/St_Johns",  # -03:30 / -02:30
    "Asia/Kathmandu",  # +05:45
    "Australia/Lord_Howe",  # a 30-minute DST
    "Pacific/Chatham",  # +12:45 / +13:45
    "Africa/Casablanca",  # DST suspended each Ramadan
    "Antarctica/Troll",  # +00 / +02
    "europe/berlin",  # zone names are matched case-insensitively
]


def test_setup_builds_the_compiled_route_and_validation_takes_it() -> None:
    assert validation._ACCELERATOR is not None, (
        "engagement_accel is not installed: scripts/setup.sh builds it from accelerator/ "
        "(it needs gcc and the Python headers, which setup.sh installs)"
    )
    assert validation.QUICK_ROUTE == "compiled"
    assert validation._quick_normalise_all is compiled_route


def _compare(events: list[Any], default_zone: Any = None) -> list[Any]:
    """Both routes on the same batch: the same events given up on, the same answers for the
    rest. Returns the compiled route's answers."""
    expected = python_route(events, default_zone, RECEIVED, SKEW)
    got = compiled_route(events, default_zone, RECEIVED, SKEW)
    assert len(got) == len(expected) == len(events)
    for event, mine, theirs in zip(events, got, expected, strict=True):
        if theirs is None:
            assert mine is None, event
        else:
            assert mine is not None, event
            _same_event(mine, theirs)
            assert mine == theirs
    return got


# --- generated events ---------------------------------------------------------------------------


def _local_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{moment.microsecond:06d}" if moment.microsecond else ""
    )


_timestamps = (
    _timestamp_texts()
    | st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2027, 12, 31)).map(
        _local_text
    )
    | st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 3)).map(_local_text)
    | st.datetimes(min_value=datetime(9999, 12, 29), max_value=datetime(9999, 12, 31)).map(
        _local_text
    )
    | st.sampled_from(["", "T", "2024-06-01T12:00:00Z ", "٢٠٢٤-06-01T12:00:00Z", "2024-06-01"])
)

_payloads = [e["value"] for e in _sample_events() if isinstance(e.get("value"), dict)]


@st.composite
def _events(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([None, "event", 7, ["x"], {"user_id": 1}]))
    user = draw(st.uuids()).hex if draw(st.integers(0, 20)) == 0 else str(draw(st.uuids()))
    event: dict[str, Any] = {
        "user_id": user.upper() if draw(st.booleans()) else user,
        "event_type": draw(
            st.sampled_from(["app_open", "goal_complete", "steps_import", "mood_logged", "Bad"])
        ),
    }
    kind = draw(st.integers(0, 3))
    if kind == 0:
        event["value"] = draw(st.sampled_from(_payloads))
    elif kind == 1:
        event["value"] = draw(st.dictionaries(st.text(max_size=6), canonical_values, max_size=4))
    elif kind == 2:
        event["value"] = draw(
            st.sampled_from(
                [
                    {"x": float("nan")},
                    {"x": [1e-05, 2]},
                    {"note": ":null,[0.00001"},
                    {"x": None},
                    {"x": -0.00001},
                    {"x": 12.5e-7},
                    {"x": "\x00"},
                    {"x": "\\u0000"},
                    {"x": "\ud800"},
                    {"x": 2**64},
                    {"é": "漢字 \U0001f600"},
                    [],
                    "text",
                ]
            )
        )
    if draw(st.integers(0, 4)):
        event["timestamp"] = draw(_timestamps)
    if draw(st.booleans()):
        event["timezone"] = draw(st.sampled_from([*ZONES, "Mars/Olympus_Mons", ""]))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        event["event_id"] = str(draw(st.uuids()))
    elif choice == 1:
        event["event_id"] = str(draw(st.uuids())).upper()
    elif choice == 2:
        event["event_id"] = draw(st.sampled_from(["not-a-uuid", "{" + str(uuid.uuid4()) + "}"]))
    return event


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_events(), min_size=1, max_size=12),
    st.sampled_from([None, "Europe/Berlin", "Asia/Kathmandu", "Etc/GMT+5"]),
)
def test_the_compiled_route_answers_as_the_python_route(
    events: list[Any], default: str | None
) -> None:
    zone = None if default is None else timestamps.get_zone(default)
    _compare(events, zone)


def _event(timestamp: str, zone: str | None, **extra: Any) -> dict[str, Any]:
    event = {
        "user_id": "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f",
        "event_type": "mood_logged",
        "timestamp": timestamp,
        "value": {"score": 3},
        **extra,
    }
    if zone is not None:
        event["timezone"] = zone
    return event


def test_local_times_around_every_clock_change() -> None:
    """Wall-clock times at and around each clock change of 2018-2024 (inside gaps and overlaps,
    and at the one-day edges where the steady offset starts to hold) in zones with unusual
    histories: the compiled route reads pytz's transition table as the Python route does."""
    steps = [timedelta(0), timedelta(microseconds=1), timedelta(seconds=1), timedelta(minutes=30)]
    steps += [timedelta(hours=1), timedelta(hours=23, minutes=59, seconds=59), timedelta(days=1)]
    steps += [timedelta(days=1, microseconds=1), timedelta(days=1, hours=1)]
    events = []
    for name in ZONES:
        zone = pytz.timezone(name)
        changes = getattr(zone, "_utc_transition_times", [])
        periods = getattr(zone, "_transition_info", [])
        for change, period in zip(changes, periods, strict=False):
            if (
                not datetime(2018, 1, 1)
                <= change
                <= RECEIVED.replace(tzinfo=None) - timedelta(days=2)
            ):
                continue  # (later ones are in the future of the batch: refused by both routes)
            wall = change + period[0]
            for step in steps:
                for moment in (wall + step, wall - step):
                    events.append(_event(_local_text(moment), name))
    assert len(events) > 2000
    answers = _compare(events)
    # Most are steady; those in gaps and overlaps are given up on.
    assert 0 < sum(answer is None for answer in answers) < len(answers) // 2


def test_the_edges_of_the_calendar() -> None:
    texts = [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",  # before year 1 in UTC
        "0001-01-01T23:30:00-01:00",
        "0001-01-01T12:00:00",  # local, within a day of the start
        "0001-01-02T12:00:00",
        "0001-01-03T12:00:00",
        "9999-12-31T23:59:59.999999Z",  # after now + skew: given up on
        "9999-12-31T23:30:00-01:00",  # after 9999 in UTC
        "9999-12-30T12:00:00",
        "2024-02-29T12:00:00Z",
        "2023-02-29T12:00:00Z",
        "2000-02-29T12:00:00+14:00",
        "1900-02-29T12:00:00Z",
        "2024-12-01T12:05:00Z",  # exactly the allowed skew ahead
        "2024-12-01T12:05:00.000001Z",  # just beyond it
        "2024-12-01T12:05:00.0000009Z",  # the seventh digit is dropped, as fromisoformat does
        "2024-12-01T13:05:00.000000999+01:00",
    ]
    events = [_event(text, zone) for text in texts for zone in (None, "Europe/Berlin", "UTC")]
    answers = _compare(events)
    assert any(answer is not None for answer in answers)


def test_derived_and_sent_ids_in_either_case() -> None:
    events = []
    for n in range(200):
        user = str(uuid.UUID(int=n * 7919 + 1))
        event = _event(f"2024-06-0{1 + n % 9}T12:00:00Z", None, user_id=user.upper())
        if n % 3 == 0:
            event["event_id"] = str(uuid.UUID(int=n)).upper()
        elif n % 3 == 1:
            event["value"] = {"long": "x" * (n * 13), "ü": n}  # messages of many SHA-1 blocks
        events.append(event)
    answers = _compare(events)
    assert all(answer is not None for answer in answers)
    assert len({answer.id for answer in answers}) == len(answers)


# --- what C must not get wrong --------------------------------------------------------------


def _every_path() -> list[Any]:
    """Fresh objects (json.loads) covering every branch of the compiled loop."""
    events: list[Any] = [
        _event("2024-06-01T12:00:00Z", None),
        _event("2024-06-01T12:00:00.5+05:45", None, event_id=str(uuid.uuid4())),
        _event("2024-06-01T12:00:00", "Europe/Berlin"),
        _event("2024-03-31T02:30:00", "Europe/Berlin"),  # in the gap: full route
        _event("2024-06-01 12:00:00", "Etc/GMT+5"),  # an unusual shape: utc_or_none
        _event("2024-06-01T12:00:00", "Mars/Olympus_Mons"),
        _event("2030-06-01T12:00:00Z", None),  # too far ahead
        _event("2024-06-01T12:00:00Z", None, value={"x": 1e-05}),
        _event("2024-06-01T12:00:00Z", None, value={"x": None, "y": "\\u0000"}),
        _event("2024-06-01T12:00:00Z", None, value={"x": 2**70}),
        {"user_id": "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f", "event_type": "mood_logged"},
        {"user_id": "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f", "event_type": "app_open"},
        {"event_type": 5},
        "junk",
    ]
    text = json.dumps(events)
    fresh: list[Any] = json.loads(text)
    fresh[7]["value"]["x"] = float("nan")  # json.loads would not make it from standard JSON
    return fresh


def test_the_compiled_route_keeps_no_reference_to_its_input() -> None:
    events = _every_path()
    _compare(events)
    held = [events, *events]
    for event in events:
        if isinstance(event, dict):
            held += [value for value in event.values() if not isinstance(value, int | float)]
    before = [sys.getrefcount(item) for item in held]
    for _ in range(50):
        answers = compiled_route(events, None, RECEIVED, SKEW)
        del answers
    assert [sys.getrefcount(item) for item in held] == before


def test_the_compiled_routes_memory_does_not_grow() -> None:
    events = _every_path() * 20
    for _ in range(5):  # the caches (zones, users, offsets) fill on the first rounds
        compiled_route(events, None, RECEIVED, SKEW)
    tracemalloc.start()
    try:
        compiled_route(events, None, RECEIVED, SKEW)
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(200):
            compiled_route(events, None, RECEIVED, SKEW)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 200 rounds of 280 events: a leak of one object per event would be megabytes.
    assert end - start < 64 * 1024


def test_batch_import_says_at_cold_start_which_route_validation_takes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FUNCTION_TARGET", "batch_import")
    monkeypatch.setenv("SUPABASE_JWT_SECRET", "x" * 40)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    handlers.state.cache_clear()
    try:
        handlers.prepare()
    finally:
        handlers.state.cache_clear()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    said = [line for line in lines if line["message"].startswith("event validation:")]
    assert [(line["severity"], line["logger"], line["message"]) for line in said] == [
        ("INFO", "functions.handlers", "event validation: compiled quick route (engagement-accel)")
    ]


def test_without_the_compiled_route_validation_takes_the_python_route() -> None:
    """Where the build had no compiler the package installs without its extension: importing
    it fails, and validation (and batch_import's cold-start line) fall back to Python."""
    script = """
import json, sys
sys.modules["engagement_accel"] = None  # as if the extension had not been built
import os
os.environ.update(FUNCTION_TARGET="batch_import", SUPABASE_JWT_SECRET="x" * 40,
                  DATABASE_URL="postgresql://nobody@127.0.0.1:9/none")
from datetime import UTC, datetime
from functions import handlers, validation
handlers.prepare()
event = {"user_id": "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f", "event_type": "mood_logged",
         "timestamp": "2024-06-01T12:00:00+02:00"}
outcome = validation.normalise_all([event], default_timezone=None, received_at=datetime.now(UTC))
print(json.dumps({"route": validation.QUICK_ROUTE, "id": str(outcome[0].id),
                  "taken": validation._quick_normalise_all.__name__}))
"""
    lines = [json.loads(line) for line in _python_says(script) if line.startswith("{")]
    assert {
        "route": "python",
        "id": _derived_here(),
        "taken": "_quick_normalise_all_python",
    } in lines
    said = [line["message"] for line in lines if line.get("logger") == "functions.handlers"]
    assert said == [
        "event validation: pure-Python route (engagement-accel is not installed; valid events "
        "are checked about half as fast)"
    ]


def _derived_here() -> str:
    """The id the compiled route derives for the event of the test above."""
    event = _event("2024-06-01T12:00:00+02:00", None)
    del event["value"]
    (answer,) = compiled_route([event], None, RECEIVED, SKEW)
    assert answer is not None
    return str(answer.id)


def test_the_compiled_route_from_many_threads_at_once() -> None:
    """gunicorn may serve requests on several threads: the compiled loop gives each batch its
    own answers while other threads run it (and fill its per-zone tables) at the same time."""
    zones = ["Europe/Lisbon", "America/Halifax", "Asia/Tehran", "Pacific/Auckland"]
    batches = [
        [
            # Every third timestamp has a space for its T: utc_or_none, Python code, takes it,
            # and there the interpreter may switch threads.
            _event(
                f"2024-0{1 + (n + k) % 9}-1{k % 10}{' T'[k % 3 > 0]}1{n % 10}:30:00",
                zones[(n + k) % 4],
            )
            | ({"event_id": str(uuid.UUID(int=n * 1000 + k))} if k % 2 else {})
            for k in range(400)
        ]
        for n in range(8)
    ]
    expected = [python_route(batch, None, RECEIVED, SKEW) for batch in batches]
    answers: dict[int, list[Any]] = {}

    def work(n: int) -> None:
        for _ in range(5):
            answers[n] = compiled_route(batches[n], None, RECEIVED, SKEW)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(batches))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert sorted(answers) == list(range(len(batches)))
    for n, want in enumerate(expected):
        assert answers[n] == want
        assert sum(answer is not None for answer in answers[n]) > 300


def test_the_compiled_route_is_configured_once() -> None:
    """Its configuration is set at import and never replaced: a running loop borrows from it."""
    accelerator = validation._ACCELERATOR
    assert accelerator is not None
    with pytest.raises(RuntimeError, match="configured once"):
        accelerator.configure()


def test_requirements_name_the_c_source_they_build() -> None:
    """Cloud Functions caches installed dependencies by the content of requirements.txt: the
    line that builds accelerator/ carries the C source's hash, so a change to the source
    changes requirements.txt and the build compiles it again."""
    source = hashlib.sha256(validation.ACCELERATOR_SOURCE.read_bytes()).hexdigest()
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    (line,) = [line for line in lines if line.startswith("./accelerator")]
    assert line.endswith(f"# engagement_accel.c sha256 {source[:16]}"), (
        f"requirements.txt must say '# engagement_accel.c sha256 {source[:16]}' after ./accelerator"
    )


def test_a_build_from_another_source_is_not_used() -> None:
    """A module built from another version of the C source (left in a dependency cache, say)
    may not give this code's answers: validation takes the pure-Python route and says why."""
    script = """
import json, sys, types
stale = types.ModuleType("engagement_accel")
stale.source_sha256 = "0" * 64
def refuse(*args, **kwargs):
    raise AssertionError("a stale build must not be configured")
stale.configure = refuse
sys.modules["engagement_accel"] = stale
from functions import validation
print(json.dumps({"route": validation.QUICK_ROUTE, "why": validation.QUICK_ROUTE_WHY_NOT}))
"""
    assert [json.loads(line) for line in _python_says(script)] == [
        {
            "route": "python",
            "why": "engagement-accel was built from another version of accelerator/engagement_accel.c",
        }
    ]


def _python_says(script: str) -> list[str]:
    """The lines a fresh interpreter prints running ``script`` in the project's root."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.splitlines()

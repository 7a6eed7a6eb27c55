"""The fast path of local-time conversion gives exactly what pytz's localize gives.

``functions.timestamps`` skips ``zone.localize`` when no clock change of the zone is within a
day of the local time. These tests compare the two on every zone, right at and around every
clock change from 2022 to 2026 (the edges of each gap and overlap, and the one-day edges where
the fast path starts to apply), and at the ends of the calendar: the converted instant, or the
gap/overlap/out-of-range error, must be the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import pytz

from functions import timestamps
from functions.errors import TimestampError

_STEPS = (
    timedelta(0),
    timedelta(microseconds=1),
    timedelta(seconds=1),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=1, microseconds=1),
    timedelta(days=1, hours=1),
)


def _pytz(local: datetime, zone: pytz.BaseTzInfo) -> datetime | str:
    try:
        return zone.localize(local, is_dst=None).astimezone(UTC)
    except pytz.NonExistentTimeError:
        return "nonexistent_local_time"
    except pytz.AmbiguousTimeError:
        return "ambiguous_local_time"
    except OverflowError:
        return "invalid_timestamp"


def _ours(local: datetime, zone: pytz.BaseTzInfo) -> datetime | str:
    try:
        return timestamps._localize(local, zone, local.isoformat())
    except TimestampError as exc:
        return exc.code


def _samples(zone: pytz.BaseTzInfo) -> list[datetime]:
    """Local times at and around each clock change of 2022-2026 and at the calendar's ends."""
    local_edges: list[datetime] = []
    changes = getattr(zone, "_utc_transition_times", [])
    periods = getattr(zone, "_transition_info", [])
    for index, change in enumerate(changes):
        if not 2022 <= change.year <= 2026:
            continue
        for offset in {periods[index - 1][0], periods[index][0]}:
            local_edges.append(change + offset)  # where a gap or overlap starts or ends
    samples = [datetime(1, 1, 1), datetime(1, 1, 2, 12), datetime(9999, 12, 31, 23, 59, 59)]
    for edge in local_edges:
        for step in _STEPS:
            samples += [edge - step, edge + step]
    return samples


@pytest.mark.parametrize("name", pytz.all_timezones)
def test_fast_path_agrees_with_pytz_around_every_clock_change(name: str) -> None:
    zone = pytz.timezone(name)
    for local in _samples(zone):
        expected, got = _pytz(local, zone), _ours(local, zone)
        assert got == expected, f"{name} {local}: pytz {expected}, ours {got}"
        if isinstance(got, datetime):
            assert got.tzinfo is UTC


def test_fast_path_is_taken_away_from_clock_changes() -> None:
    zone = pytz.timezone("Europe/Berlin")
    assert timestamps._steady_offset(zone, datetime(2024, 6, 1, 12)) == timedelta(hours=2)
    assert timestamps._steady_offset(zone, datetime(2024, 3, 31, 2, 30)) is None  # the gap
    assert timestamps._steady_offset(zone, datetime(2024, 10, 27, 2, 30)) is None  # the overlap

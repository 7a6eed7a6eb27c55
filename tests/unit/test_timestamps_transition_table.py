"""The clock change named in a DST gap or overlap message, read from pytz's transition table,
is the one the bisection over the zone's offsets finds (functions/timestamps.py,
``_find_transition``: the table where it lists one change near the local time, else the
bisection)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import pytz

from functions import timestamps
from functions.errors import TimestampError

_SECOND = timedelta(seconds=1)

# Zones with unusual histories, over all their years: double summer time, a 24-hour jump over
# the date line, 30-minute DST, a 45-minute offset, offsets changed by decree.
_ODD_ZONES = (
    "Europe/London",
    "Europe/Moscow",
    "Pacific/Apia",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "America/Caracas",
    "Antarctica/Troll",
)


def _changes(
    zone: pytz.BaseTzInfo, years: range
) -> Iterator[tuple[datetime, timedelta, timedelta]]:
    """(UTC instant, offset before, offset after) of each change of the zone's UTC offset."""
    transitions = getattr(zone, "_utc_transition_times", [])
    periods = getattr(zone, "_transition_info", [])
    for index in range(1, len(transitions)):
        before, after = periods[index - 1][0], periods[index][0]
        if before != after and transitions[index].year in years:
            yield transitions[index], before, after


def _troubled_local_times(zone: pytz.BaseTzInfo, years: range) -> Iterator[datetime]:
    """Local times inside each gap and overlap: its first second, its middle, its last second."""
    for moment, before, after in _changes(zone, years):
        start = moment + min(before, after)
        end = moment + max(before, after) - _SECOND
        for local in (start, start + (end - start) / 2, end):
            local = local.replace(microsecond=0)
            try:
                zone.localize(local, is_dst=None)
            except (pytz.NonExistentTimeError, pytz.AmbiguousTimeError):
                yield local


def _same(got: tuple[datetime, datetime] | None, want: tuple[datetime, datetime] | None) -> bool:
    if got is None or want is None:
        return got is want
    return all(
        g == w
        and g.utcoffset() == w.utcoffset()
        and g.tzname() == w.tzname()
        and g.dst() == w.dst()
        for g, w in zip(got, want, strict=True)
    )


def test_every_zone_names_the_same_change_from_the_table_2022_to_2026() -> None:
    checked = from_table = 0
    for name in pytz.all_timezones:
        zone = pytz.timezone(name)
        for local in _troubled_local_times(zone, range(2022, 2027)):
            searched = timestamps._searched_transition(local, zone)
            assert _same(timestamps._find_transition(local, zone), searched), (name, local)
            checked += 1
            from_table += timestamps._table_transition(local, zone) is not None
    assert checked > 2000
    assert from_table == checked  # recent years: one change near each such time, always


@pytest.mark.parametrize("name", _ODD_ZONES)
def test_zones_with_odd_histories_name_the_same_change_in_every_year(name: str) -> None:
    zone = pytz.timezone(name)
    checked = 0
    for local in _troubled_local_times(zone, range(1, 10_000)):
        searched = timestamps._searched_transition(local, zone)
        assert _same(timestamps._find_transition(local, zone), searched), (name, local)
        checked += 1
    assert checked > 0


def test_a_gap_message_names_the_clock_change() -> None:
    with pytest.raises(TimestampError) as caught:
        timestamps.to_utc("2024-03-10T02:30:00", timezone="America/New_York")
    assert caught.value.code == "nonexistent_local_time"
    assert "jump forward from 02:00 to 03:00 on 2024-03-10 (EST to EDT)" in caught.value.message

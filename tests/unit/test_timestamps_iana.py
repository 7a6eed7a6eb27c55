"""Local times convert as the IANA rules say, to the second, in every zone pytz lists.

The expected answers come from ``tests/tzif_reference.py``, which reads the same TZif files
(pytz's database) by hand: the transition table, and the POSIX TZ footer after it. So the tests
do not depend on the machine's own tz database, and they check ``functions.timestamps`` (which
reads those files with ``zoneinfo``) against a second, independent reading of them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import pytz
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.errors import TimestampError
from functions.timestamps import get_zone, to_utc
from tests import tzif_reference as reference

FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
"""``now`` for these tests, so that the future bound rejects nothing."""

ZONES = sorted(pytz.all_timezones)
DETERMINISTIC = settings(max_examples=1500, derandomize=True, database=None, deadline=None)


def outcome(wall: datetime, zone: str) -> datetime | str:
    """What to_utc answers for the naive ``wall`` in ``zone``: the instant or the error code."""
    try:
        return to_utc(wall.isoformat(), timezone=zone, now=FAR_FUTURE)
    except TimestampError as error:
        return error.code if error.field == "timestamp" else f"{error.code} at {error.field}"


def expected(wall: datetime, zone: str) -> datetime | str:
    """The same, as the hand-read TZif data says."""
    readings = reference.load(zone).readings(reference.seconds(wall))
    if not readings:
        return "nonexistent_local_time"
    if len(readings) > 1:
        return "ambiguous_local_time"
    return reference.instant(readings[0]) + timedelta(microseconds=wall.microsecond)


# -- Africa/Monrovia: an offset with seconds ---------------------------------------------------


def test_monrovia_before_1972_is_converted_to_the_second() -> None:
    # -00:44:30 (MMT) until 1972-01-07; pytz's own tzinfo would answer 17:34:21Z.
    utc = to_utc("1971-08-25T16:50:21", timezone="Africa/Monrovia", now=FAR_FUTURE)
    assert utc == datetime(1971, 8, 25, 17, 34, 51, tzinfo=UTC)
    assert utc.tzinfo is UTC


@pytest.mark.parametrize(
    ("wall", "utc"),
    [
        ("1972-01-06T23:59:59", datetime(1972, 1, 7, 0, 44, 29, tzinfo=UTC)),
        ("1972-01-07T00:44:30", datetime(1972, 1, 7, 0, 44, 30, tzinfo=UTC)),
        ("1972-01-07T01:00:00", datetime(1972, 1, 7, 1, 0, tzinfo=UTC)),
    ],
)
def test_monrovia_1972_gap_edges_convert(wall: str, utc: datetime) -> None:
    assert to_utc(wall, timezone="Africa/Monrovia", now=FAR_FUTURE) == utc


@pytest.mark.parametrize(
    "wall",
    ["1972-01-07T00:00:00", "1972-01-07T00:00:10", "1972-01-07T00:30:00", "1972-01-07T00:44:29"],
)
def test_monrovia_1972_gap_is_44_minutes_30_seconds_long(wall: str) -> None:
    with pytest.raises(TimestampError) as caught:
        to_utc(wall, timezone="Africa/Monrovia", now=FAR_FUTURE)
    assert caught.value.code == "nonexistent_local_time"
    assert caught.value.field == "timestamp"
    assert (
        f"{wall} does not exist in Africa/Monrovia: it falls in the gap when clocks jump "
        "forward from 00:00 to 00:44:30 on 1972-01-07 (MMT to GMT)"
    ) == caught.value.message


# -- every zone, at random instants ------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@DETERMINISTIC
@given(zone=st.sampled_from(ZONES), moment=instants)
def test_the_wall_time_of_any_instant_converts_back_unless_it_happens_twice(
    zone: str, moment: datetime
) -> None:
    offset = reference.load(zone).period_at(reference.seconds(moment)).offset
    wall = moment.replace(tzinfo=None) + timedelta(seconds=offset)
    want = expected(wall, zone)
    assert outcome(wall, zone) == want
    assert want in (moment, "ambiguous_local_time")


@DETERMINISTIC
@given(
    zone=st.sampled_from(ZONES),
    wall=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
)
def test_any_wall_time_converts_or_is_refused_as_the_tz_data_says(
    zone: str, wall: datetime
) -> None:
    assert outcome(wall, zone) == expected(wall, zone)


# -- every clock change of every zone ----------------------------------------------------------


def clock_changes(zone: reference.Zone) -> list[tuple[int, reference.Period, reference.Period]]:
    """(UTC instant, period before, period after) of each change of the UTC offset in the
    zone's table, and by the footer's rules in a few years after it."""
    changes = []
    previous = zone.first
    for moment, period in zip(zone.transitions, zone.periods, strict=True):
        if period.offset != previous.offset:
            changes.append((moment, previous, period))
        previous = period
    if zone.footer is not None and zone.transitions:
        for year in (2038, 2039, 9000):  # after the table: the footer's rules
            for moment, period in reference.footer_changes(zone.footer, year):
                if moment > zone.transitions[-1]:
                    changes.append((moment, zone.period_at(moment - 1), period))
    return changes


def clock_text(start: datetime, end: datetime) -> str:
    def hhmm(moment: datetime) -> str:
        return moment.strftime("%H:%M:%S" if moment.second else "%H:%M")

    if start.date() == end.date():
        return f"from {hhmm(start)} to {hhmm(end)} on {start.date().isoformat()}"
    return f"from {start.date()} {hhmm(start)} to {end.date()} {hhmm(end)}"


def test_every_clock_change_of_every_zone_is_placed_to_the_second() -> None:
    """Around each change: the last second before its gap or overlap and the first after
    convert, the first and last second inside are refused with the right code, and the message
    names the change (its wall times and the two abbreviations)."""
    one = timedelta(seconds=1)
    lowest, highest = datetime(1, 1, 2), datetime(9999, 12, 30)
    checked = footer_checked = 0
    for name in ZONES:
        zone = reference.load(name)
        changes = clock_changes(zone)
        for position, (moment, before, after) in enumerate(changes):
            start = reference.wall_time(moment + min(before.offset, after.offset))
            end = reference.wall_time(moment + max(before.offset, after.offset))
            if not lowest < start < end < highest:
                continue
            for wall in (start - one, start, end - one, end):
                assert outcome(wall, name) == expected(wall, name), (name, wall)
            neighbours = [other for other, _, _ in changes[max(0, position - 1) : position + 2]]
            if any(other != moment and abs(other - moment) < 2 * 86400 for other in neighbours):
                continue  # two changes close together: the message names one of them
            code = (
                "nonexistent_local_time" if after.offset > before.offset else "ambiguous_local_time"
            )
            with pytest.raises(TimestampError) as caught:
                to_utc(start.isoformat(), timezone=name, now=FAR_FUTURE)
            assert caught.value.code == code, (name, start)
            wall_at_change = reference.wall_time(moment)
            clocks = clock_text(
                wall_at_change + timedelta(seconds=before.offset),
                wall_at_change + timedelta(seconds=after.offset),
            )
            message = caught.value.message
            assert f" in {name}: " in message
            assert clocks in message, (name, start, message)
            assert f"({before.abbreviation} to {after.abbreviation})" in message, message
            checked += 1
            footer_checked += bool(zone.transitions) and moment > zone.transitions[-1]
    assert checked > 30_000
    assert footer_checked > 500


# -- the footer: rules after the table's last transition ----------------------------------------


@pytest.mark.parametrize(
    ("wall", "zone", "utc"),
    [
        ("2100-07-01T12:00:00", "America/New_York", "2100-07-01T16:00:00+00:00"),  # EDT
        ("2100-12-01T12:00:00", "America/New_York", "2100-12-01T17:00:00+00:00"),  # EST
        ("2100-03-14T03:00:00", "America/New_York", "2100-03-14T07:00:00+00:00"),
        ("2100-03-14T01:59:59", "America/New_York", "2100-03-14T06:59:59+00:00"),
        ("9999-07-01T12:00:00", "Europe/Berlin", "9999-07-01T10:00:00+00:00"),  # CEST
        ("9999-12-30T12:00:00", "Australia/Sydney", "9999-12-30T01:00:00+00:00"),  # AEDT
    ],
)
def test_far_future_local_times_follow_the_zone_rules(wall: str, zone: str, utc: str) -> None:
    assert to_utc(wall, timezone=zone, now=FAR_FUTURE) == datetime.fromisoformat(utc)


def test_a_far_future_gap_is_refused_and_named() -> None:
    # 2100-03-14 is the second Sunday of March 2100.
    with pytest.raises(TimestampError) as caught:
        to_utc("2100-03-14T02:30:00", timezone="America/New_York", now=FAR_FUTURE)
    assert caught.value.code == "nonexistent_local_time"
    assert "jump forward from 02:00 to 03:00 on 2100-03-14 (EST to EDT)" in caught.value.message


# -- Factory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Factory", "factory"])
@pytest.mark.parametrize("field", ["timezone", "default_timezone"])
def test_factory_is_refused_with_the_reason(name: str, field: str) -> None:
    zone, default = (name, None) if field == "timezone" else (None, name)
    with pytest.raises(TimestampError) as caught:
        to_utc("2024-12-01T07:30:00", timezone=zone, default_timezone=default, now=FAR_FUTURE)
    assert caught.value.code == "unusable_timezone"
    assert caught.value.field == field
    message = caught.value.message
    assert "not a known" not in message
    assert "Factory is not a usable time zone" in message
    assert "local time zone was never set" in message
    assert "such as Europe/Berlin" in message


def test_factory_is_refused_by_get_zone_too() -> None:
    with pytest.raises(TimestampError) as caught:
        get_zone("Factory")
    assert caught.value.code == "unusable_timezone"
    assert caught.value.field == "timezone"

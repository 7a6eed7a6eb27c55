"""Timestamps to UTC: the rules of DESIGN.md ("batch_import" Timestamps, "convert_timestamps").

Sample cases live in ``tests/data/timestamps/`` with hand-computed answers. The DST tests find
each zone's recent clock changes with the standard library's ``zoneinfo`` reading the system's
tz database, a source independent of pytz's; tests/unit/test_timestamps_iana.py checks every
zone and every year against pytz's own files.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.errors import TimestampError
from functions.timestamps import DEFAULT_FUTURE_SKEW, format_utc, get_zone, to_utc

DATA = Path(__file__).resolve().parent.parent / "data" / "timestamps"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
"""The reference time for the sample cases: after all of them but the future ones."""

YEARS = range(2019, 2027)
DST_ZONES = [
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",  # southern hemisphere: the gap in October, the overlap in April
    "America/Santiago",  # clocks change at midnight
    "Australia/Lord_Howe",  # a 30-minute change
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/St_Johns",  # -03:30 / -02:30
    "Pacific/Auckland",
]
FIXED_ZONES = {
    "Asia/Kathmandu": timedelta(hours=5, minutes=45),
    "Asia/Kolkata": timedelta(hours=5, minutes=30),
}


def load(name: str) -> list[Any]:
    cases: list[dict[str, Any]] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["desc"]) for case in cases]


def zoneinfo(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:  # pragma: no cover - only on machines without a tz database
        pytest.skip(f"the system has no tz database entry for {name}")


# -- sample cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("valid.json"))
def test_valid_timestamp_converts_to_the_expected_utc(case: dict[str, Any]) -> None:
    moment = to_utc(
        case["timestamp"],
        timezone=case.get("timezone"),
        default_timezone=case.get("default_timezone"),
        now=NOW,
    )
    assert format_utc(moment) == case["utc"]
    assert moment.tzinfo is UTC
    assert to_utc(case["utc"], now=NOW) == moment  # the output reads back as the same instant


@pytest.mark.parametrize("case", load("invalid.json"))
def test_invalid_timestamp_is_rejected_with_code_field_and_message(case: dict[str, Any]) -> None:
    with pytest.raises(TimestampError) as caught:
        to_utc(
            case["timestamp"],
            timezone=case.get("timezone"),
            default_timezone=case.get("default_timezone"),
            now=NOW,
        )
    assert caught.value.code == case["code"]
    assert caught.value.field == case["field"]
    assert str(caught.value) == caught.value.message
    for words in case.get("says", []):
        assert words in caught.value.message


def test_sample_files_cover_every_error_code() -> None:
    codes = {case.values[0]["code"] for case in load("invalid.json")}
    assert codes == {
        "invalid_timestamp",
        "missing_timezone",
        "unknown_timezone",
        "unusable_timezone",
        "nonexistent_local_time",
        "ambiguous_local_time",
        "timestamp_in_future",
    }


# -- DST transitions, found with zoneinfo -----------------------------------------------------


def clock_changes(zone: ZoneInfo, year: int) -> list[tuple[datetime, timedelta, timedelta]]:
    """(UTC instant, offset before, offset after) of each of the zone's changes in ``year``."""
    changes = []
    day = datetime(year, 1, 1, tzinfo=UTC)
    while day.year == year:
        following = day + timedelta(days=1)
        before, after = day.astimezone(zone).utcoffset(), following.astimezone(zone).utcoffset()
        assert before is not None
        assert after is not None
        if before != after:
            low, high = day, following  # offset `before` at low, `after` at high
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) // 2
                if middle.astimezone(zone).utcoffset() == before:
                    low = middle
                else:
                    high = middle
            changes.append((high, before, after))
        day = following
    return changes


def gaps_and_overlaps(
    name: str, year: int
) -> tuple[tuple[datetime, timedelta, timedelta], tuple[datetime, timedelta, timedelta]]:
    changes = clock_changes(zoneinfo(name), year)
    gaps = [change for change in changes if change[2] > change[1]]
    overlaps = [change for change in changes if change[2] < change[1]]
    assert len(gaps) == 1, f"{name} should spring forward once in {year}"
    assert len(overlaps) == 1, f"{name} should fall back once in {year}"
    return gaps[0], overlaps[0]


def wall(change: datetime, offset: timedelta) -> datetime:
    """The naive wall-clock time at UTC instant ``change`` under ``offset``."""
    return (change + offset).replace(tzinfo=None)


def clocks_change(old: datetime, new: datetime) -> str:
    """How a message states the wall clock going from ``old`` to ``new``."""
    if old.date() == new.date():
        return f"from {old:%H:%M} to {new:%H:%M} on {old:%Y-%m-%d}"
    return f"from {old:%Y-%m-%d %H:%M} to {new:%Y-%m-%d %H:%M}"


def rejected(text: str, zone: str) -> TimestampError:
    with pytest.raises(TimestampError) as caught:
        to_utc(text, timezone=zone, now=NOW)
    return caught.value


@pytest.mark.parametrize("year", YEARS)
@pytest.mark.parametrize("zone", DST_ZONES)
def test_dst_gap_is_rejected_and_its_edges_convert(zone: str, year: int) -> None:
    (change, before, after), _ = gaps_and_overlaps(zone, year)
    start, end = wall(change, before), wall(change, after)  # [start, end) never happens

    for inside in (start, start + (end - start) / 2, end - timedelta(seconds=1)):
        error = rejected(inside.isoformat(), zone)
        assert error.code == "nonexistent_local_time"
        assert error.field == "timestamp"
        assert f"does not exist in {zone}" in error.message
        assert "DST gap" in error.message
        assert clocks_change(start, end) in error.message

    last_second_before = start - timedelta(seconds=1)
    assert to_utc(last_second_before.isoformat(), timezone=zone, now=NOW) == change - timedelta(
        seconds=1
    )
    assert to_utc(end.isoformat(), timezone=zone, now=NOW) == change


@pytest.mark.parametrize("year", YEARS)
@pytest.mark.parametrize("zone", DST_ZONES)
def test_dst_overlap_is_rejected_and_its_edges_convert(zone: str, year: int) -> None:
    _, (change, before, after) = gaps_and_overlaps(zone, year)
    start, end = wall(change, after), wall(change, before)  # [start, end) happens twice

    for inside in (start, start + (end - start) / 2, end - timedelta(seconds=1)):
        error = rejected(inside.isoformat(), zone)
        assert error.code == "ambiguous_local_time"
        assert error.field == "timestamp"
        assert f"is ambiguous in {zone}" in error.message
        assert "DST overlap" in error.message
        assert clocks_change(end, start) in error.message

    # Just outside the overlap there is one reading; inside it an explicit offset picks one.
    just_before = start - timedelta(seconds=1)
    assert to_utc(just_before.isoformat(), timezone=zone, now=NOW) == change - (
        before - after
    ) - timedelta(seconds=1)
    assert to_utc(end.isoformat(), timezone=zone, now=NOW) == change + (before - after)
    first = datetime.combine(start.date(), start.time(), tzinfo=UTC) - before
    second = datetime.combine(start.date(), start.time(), tzinfo=UTC) - after
    assert to_utc(start.isoformat() + offset_text(before), timezone=zone, now=NOW) == first
    assert to_utc(start.isoformat() + offset_text(after), timezone=zone, now=NOW) == second
    assert second - first == before - after


def offset_text(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def test_lord_howe_gap_and_overlap_last_thirty_minutes() -> None:
    for year in YEARS:
        (gap, gap_before, gap_after), (_, ov_before, ov_after) = gaps_and_overlaps(
            "Australia/Lord_Howe", year
        )
        assert gap_after - gap_before == timedelta(minutes=30)
        assert ov_before - ov_after == timedelta(minutes=30)
        # A quarter hour after the gap's start is skipped; 30 minutes after it exists.
        start = wall(gap, gap_before)
        assert rejected(
            (start + timedelta(minutes=15)).isoformat(), "Australia/Lord_Howe"
        ).code == ("nonexistent_local_time")
        assert (
            to_utc(
                (start + timedelta(minutes=30)).isoformat(), timezone="Australia/Lord_Howe", now=NOW
            )
            == gap
        )


@pytest.mark.parametrize(("zone", "offset"), FIXED_ZONES.items())
def test_zones_without_dst_convert_every_hour_of_the_year(zone: str, offset: timedelta) -> None:
    for year in YEARS:
        assert clock_changes(zoneinfo(zone), year) == []
    local = datetime(2024, 1, 1)
    while local.year == 2024:
        expected = local.replace(tzinfo=UTC) - offset
        assert to_utc(local.isoformat(), timezone=zone, now=NOW) == expected
        local += timedelta(hours=1, minutes=7)


PROPERTY_ZONES = [*DST_ZONES, *FIXED_ZONES, "Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"]


@settings(max_examples=400, deadline=None)
@given(
    zone=st.sampled_from(PROPERTY_ZONES),
    moment=st.datetimes(
        min_value=datetime(2019, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
)
def test_local_time_of_any_instant_converts_back_unless_ambiguous(
    zone: str, moment: datetime
) -> None:
    local = moment.astimezone(zoneinfo(zone)).replace(tzinfo=None)
    reference = zoneinfo(zone)
    ambiguous = (
        local.replace(tzinfo=reference, fold=0).utcoffset()
        != local.replace(tzinfo=reference, fold=1).utcoffset()
    )
    if ambiguous:
        assert rejected(local.isoformat(), zone).code == "ambiguous_local_time"
    else:
        assert to_utc(local.isoformat(), timezone=zone, now=NOW) == moment


# -- the future bound -------------------------------------------------------------------------

SERVER_NOW = datetime(2024, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timestamp", "accepted"),
    [
        ("2024-12-01T12:04:00Z", True),
        ("2024-12-01T12:05:00Z", True),  # exactly 5 minutes: not "more than"
        ("2024-12-01T12:05:00.000001Z", False),
        ("2024-12-01T12:06:00Z", False),
        ("2024-12-01T13:04:00+01:00", True),
        ("2024-12-01T13:06:00+01:00", False),
        ("2019-01-01T00:00:00Z", True),  # the past has no bound
    ],
)
def test_future_bound_with_injected_now(timestamp: str, accepted: bool) -> None:
    if accepted:
        assert to_utc(timestamp, now=SERVER_NOW) <= SERVER_NOW + DEFAULT_FUTURE_SKEW
    else:
        with pytest.raises(TimestampError) as caught:
            to_utc(timestamp, now=SERVER_NOW)
        assert caught.value.code == "timestamp_in_future"
        assert caught.value.field == "timestamp"
        assert "more than 5 minutes" in caught.value.message


def test_future_bound_applies_to_local_times() -> None:
    assert to_utc("2024-12-01T13:04:00", timezone="Europe/Berlin", now=SERVER_NOW) == datetime(
        2024, 12, 1, 12, 4, tzinfo=UTC
    )
    with pytest.raises(TimestampError) as caught:
        to_utc("2024-12-01T13:06:00", timezone="Europe/Berlin", now=SERVER_NOW)
    assert caught.value.code == "timestamp_in_future"


def test_future_skew_is_configurable() -> None:
    with pytest.raises(TimestampError) as caught:
        to_utc("2024-12-01T12:00:31Z", now=SERVER_NOW, future_skew=timedelta(seconds=30))
    assert caught.value.code == "timestamp_in_future"
    assert "more than 30 seconds" in caught.value.message
    late = to_utc("2024-12-01T12:59:00Z", now=SERVER_NOW, future_skew=timedelta(hours=1))
    assert late == datetime(2024, 12, 1, 12, 59, tzinfo=UTC)


def test_now_may_be_given_in_any_zone() -> None:
    tokyo_now = SERVER_NOW.astimezone(ZoneInfo("Asia/Tokyo"))
    assert to_utc("2024-12-01T12:04:00Z", now=tokyo_now) == datetime(2024, 12, 1, 12, 4, tzinfo=UTC)
    with pytest.raises(TimestampError):
        to_utc("2024-12-01T12:06:00Z", now=tokyo_now)


def test_now_defaults_to_the_server_clock() -> None:
    soon = datetime.now(UTC) + timedelta(minutes=1)
    assert to_utc(format_utc(soon)) == soon
    with pytest.raises(TimestampError) as caught:
        to_utc(format_utc(datetime.now(UTC) + timedelta(minutes=10)))
    assert caught.value.code == "timestamp_in_future"


# -- format_utc and get_zone ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 12, 1, 7, 30, tzinfo=UTC), "2024-12-01T07:30:00Z"),
        (datetime(2024, 12, 1, 7, 30, 0, 123456, tzinfo=UTC), "2024-12-01T07:30:00.123456Z"),
        (datetime(2024, 12, 1, 7, 30, 0, 1, tzinfo=UTC), "2024-12-01T07:30:00.000001Z"),
        (datetime(2024, 12, 1, 8, 30, tzinfo=ZoneInfo("Europe/Berlin")), "2024-12-01T07:30:00Z"),
        (datetime(2025, 1, 1, 5, 0, tzinfo=get_zone("Asia/Kathmandu")), "2024-12-31T23:15:00Z"),
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00Z"),
    ],
)
def test_format_utc_is_rfc3339_with_z(moment: datetime, text: str) -> None:
    assert format_utc(moment) == text


def test_format_utc_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        format_utc(datetime(2024, 12, 1, 7, 30))


def test_get_zone_returns_the_cached_zone_under_its_canonical_name() -> None:
    berlin = get_zone("Europe/Berlin")
    assert get_zone("Europe/Berlin") is berlin
    assert get_zone("europe/BERLIN").key == "Europe/Berlin"
    assert datetime(2024, 7, 1, 9, 30, tzinfo=berlin).utcoffset() == timedelta(hours=2)


def test_get_zone_rejects_unknown_names() -> None:
    with pytest.raises(TimestampError) as caught:
        get_zone("Atlantis/Capital")
    assert caught.value.code == "unknown_timezone"
    assert caught.value.field == "timezone"
    assert "not a known IANA time zone name" in caught.value.message
    assert "Atlantis" not in caught.value.message  # input is never repeated


def test_messages_cut_long_input_short() -> None:
    with pytest.raises(TimestampError) as caught:
        to_utc("9" * 10_000, now=NOW)
    assert caught.value.code == "invalid_timestamp"
    assert len(caught.value.message) < 300

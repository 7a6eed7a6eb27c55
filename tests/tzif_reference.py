"""An independent reading of pytz's zone files, for checking ``functions.timestamps``.

It parses the TZif file (RFC 8536) that pytz bundles for a zone by hand: the 64-bit transition
table, its local time types, and the POSIX TZ footer that governs instants after the last
transition. It shares nothing with ``zoneinfo`` but the bytes, and answers in whole seconds:
the UTC offset at an instant, and every instant at which the zone's clocks show a wall time
(none in a gap, two in an overlap).
"""

from __future__ import annotations

import bisect
import functools
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

import pytz

_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Period:
    """A local time type: UTC offset in seconds, abbreviation, daylight-saving flag."""

    offset: int
    abbreviation: str
    is_dst: bool


@dataclass(frozen=True)
class _Rule:
    """``Mm.w.d/time``: day ``d`` (0 = Sunday) of week ``w`` (5 = last) of month ``m``."""

    month: int
    week: int
    weekday: int
    seconds: int  # local time of day of the change; may be negative or beyond 24 hours


@dataclass(frozen=True)
class _Footer:
    standard: Period
    daylight: Period | None
    start: _Rule | None  # into daylight time, read in standard time
    end: _Rule | None  # back to standard time, read in daylight time


@dataclass(frozen=True)
class Zone:
    name: str
    transitions: tuple[int, ...]
    """UTC instants (seconds since the epoch) at which a period starts."""
    periods: tuple[Period, ...]
    """The period that starts at each transition."""
    first: Period
    """The period before the first transition (time type 0, as RFC 8536 says)."""
    footer: _Footer | None

    def period_at(self, instant: int) -> Period:
        """The period in force at ``instant`` (UTC seconds since the epoch)."""
        if self.footer is not None and (not self.transitions or instant >= self.transitions[-1]):
            return _footer_period(self.footer, instant)
        index = bisect.bisect_right(self.transitions, instant)
        return self.periods[index - 1] if index else self.first

    @functools.cached_property
    def offsets(self) -> frozenset[int]:
        """Every UTC offset the zone ever uses."""
        found = {self.first.offset, *(period.offset for period in self.periods)}
        if self.footer is not None:
            found.add(self.footer.standard.offset)
            if self.footer.daylight is not None:
                found.add(self.footer.daylight.offset)
        return frozenset(found)

    def readings(self, wall: int) -> list[int]:
        """Every UTC instant at which the zone's clocks show ``wall`` (seconds since the epoch
        of the naive wall time read as if it were UTC)."""
        return sorted(
            wall - offset
            for offset in self.offsets
            if self.period_at(wall - offset).offset == offset
        )


def seconds(moment: datetime) -> int:
    """Whole seconds since the epoch of a naive wall time or an aware instant."""
    naive = moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    return (naive.replace(microsecond=0) - _EPOCH) // _ONE_SECOND


def wall_time(wall: int) -> datetime:
    """The naive datetime of ``wall`` seconds since the epoch."""
    return _EPOCH + wall * _ONE_SECOND


def instant(utc: int) -> datetime:
    return wall_time(utc).replace(tzinfo=UTC)


@functools.cache
def load(name: str) -> Zone:
    """The zone ``name`` as its TZif file in pytz's database says."""
    with pytz.open_resource(name) as file:  # type: ignore[attr-defined]
        data: bytes = file.read()
    counts = _counts(data, 0)
    if data[4:5] < b"2":
        raise ValueError(f"{name}: TZif version 1 has no 64-bit data")
    isut, isstd, leap, times, types, chars = counts
    start = 44 + times * 5 + types * 6 + chars + leap * 8 + isstd + isut  # skip the v1 block
    isut, isstd, leap, times, types, chars = _counts(data, start)
    at = start + 44
    transitions = struct.unpack_from(f">{times}q", data, at)
    at += times * 8
    indexes = struct.unpack_from(f">{times}B", data, at)
    at += times
    raw_types = [struct.unpack_from(">lBB", data, at + 6 * i) for i in range(types)]
    at += types * 6
    names = data[at : at + chars]
    at += chars + leap * 12 + isstd + isut
    local_types = [
        Period(offset, names[index : names.index(b"\0", index)].decode(), bool(dst))
        for offset, dst, index in raw_types
    ]
    footer_text = data[at:].strip(b"\n").decode()
    return Zone(
        name=name,
        transitions=tuple(transitions),
        periods=tuple(local_types[index] for index in indexes),
        first=local_types[0],
        footer=_parse_footer(footer_text) if footer_text else None,
    )


def _counts(data: bytes, at: int) -> tuple[int, ...]:
    if data[at : at + 4] != b"TZif":
        raise ValueError("not a TZif file")
    return struct.unpack_from(">6l", data, at + 20)


_NAME = r"(<[^>]+>|[A-Za-z]+)"
_TIME = r"([+-]?\d+(?::\d+){0,2})"
_FOOTER = re.compile(rf"{_NAME}{_TIME}(?:{_NAME}{_TIME}?,([^,]+),([^,]+))?")
_RULE = re.compile(rf"M(\d+)\.(\d)\.(\d)(?:/{_TIME})?")


def _parse_footer(text: str) -> _Footer:
    match = _FOOTER.fullmatch(text)
    if match is None:
        raise ValueError(f"unexpected TZ footer {text!r}")
    std_name, std_time, dst_name, dst_time, start, end = match.groups()
    # POSIX offsets count hours west of Greenwich: "EST5" is UTC-05:00.
    standard = Period(-_clock(std_time), std_name.strip("<>"), False)
    if dst_name is None:
        return _Footer(standard, None, None, None)
    dst_offset = -_clock(dst_time) if dst_time else standard.offset + 3600
    return _Footer(
        standard, Period(dst_offset, dst_name.strip("<>"), True), _rule(start), _rule(end)
    )


def _rule(text: str) -> _Rule:
    match = _RULE.fullmatch(text)
    if match is None:
        raise ValueError(f"unexpected TZ rule {text!r}")  # tzdata writes only the M form
    month, week, weekday, time = match.groups()
    return _Rule(int(month), int(week), int(weekday), 7200 if time is None else _clock(time))


def _clock(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    parts = [int(part) for part in text.lstrip("+-").split(":")]
    parts += [0] * (3 - len(parts))
    return sign * (parts[0] * 3600 + parts[1] * 60 + parts[2])


def _footer_period(footer: _Footer, at: int) -> Period:
    if footer.daylight is None:
        return footer.standard
    year = _civil_year(at // 86400)
    changes = [*footer_changes(footer, year - 1), *footer_changes(footer, year)]
    changes += footer_changes(footer, year + 1)
    latest = [period for moment, period in sorted(changes) if moment <= at]
    return latest[-1]


@functools.lru_cache(maxsize=4096)
def footer_changes(footer: _Footer, year: int) -> list[tuple[int, Period]]:
    """The UTC instants at which ``footer``'s rules change the clocks in ``year``, each with
    the period that starts there."""
    if footer.daylight is None or footer.start is None or footer.end is None:
        return []
    start, end = footer.start, footer.end
    return [
        (_rule_day(start, year) * 86400 + start.seconds - footer.standard.offset, footer.daylight),
        (_rule_day(end, year) * 86400 + end.seconds - footer.daylight.offset, footer.standard),
    ]


def _rule_day(rule: _Rule, year: int) -> int:
    """Days since the epoch of the day ``rule`` names in ``year``."""
    first = _days_from_civil(year, rule.month, 1)
    first_weekday = (first + 4) % 7  # 1970-01-01 was a Thursday; 0 = Sunday
    day = 1 + (rule.weekday - first_weekday) % 7 + 7 * (rule.week - 1)
    while day > _month_length(year, rule.month):
        day -= 7
    return first + day - 1


def _month_length(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, 0 and 10000 included)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_year(days: int) -> int:
    """The year of the day ``days`` since 1970-01-01."""
    year = 1970 + days // 366
    while _days_from_civil(year + 1, 1, 1) <= days:
        year += 1
    return year


_ONE_SECOND = datetime(1970, 1, 1, 0, 0, 1) - _EPOCH

"""Timestamps to UTC under the ingestion rules (pytz time zones).

Rules, shared by ``batch_import`` and ``convert_timestamps``:

- A timestamp with an explicit offset or ``Z`` is taken as is and converted to UTC.
- A timestamp without offset is read in ``timezone`` (IANA name) if given, else in
  ``default_timezone``, else rejected (``missing_timezone``). Local times inside a DST gap
  (``nonexistent_local_time``) or overlap (``ambiguous_local_time``) are rejected, never guessed.
- A zone name that is given is always checked, even when the offset makes it unused: a typo
  is a bug the caller wants to hear about (``unknown_timezone``). Names match case-insensitively.
  A batch should check its ``default_timezone`` once with ``get_zone`` before its events.
- More than ``future_skew`` (5 minutes) after ``now`` is rejected (``timestamp_in_future``).

Accepted text (RFC 3339 plus common ISO 8601 relaxations), anything else is
``invalid_timestamp``::

    YYYY-MM-DD ("T" | "t" | " ") hh:mm [":" ss [("." | ",") 1-9 digits]] ["Z" | "z" | ±hh[[:]mm]]

A date and a time of day are both required; digits past microseconds are truncated; offsets
reach ±23:59. Rejected: bare dates, week and ordinal dates, the basic format
(``20241201T073000Z``), hour 24, leap second 60, offsets with seconds, and instants outside
the years 0001-9999 once in UTC. Output (``format_utc``) is RFC 3339 ending in ``Z``.
Errors carry ``field``: ``timezone`` or ``default_timezone`` for a bad zone name, else
``timestamp`` (``missing_timezone`` included). Messages quote a timestamp only once it has the
shape of a date and time, and name only known zones; text that is neither (which could be any
data a caller sent by mistake) is never repeated.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from calendar import monthrange
from datetime import UTC, datetime, timedelta, tzinfo

import pytz

from functions.errors import TimestampError

__all__ = ["DEFAULT_FUTURE_SKEW", "format_utc", "get_zone", "to_utc"]

DEFAULT_FUTURE_SKEW = timedelta(minutes=5)
"""How far ahead of ``now`` a timestamp may be; the table's check constraint uses the same."""

# A gate before datetime.fromisoformat, which alone is too lenient: it reads "07:30.5" as half a
# second, takes any character between date and time, a space before the offset, and "+05:60" as
# +06:00. fromisoformat then checks the ranges of the date and time fields.
_DATE_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?"
_SHAPE = re.compile(_DATE_TIME + r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)?")
_LOOSE_SHAPE = re.compile(_DATE_TIME + r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?")
_BARE_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SHAPE_MATCH = _SHAPE.fullmatch
_FROM_ISO = datetime.fromisoformat
_EXAMPLE = "2024-12-01T07:30:00Z"
_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)
_JSON_TYPES = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "an array",
    dict: "an object",
}


def to_utc(
    timestamp: str,
    *,
    timezone: str | None = None,
    default_timezone: str | None = None,
    now: datetime | None = None,
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> datetime:
    """Convert ``timestamp`` to an aware UTC datetime, or raise ``TimestampError``.

    ``now`` (aware; default: the current time) is the reference for the future bound; a batch
    should pass one ``now`` for all its events. The error's ``field`` is ``"timestamp"``,
    ``"timezone"`` or ``"default_timezone"``.
    """
    parsed = _parse(timestamp)
    zone = None if timezone is None else _zone(timezone, "timezone")
    default = None if default_timezone is None else _zone(default_timezone, "default_timezone")

    if parsed.tzinfo is not None:
        try:
            moment = parsed.astimezone(UTC)
        except OverflowError:
            raise _out_of_range(timestamp) from None
    else:
        local_zone = zone if zone is not None else default
        if local_zone is None:
            raise TimestampError(
                f"{timestamp} has no UTC offset and no time zone was given; add an offset "
                "(such as Z or +01:00), a timezone or a default_timezone",
                code="missing_timezone",
                field="timestamp",
            )
        moment = _localize(parsed, local_zone, timestamp)

    if now is None:
        now = datetime.now(UTC)
    if moment - now > future_skew:
        raise TimestampError(
            f"{timestamp} is in the future: more than {_duration(future_skew)} ahead of the "
            "server clock",
            code="timestamp_in_future",
            field="timestamp",
        )
    return moment


def utc_or_none(
    timestamp: object, zone: pytz.BaseTzInfo | None, latest: datetime
) -> datetime | None:
    """What ``to_utc`` returns for ``timestamp`` read in ``zone`` (the event's or the batch's
    zone, already found with ``get_zone``), or None where ``to_utc`` would raise. ``latest``
    is the latest instant allowed: ``to_utc``'s ``now + future_skew``.

    The quick route of a valid event: no zone lookups, no messages. A caller that gets None
    calls ``to_utc`` for the error, so only the accepting path is duplicated here.
    """
    if not isinstance(timestamp, str) or _SHAPE_MATCH(timestamp) is None:
        return None
    text = timestamp
    if text[10] == "t" or text[-1] == "z":
        text = text.upper()
    try:
        if text[-1] == "Z":
            moment = _FROM_ISO(text)  # tzinfo is datetime.UTC itself
        elif text[-6] in "+-":
            # A ±hh:mm offset (in any other shape the sixth character from the end is a digit,
            # ":", "T" or " "): the local part less the offset, without a tzinfo per event.
            suffix = text[-6:]
            offset = _SUFFIX_OFFSETS.get(suffix)
            if offset is None:
                offset = _suffix_offset(suffix)
            moment = _UTC_MIN + (_FROM_ISO(text[:-6]) - offset - _NAIVE_MIN)
        else:
            parsed = _FROM_ISO(text)
            if parsed.tzinfo is not None:
                moment = parsed.astimezone(UTC)
            elif zone is None:
                return None
            else:
                steady = _steady_offset(zone, parsed)
                moment = (
                    # Near a clock change: _localize without its messages (an error here is
                    # worded by to_utc on the caller's full route).
                    zone.localize(parsed, is_dst=None).astimezone(UTC)
                    if steady is None
                    else _UTC_MIN + (parsed - steady - _NAIVE_MIN)
                )
    except (ValueError, OverflowError, pytz.InvalidTimeError):
        return None
    if moment > latest:
        return None
    return moment


_UTC_MIN = datetime.min.replace(tzinfo=UTC)
_NAIVE_MIN = datetime.min
# A naive UTC time t becomes aware as _UTC_MIN + (t - _NAIVE_MIN): two C operations instead of
# t.replace(tzinfo=UTC), whose keyword parsing costs ten times as much.
_SUFFIX_OFFSETS: dict[str, timedelta] = {}
"""The offsets of the ``±hh:mm`` suffixes seen so far (at most 2 x 24 x 60 of them)."""


def _suffix_offset(suffix: str) -> timedelta:
    offset = timedelta(hours=int(suffix[1:3]), minutes=int(suffix[4:6]))
    if suffix[0] == "-":
        offset = -offset
    _SUFFIX_OFFSETS[suffix] = offset
    return offset


def format_utc(moment: datetime) -> str:
    """RFC 3339 in UTC ending in ``Z``; microseconds only when non-zero.

    ``moment`` must be aware (any zone); a naive datetime raises ``ValueError``.
    """
    if moment.tzinfo is None:
        raise ValueError("format_utc needs an aware datetime")
    # isoformat() of a UTC datetime ends in "+00:00" and omits zero microseconds.
    return moment.astimezone(UTC).isoformat()[:-6] + "Z"


@functools.lru_cache(maxsize=1024)
def get_zone(name: str) -> pytz.BaseTzInfo:
    """The pytz zone called ``name`` (IANA, case-insensitive), cached.

    Unknown names raise ``TimestampError`` with code ``unknown_timezone`` and field ``timezone``.
    """
    try:
        return pytz.timezone(name)
    except pytz.UnknownTimeZoneError:
        raise TimestampError(
            _unknown_zone_message(name), code="unknown_timezone", field="timezone"
        ) from None


def _parse(timestamp: object) -> datetime:
    """The datetime ``timestamp`` spells, naive when it has no offset."""
    if not isinstance(timestamp, str):
        raise TimestampError(
            f"timestamp must be a string such as {_EXAMPLE}, not {_json_type(timestamp)}",
            field="timestamp",
        )
    if _SHAPE.fullmatch(timestamp) is None:
        raise TimestampError(_malformed_message(timestamp), field="timestamp")
    text = timestamp
    if text[10] == "t" or text[-1] == "z":  # RFC 3339 allows lower case; fromisoformat does not
        text = text.upper()
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise TimestampError(_invalid_field_message(timestamp), field="timestamp") from None


def _zone(name: object, field: str) -> pytz.BaseTzInfo:
    """``get_zone`` for the input called ``field``, whose errors then name that field."""
    if not isinstance(name, str):
        raise TimestampError(
            f"{field} must be a string naming an IANA time zone such as Europe/Berlin, "
            f"not {_json_type(name)}",
            code="unknown_timezone",
            field=field,
        )
    try:
        return get_zone(name)
    except TimestampError as error:
        error.field = field
        raise


def _localize(local: datetime, zone: pytz.BaseTzInfo, timestamp: str) -> datetime:
    """Read the naive ``local`` as wall-clock time in ``zone``, in UTC."""
    try:
        offset = _steady_offset(zone, local)
        if offset is not None:
            return (local - offset).replace(tzinfo=UTC)
        return zone.localize(local, is_dst=None).astimezone(UTC)
    except pytz.NonExistentTimeError:
        raise TimestampError(
            _transition_message(local, zone, timestamp),
            code="nonexistent_local_time",
            field="timestamp",
        ) from None
    except pytz.AmbiguousTimeError:
        raise TimestampError(
            _transition_message(local, zone, timestamp),
            code="ambiguous_local_time",
            field="timestamp",
        ) from None
    except OverflowError:
        raise _out_of_range(timestamp) from None


def _steady_offset(zone: pytz.BaseTzInfo, local: datetime) -> timedelta | None:
    """The UTC offset of ``local`` in ``zone`` when no clock change is near it, else None.

    ``zone.localize(local, is_dst=None)`` costs about 25 us: it tries the zone's periods a day
    before and after ``local`` and normalises each candidate. When no transition of the zone
    falls within a day of ``local`` (compared the way pytz compares, naive local against its
    UTC transition times) both tries land in the same period, the local time is that period's
    offset away from UTC, and it is neither in a gap nor in an overlap: pytz would return
    exactly ``local - offset``. Found here with two bisections of pytz's own transition table;
    every other case (near a change, zones without a table, the ends of the calendar) is left
    to ``localize``, so gaps and overlaps are detected exactly as before.
    """
    transitions = getattr(zone, "_utc_transition_times", None)
    periods = getattr(zone, "_transition_info", None)
    if transitions is None or periods is None:
        return None
    try:
        low, high = local - _DAY, local + _DAY
    except OverflowError:
        return None
    index = bisect_right(transitions, low)
    if index != bisect_right(transitions, high):
        return None
    offset: timedelta = periods[max(0, index - 1)][0]
    return offset


# Everything below runs only on the error path.


def _transition_message(local: datetime, zone: pytz.BaseTzInfo, timestamp: str) -> str:
    """Say which clock change makes ``local`` non-existent or ambiguous in ``zone``."""
    name = zone.zone
    change = _find_transition(local, zone)
    if change is None:  # not expected: pytz found a gap or overlap, so there is a change
        return f"{timestamp} does not name a single instant in {name} (DST gap or overlap)"
    before, after = change
    offset_before, offset_after = _offset(before), _offset(after)
    kind = "DST " if before.dst() != after.dst() else ""
    wall_after = after.replace(tzinfo=None)
    clocks = _clock_change(wall_after - offset_after + offset_before, wall_after)
    names = f"{before.tzname()} to {after.tzname()}"
    if offset_after > offset_before:
        return (
            f"{timestamp} does not exist in {name}: it falls in the {kind}gap when clocks "
            f"jump forward {clocks} ({names})"
        )
    return (
        f"{timestamp} is ambiguous in {name}: it falls in the {kind}overlap when clocks fall "
        f"back {clocks} ({names}), so it happens twice; add an explicit UTC offset "
        f"({_format_offset(offset_before)} or {_format_offset(offset_after)}) to say which"
    )


def _find_transition(local: datetime, zone: tzinfo) -> tuple[datetime, datetime] | None:
    """The zone's local times one second before and at the clock change ``local`` falls in."""
    change = _table_transition(local, zone)
    if change is None:
        return _searched_transition(local, zone)
    return (change - _SECOND).astimezone(zone), change.astimezone(zone)


def _table_transition(local: datetime, zone: tzinfo) -> datetime | None:
    """The clock change near ``local`` read from pytz's own transition table (UTC), when that
    table lists exactly one change of the UTC offset within a day of ``local`` (compared as
    pytz compares, naive local against UTC); else None. A few microseconds where
    :func:`_searched_transition` takes about 60."""
    transitions = getattr(zone, "_utc_transition_times", None)
    periods = getattr(zone, "_transition_info", None)
    if transitions is None or periods is None:
        return None
    try:
        first = bisect_right(transitions, local - _DAY)
        last = bisect_right(transitions, local + _DAY)
    except OverflowError:
        return None
    changes = [
        index for index in range(max(first, 1), last) if periods[index][0] != periods[index - 1][0]
    ]
    if len(changes) != 1:
        return None
    moment: datetime = transitions[changes[0]]
    return _UTC_MIN + (moment - _NAIVE_MIN)


def _searched_transition(local: datetime, zone: tzinfo) -> tuple[datetime, datetime] | None:
    """:func:`_find_transition` by bisection over the zone's offsets, second by second."""
    # Clock changes fall on whole seconds; offsets differ by less than a day.
    as_utc = local.replace(tzinfo=UTC, microsecond=0)
    offsets = {_offset_at(as_utc + day, zone) for day in (-_DAY, _DAY)}
    if len(offsets) != 2:
        return None
    small, large = sorted(offsets)
    low = as_utc - large  # the change lies in (low, low + hi seconds]
    old_offset = _offset_at(low, zone)
    lo, hi = 0, int((large - small).total_seconds()) + 1
    if _offset_at(low + hi * _SECOND, zone) == old_offset:
        return None
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if _offset_at(low + middle * _SECOND, zone) == old_offset:
            lo = middle
        else:
            hi = middle
    change = low + hi * _SECOND
    return (change - _SECOND).astimezone(zone), change.astimezone(zone)


def _clock_change(start: datetime, end: datetime) -> str:
    """``from 02:00 to 03:00 on 2024-03-10``, with both dates when the change spans midnight."""
    if start.date() == end.date():
        return f"from {_wall(start)} to {_wall(end)} on {start.date().isoformat()}"
    return (
        f"from {start.date().isoformat()} {_wall(start)} to {end.date().isoformat()} {_wall(end)}"
    )


def _wall(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S" if moment.second else "%H:%M")


def _offset_at(utc_moment: datetime, zone: tzinfo) -> timedelta:
    return _offset(utc_moment.astimezone(zone))


def _offset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    if offset is None:  # not reachable for an aware datetime; keeps mypy informed
        raise ValueError("naive datetime has no UTC offset")
    return offset


def _format_offset(offset: timedelta) -> str:
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _out_of_range(timestamp: str) -> TimestampError:
    return TimestampError(
        f"{timestamp} is out of range: in UTC it falls outside the years 0001-9999",
        field="timestamp",
    )


def _unknown_zone_message(name: str) -> str:
    if name == "":
        return "the time zone name is empty; give an IANA name such as Europe/Berlin"
    # The name itself is not repeated: it could be anything a caller sent by mistake.
    message = "the time zone name is not a known IANA time zone name such as Europe/Berlin"
    guess = _zone_names().get(name.strip().replace(" ", "_").lower())
    if guess is not None:
        message += f"; did you mean {guess}?"
    return message


@functools.cache
def _zone_names() -> dict[str, str]:
    """Zone names by their lower-case spelling (built on first use: it stats every zone file)."""
    return {zone.lower(): zone for zone in pytz.all_timezones}


def _malformed_message(timestamp: str) -> str:
    if timestamp == "":
        return f"timestamp is empty; expected a date and a time such as {_EXAMPLE}"
    if _LOOSE_SHAPE.fullmatch(timestamp):
        return _invalid_field_message(timestamp)
    # From here on the text is not repeated: it could be anything a caller sent by mistake.
    if _BARE_DATE.fullmatch(timestamp):
        return (
            "timestamp is a date without a time of day; expected a date and a time such as "
            f"{_EXAMPLE}"
        )
    return (
        "timestamp is not an ISO 8601 date and time; expected "
        f"YYYY-MM-DDThh:mm[:ss[.fraction]] with an optional Z or ±hh:mm offset, such as {_EXAMPLE}"
    )


def _invalid_field_message(timestamp: str) -> str:
    """Name the out-of-range part of a well-shaped timestamp that fromisoformat refused."""
    year, month, day = int(timestamp[0:4]), int(timestamp[5:7]), int(timestamp[8:10])
    hour, minute = int(timestamp[11:13]), int(timestamp[14:16])
    second = int(timestamp[17:19]) if timestamp[16:17] == ":" else 0
    if year == 0:
        problem = "there is no year 0000"
    elif not 1 <= month <= 12:
        problem = f"month {month:02d} does not exist"
    elif not 1 <= day <= monthrange(year, month)[1]:
        problem = f"{year:04d}-{month:02d} has no day {day:02d}"
    elif hour == 24:
        problem = "hour 24 is not accepted; use 00:00 of the next day"
    elif hour > 24 or minute > 59:
        problem = "the time of day is out of range"
    elif second == 60:
        problem = "leap seconds (second 60) are not supported"
    elif second > 60:
        problem = "the seconds are out of range"
    else:
        problem = "the UTC offset is out of range (at most ±23:59)"
    return f"{timestamp} is not a valid date and time: {problem}"


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = seconds // 60
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)

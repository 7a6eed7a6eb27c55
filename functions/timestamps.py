"""Timestamps to UTC under the ingestion rules (IANA time zones, exact to the second).

Rules, shared by ``batch_import`` and ``convert_timestamps``:

- A timestamp with an explicit offset or ``Z`` is taken as is and converted to UTC.
- A timestamp without offset is read in ``timezone`` (IANA name) if given, else in
  ``default_timezone``, else rejected (``missing_timezone``). Local times inside a clock
  change's gap (``nonexistent_local_time``) or overlap (``ambiguous_local_time``) are rejected,
  never guessed.
- A zone name that is given is always checked, even when the offset makes it unused: a typo
  is a bug the caller wants to hear about (``unknown_timezone``). Names match case-insensitively.
  ``Factory``, tzdata's zone for "local time not set", names no place's clock and is refused
  (``unusable_timezone``). A batch should check its ``default_timezone`` once with ``get_zone``
  before its events.
- More than ``future_skew`` (5 minutes) after ``now`` is rejected (``timestamp_in_future``).

Zones: pytz is the project's zone database (its release fixes which IANA rules apply), but its
tzinfo classes round UTC offsets to whole minutes (Africa/Monrovia's -00:44:30 until 1972 becomes
-00:44) and apply no daylight saving after 2037. So ``get_zone`` builds the standard library's
``zoneinfo.ZoneInfo`` from the TZif file pytz bundles (``pytz.open_resource``): offsets to the
second, and the file's POSIX TZ footer for instants after its last listed transition. A local
time is read the PEP 495 way: its ``fold=0`` and ``fold=1`` readings agree outside clock changes;
where they differ it lies in a gap (the reading does not convert back to the same wall time) or
in an overlap.

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
from calendar import monthrange
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytz

from functions.errors import TimestampError

__all__ = ["DEFAULT_FUTURE_SKEW", "format_utc", "get_zone", "to_utc", "utc_or_none"]

DEFAULT_FUTURE_SKEW = timedelta(minutes=5)
"""How far ahead of ``now`` a timestamp may be; the table's check constraint uses the same."""

# A gate before datetime.fromisoformat, which alone is too lenient: it reads "07:30.5" as half a
# second, takes any character between date and time, a space before the offset, and "+05:60" as
# +06:00. fromisoformat then checks the ranges of the date and time fields.
_DATE_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?"
_SHAPE = re.compile(_DATE_TIME + r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)?")
_LOOSE_SHAPE = re.compile(_DATE_TIME + r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?")
_BARE_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EXAMPLE = "2024-12-01T07:30:00Z"
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
    moment = _instant(parsed, zone if zone is not None else default, timestamp)
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


def utc_or_none(timestamp: object, zone: ZoneInfo | None, latest: datetime) -> datetime | None:
    """What ``to_utc`` returns for ``timestamp`` read in ``zone`` (the event's or the batch's
    zone, already found with ``get_zone``), or None where ``to_utc`` would raise. ``latest``
    is the latest instant allowed: ``to_utc``'s ``now + future_skew``."""
    if not isinstance(timestamp, str):
        return None
    try:
        moment = _instant(_parse(timestamp), zone, timestamp)
    except TimestampError:
        return None
    return None if moment > latest else moment


def format_utc(moment: datetime) -> str:
    """RFC 3339 in UTC ending in ``Z``; microseconds only when non-zero.

    ``moment`` must be aware (any zone); a naive datetime raises ``ValueError``.
    """
    if moment.tzinfo is None:
        raise ValueError("format_utc needs an aware datetime")
    # isoformat() of a UTC datetime ends in "+00:00" and omits zero microseconds.
    return moment.astimezone(UTC).isoformat()[:-6] + "Z"


@functools.lru_cache(maxsize=1024)
def get_zone(name: str) -> ZoneInfo:
    """The zone called ``name`` (IANA, case-insensitive; its ``key`` is the canonical name),
    cached.

    Unknown names raise ``TimestampError`` with code ``unknown_timezone``, ``Factory`` one with
    code ``unusable_timezone``; both with field ``timezone``.
    """
    try:
        canonical = pytz.timezone(name).zone
    except pytz.UnknownTimeZoneError:
        canonical = None
    if canonical is None:
        if name.lower() == "factory":  # in pytz's files, but not among its zone names
            raise TimestampError(
                "Factory is not a usable time zone: tzdata gives that name to machines whose "
                "local time zone was never set, so it names no place's clock; give the IANA "
                "name of the place, such as Europe/Berlin",
                code="unusable_timezone",
                field="timezone",
            )
        raise TimestampError(_unknown_zone_message(name), code="unknown_timezone", field="timezone")
    return _zone_from_database(canonical)


@functools.cache
def _zone_from_database(name: str) -> ZoneInfo:
    """The zone ``name`` (canonical) read from the TZif file in pytz's database; one per name."""
    # open_resource is pytz's own reader of its database (it honours PYTZ_TZDATADIR and the
    # system database of distributions that unbundle it); types-pytz does not declare it.
    with pytz.open_resource(name) as data:  # type: ignore[attr-defined]
        return ZoneInfo.from_file(data, key=name)


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


def _zone(name: object, field: str) -> ZoneInfo:
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


def _instant(parsed: datetime, zone: ZoneInfo | None, timestamp: str) -> datetime:
    """The UTC instant of ``parsed``: as is when it has an offset, else read in ``zone``."""
    try:
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
        if zone is None:
            raise TimestampError(
                f"{timestamp} has no UTC offset and no time zone was given; add an offset "
                "(such as Z or +01:00), a timezone or a default_timezone",
                code="missing_timezone",
                field="timestamp",
            )
        return _local_to_utc(parsed, zone, timestamp)
    except OverflowError:
        raise _out_of_range(timestamp) from None


def _local_to_utc(local: datetime, zone: ZoneInfo, timestamp: str) -> datetime:
    """Read the naive ``local`` as wall-clock time in ``zone``, in UTC.

    ``fold=0`` reads ``local`` with the offset in force before a clock change near it,
    ``fold=1`` with the one after; outside clock changes both are the same.
    """
    earlier, later = local.replace(tzinfo=zone, fold=0), local.replace(tzinfo=zone, fold=1)
    offset = _offset(earlier)
    if offset == _offset(later):
        return (local - offset).replace(tzinfo=UTC)
    # In an overlap the earlier reading is a real instant, so it converts back to ``local``;
    # in a gap it lands after the change, at another wall time.
    round_trip = earlier.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    code = "ambiguous_local_time" if round_trip == local else "nonexistent_local_time"
    raise TimestampError(
        _transition_message(local, zone, code, timestamp), code=code, field="timestamp"
    )


# Everything below runs only on the error path.


def _transition_message(local: datetime, zone: ZoneInfo, code: str, timestamp: str) -> str:
    """Say which clock change puts the wall time ``local`` in a gap or an overlap of ``zone``."""
    earlier, later = local.replace(tzinfo=zone, fold=0), local.replace(tzinfo=zone, fold=1)
    before, after = _offset(earlier), _offset(later)
    change = _change_instant(local, zone, before, after)
    clocks = ""
    if change is not None:
        wall = change.replace(tzinfo=None)
        clocks = " " + _clock_change(wall + before, wall + after)
    kind = "DST " if earlier.dst() != later.dst() else ""
    names = f"{earlier.tzname()} to {later.tzname()}"
    if code == "nonexistent_local_time":
        return (
            f"{timestamp} does not exist in {zone.key}: it falls in the {kind}gap when clocks "
            f"jump forward{clocks} ({names})"
        )
    if before % timedelta(minutes=1) == after % timedelta(minutes=1) == timedelta(0):
        which = f"add an explicit UTC offset ({_format_offset(before)} or {_format_offset(after)})"
    else:  # an offset with seconds cannot be written in an accepted timestamp
        which = (
            f"send it in UTC (the offsets are {_format_offset(before)} and {_format_offset(after)})"
        )
    return (
        f"{timestamp} is ambiguous in {zone.key}: it falls in the {kind}overlap when clocks fall "
        f"back{clocks} ({names}), so it happens twice; {which} to say which"
    )


def _change_instant(
    local: datetime, zone: ZoneInfo, before: timedelta, after: timedelta
) -> datetime | None:
    """The UTC instant at which ``zone`` changes from offset ``before`` to ``after`` around the
    wall time ``local`` (which lies in that change's gap or overlap), or None if no single
    change is found there."""
    # Clock changes fall on whole seconds, at some instant in (local - max, local - min].
    low = local.replace(microsecond=0, tzinfo=UTC) - max(before, after)
    lo, hi = 0, int(abs(after - before).total_seconds())
    if _offset_at(low, zone) != before or _offset_at(low + hi * _SECOND, zone) != after:
        return None
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if _offset_at(low + middle * _SECOND, zone) == before:
            lo = middle
        else:
            hi = middle
    return low + hi * _SECOND


def _clock_change(start: datetime, end: datetime) -> str:
    """``from 02:00 to 03:00 on 2024-03-10``, with both dates when the change spans midnight."""
    if start.date() == end.date():
        return f"from {_wall(start)} to {_wall(end)} on {start.date().isoformat()}"
    return (
        f"from {start.date().isoformat()} {_wall(start)} to {end.date().isoformat()} {_wall(end)}"
    )


def _wall(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S" if moment.second else "%H:%M")


def _offset_at(utc_moment: datetime, zone: ZoneInfo) -> timedelta:
    return _offset(utc_moment.astimezone(zone))


def _offset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    if offset is None:  # not reachable for an aware datetime; keeps mypy informed
        raise ValueError("naive datetime has no UTC offset")
    return offset


def _format_offset(offset: timedelta) -> str:
    """``+05:45``, or ``-00:44:30`` for an offset with seconds."""
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    minutes, second = divmod(abs(seconds), 60)
    hours, minute = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minute:02d}"
    return f"{text}:{second:02d}" if second else text


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

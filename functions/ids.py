"""Event identity: what names an event sent without ``event_id``.

The id of such an event is derived in the database, not here: it is HMAC-SHA256 of the
event's *identity text* under the project's secret key, as a version-8 UUID
(``private.engagement_event_ids``, migration 20241230). The key never leaves the database, so
nobody without service_role can compute an id from what they know of an event, nor test a
guess against the primary key. This module writes the identity text, the same on every
instance, through both sinks and on replay:

- when the event type's payload schema declares identity fields (``x-identity``) and the
  value carries all of them: ``["<user_id>","<event_type>",{<field>: <value>, ...}]``, the
  fields in canonical JSON, with instants (``"format": "date-time"``) written in UTC, so that
  ``2024-12-01T00:00:00+01:00`` and ``2024-11-30T23:00:00Z`` name the same period;
- otherwise the event's content: ``["<user_id>","<event_type>","<instant>",<value>]``, the
  instant in UTC and the value's canonical JSON.

The two forms cannot meet (a list of three items against one of four). The text is part of
the stored data: changing it gives retried events new ids, stored a second time.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from functions.canonical import canonical_value


def utc_text(moment: datetime) -> str:
    """An instant as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (a naive one read as local time)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def content_identity(
    user_id: uuid.UUID, event_type: str, timestamp: datetime, value_json: str
) -> str:
    """The identity text of an event named by its content: ``value_json`` is the value's
    canonical JSON (``functions.canonical.canonical_value``)."""
    # user_id, a valid event_type and the instant need no JSON escaping, so joining them to the
    # value's canonical JSON gives exactly the canonical JSON of the list.
    return f'["{user_id}","{event_type}","{utc_text(timestamp)}",{value_json}]'


def declared_identity(
    user_id: uuid.UUID,
    event_type: str,
    value: Mapping[str, Any],
    fields: Sequence[str],
    instants: Collection[str] = (),
) -> str | None:
    """The identity text of an event named by its identity ``fields``, of which ``instants``
    are RFC 3339 date-times; None when ``value`` lacks one of the fields."""
    if not all(name in value for name in fields):
        return None
    named = {name: _instant(value[name]) if name in instants else value[name] for name in fields}
    return f'["{user_id}","{event_type}",{canonical_value(named)}]'


def _instant(text: Any) -> Any:
    """An RFC 3339 date-time (the schema checked it) in UTC; as sent when Python cannot read
    it (a leap second), which still names it exactly."""
    if not isinstance(text, str):
        return text
    try:
        return utc_text(datetime.fromisoformat(text.upper()))
    except ValueError:
        return text

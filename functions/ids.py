"""Event ids: the id of an event sent without ``event_id``, derived from its content.

The derivation is uuid5 in :data:`EVENT_ID_NAMESPACE` of :func:`identity_text`, so the same
event sent twice gets the same id, and so does the same instant written with different
offsets; any change to the value (even ``1`` versus ``1.0``) gives another id. The format is
part of the stored data: changing it would store retried events twice.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

EVENT_ID_NAMESPACE: Final = uuid.UUID("d659e04c-afcf-4dd0-8753-9d06bf53c340")
"""Namespace of the uuid5 ids derived from event content. Never change it: stored ids and the
idempotency of retried batches depend on it."""


def identity_text(user_id: uuid.UUID, event_type: str, timestamp: datetime, value_json: str) -> str:
    """What identifies an event sent without ``event_id``: the canonical JSON (sorted keys, no
    whitespace, non-ASCII as is) of ``[user_id, event_type, timestamp, value]``, where user_id
    is the lowercase hyphenated UUID, timestamp the instant in UTC as
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (a naive one read as the machine's local time) and
    ``value_json`` the value's canonical JSON (``functions.canonical.canonical_value``)."""
    instant = timestamp.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"
    # user_id, a valid event_type and the instant need no JSON escaping, so joining them to the
    # value's canonical JSON gives exactly the canonical JSON of the list.
    return f'["{user_id}","{event_type}","{instant}",{value_json}]'


def derive_event_id(
    user_id: uuid.UUID, event_type: str, timestamp: datetime, value_json: str
) -> uuid.UUID:
    """The id of an event sent without ``event_id``: uuid5 of :func:`identity_text`."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, identity_text(user_id, event_type, timestamp, value_json))

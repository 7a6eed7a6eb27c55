"""Rejected events, turned into what the dead-letter store keeps.

Every event batch_import rejects is stored with its errors (``private.engagement_event_failures``,
through the sink), so that nothing a caller sent is lost: it can be fixed upstream and replayed
with ``python -m functions.replay``. The event is kept exactly as sent, as ASCII-escaped JSON
text, because jsonb cannot hold some of what callers send (``\\u0000``, lone surrogates).
"""

from __future__ import annotations

import json
from typing import Any

from functions.sinks import FailureRecord
from functions.validation import Rejection


def failure_record(
    rejection: Rejection,
    event: Any,
    *,
    request_id: str,
    credential_type: str,
    default_timezone: str | None,
) -> FailureRecord:
    """What the store keeps of one rejected ``event`` (the value the caller sent)."""
    fields = event if isinstance(event, dict) else {}
    return FailureRecord(
        request_id=request_id,
        credential_type=credential_type,
        index=rejection.index,
        event=json.dumps(event, ensure_ascii=True, separators=(",", ":")),
        errors=tuple(
            {"path": jsonb_safe(error.path), "message": jsonb_safe(error.message)}
            for error in rejection.errors
        ),
        event_id=_text(fields.get("event_id")),
        user_id=_text(fields.get("user_id")),
        default_timezone=jsonb_safe(default_timezone) if default_timezone else None,
    )


def jsonb_safe(text: str) -> str:
    """``text`` with what jsonb refuses (NUL, lone surrogates) written as escapes."""
    return (
        text.replace("\x00", "\\u0000").encode("utf-8", errors="backslashreplace").decode("utf-8")
    )


def _text(value: Any) -> str | None:
    # Only ids short enough to be UUIDs are worth passing; the database keeps UUIDs alone.
    return jsonb_safe(value) if isinstance(value, str) and len(value) <= 64 else None

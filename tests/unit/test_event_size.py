"""batch_import's per-event size limit: the shortcut for valid events decides exactly as
measuring every event would."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from functions import validation

ANA = "a1a1a1a1-0000-4000-8000-000000000001"
LIMIT = 1024


def event_with_note(note: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "user_id": ANA,
        "event_type": "coach_note",
        "timestamp": "2025-06-01T07:30:00.123456",
        "timezone": "America/Argentina/ComodRivadavia",
        "event_id": "0d5c3b2a-1f4e-4a6b-9c8d-7e6f5a4b3c2d",
        "value": {"note": note},
    }
    event.update(changes)
    return event


def measured(event: Any) -> bool:
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode(errors="surrogatepass")) > LIMIT


def oversized(outcome: validation.NormalisedEvent | validation.Rejection) -> bool:
    return isinstance(outcome, validation.Rejection) and outcome.errors == (
        validation.FieldError("", f"the event is larger than the limit of {LIMIT} bytes"),
    )


@pytest.mark.parametrize("character", ["a", "é", "€", "😀"])
@pytest.mark.parametrize("length", [0, 100, 200, 300, 700, 800, 900, 1000, 1100, 5000])
@pytest.mark.parametrize("valid", [True, False])
def test_the_shortcut_agrees_with_measuring(character: str, length: int, valid: bool) -> None:
    event = event_with_note(character * length, **({} if valid else {"event_type": "Bad"}))
    unlimited, limited = (
        validation.normalise_all(
            [event], default_timezone=None, received_at=datetime.now(UTC), max_event_bytes=limit
        )[0]
        for limit in (None, LIMIT)
    )
    assert isinstance(unlimited, validation.NormalisedEvent) is valid
    assert oversized(limited) is measured(event)
    if not measured(event):
        assert limited == unlimited  # an event within the limit is answered as without one

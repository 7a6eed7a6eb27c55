"""batch_import's per-event size limit: the shortcut for valid events decides exactly as
measuring every event would."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from functions import handlers, validation

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
    return len(validation.compact_json(event).encode(errors="surrogatepass")) > LIMIT


@pytest.mark.parametrize("character", ["a", "é", "€", "😀"])
@pytest.mark.parametrize("length", [0, 100, 200, 300, 700, 800, 900, 1000, 1100, 5000])
@pytest.mark.parametrize("valid", [True, False])
def test_the_shortcut_agrees_with_measuring(character: str, length: int, valid: bool) -> None:
    event = event_with_note(character * length, **({} if valid else {"event_type": "Bad"}))
    outcome = validation.normalise_event(
        event, 0, default_timezone=None, received_at=datetime.now(UTC)
    )
    assert isinstance(outcome, validation.NormalisedEvent) is valid
    assert handlers._oversized(event, outcome, LIMIT) is measured(event)

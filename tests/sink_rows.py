"""Event rows as the handler hands them to a sink, shared by the sink tests."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ANA = uuid.UUID("a1a1a1a1-0000-4000-8000-000000000001")
BEN = uuid.UUID("b2b2b2b2-0000-4000-8000-000000000002")
NOBODY = uuid.UUID("99999999-0000-4000-8000-000000000009")


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    user_id: uuid.UUID
    timestamp: datetime
    event_type: str
    value: dict[str, Any]
    identity: str | None = None
    """The identity text the database derives the id from, for a row sent with ``id=None``."""
    revision: int | None = None
    deleted: bool = False


def row(user: uuid.UUID = ANA, **changes: Any) -> Row:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": user,
        "timestamp": datetime(2024, 11, 3, 6, 30, 15, 123456, tzinfo=UTC),
        "event_type": "app_open",
        "value": {"source": "watch"},
    }
    fields.update(changes)
    return Row(**fields)


def soon(seconds: float = 10.0) -> float:
    """A sink deadline `seconds` from now."""
    return time.monotonic() + seconds

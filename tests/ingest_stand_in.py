"""A stand-in for ``public.ingest_engagement_events``, shared by the REST sink's tests: the
function's answers for the cases those tests exercise, kept in memory. It is not the function:
the full rules are tested on the real database (tests/test_event_identity_sql.py,
tests/test_event_identity_http.py), and tests/test_sink_rest.py replays what the sink sent to
the real function to check that it answers as this stand-in did."""

from __future__ import annotations

import collections
import uuid
from dataclasses import dataclass
from typing import Any

STAND_IN_IDS = uuid.UUID("5e1f0000-0000-4000-8000-00000000000a")


def stand_in_id(identity: str) -> str:
    """The stand-in's derived id: uuid5 of the identity text, so that it is stable. The real
    function derives it with an HMAC under the project's secret key."""
    return str(uuid.uuid5(STAND_IN_IDS, identity))


def counts(**given: Any) -> dict[str, Any]:
    """An answer of ingest_engagement_events: zeros and empty lists unless given."""
    answer: dict[str, Any] = {
        "inserted": 0,
        "updated": 0,
        "deleted": 0,
        "duplicates": 0,
        "unknown_users": [],
        "conflicts": [],
        "retry_after": None,
    }
    answer.update(given)
    return answer


@dataclass
class Stored:
    user_id: str
    revision: int | None
    deleted: bool
    value: Any = None


class IngestFunction:
    """A stand-in for ``public.ingest_engagement_events``, for the cases these tests exercise.

    It keeps stored ids with their user, revision and deletion, and answers a body
    ``{"events", "atomic", "rate_*"}`` with the function's counts: an unknown user (one of
    ``unknown_users``) and an id stored for another user (or sent first by another user of the
    batch) are reported by index and not written, and in atomic mode then nothing is; an id
    stored already is a duplicate, unless the event carries a greater revision (updated) or is
    a deletion (deleted); a deleted row stays deleted. Events without ``id`` get
    :func:`stand_in_id` of their identity. Of several events of one batch with the same id the
    first decides (the real function prefers a deletion without revision, then the highest
    revision, then the first): the tests send several only where the two rules agree.
    With ``rate_caller`` in the body and ``rate_wait`` set it refuses like the rate limit.
    """

    def __init__(self) -> None:
        self.stored: dict[str, Stored] = {}
        self.times_inserted: collections.Counter[str] = collections.Counter()
        """How often each id was stored as a new row (more than once would be a lost write)."""
        self.unknown_users: set[str] = set()
        self.rate_wait = 0

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("rate_caller") is not None and self.rate_wait:
            return counts(retry_after=self.rate_wait)
        tally: collections.Counter[str] = collections.Counter()
        unknown: list[int] = []
        conflicts: list[int] = []
        first_user: dict[str, str] = {}
        writes: dict[str, Stored] = {}
        decided: set[str] = set()
        for event in body["events"]:
            event_id = event.get("id") or stand_in_id(event["identity"])
            user = event["user_id"]
            if user in self.unknown_users:
                unknown.append(event["index"])
                continue
            before = self.stored.get(event_id)
            owner = before.user_id if before else first_user.setdefault(event_id, user)
            if user != owner:
                conflicts.append(event["index"])
            elif event_id in decided:
                tally["duplicates"] += 1
            else:
                decided.add(event_id)
                outcome, after = self._decide(before, event)
                tally[outcome] += 1
                if after is not None:
                    writes[event_id] = after
        if body["atomic"] and (unknown or conflicts):
            return counts(unknown_users=unknown, conflicts=conflicts)
        for event_id, row in writes.items():
            if event_id not in self.stored:
                self.times_inserted[event_id] += 1
            self.stored[event_id] = row
        return counts(**tally, unknown_users=sorted(unknown), conflicts=sorted(conflicts))

    @staticmethod
    def _decide(before: Stored | None, event: dict[str, Any]) -> tuple[str, Stored | None]:
        revision: int | None = event.get("revision")
        deletion = bool(event.get("deleted"))
        if before is None:
            return ("deleted" if deletion else "inserted"), Stored(
                event["user_id"], revision, deletion, event.get("value", {})
            )
        if before.deleted:
            return "duplicates", None
        greater = revision is not None and (before.revision is None or revision > before.revision)
        if deletion and (revision is None or before.revision is None or greater):
            return "deleted", Stored(
                before.user_id,
                before.revision if revision is None else revision,
                True,
                before.value,
            )
        if not deletion and greater:
            return "updated", Stored(before.user_id, revision, False, event.get("value", {}))
        return "duplicates", None

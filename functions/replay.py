"""`python -m functions.replay`: import dead-lettered events that pass validation now.

Stored failures (``private.engagement_event_failures``) are read in id order, validated again
with today's schemas and rules, by batch_import's own validation step and with the same limits
from the environment (``MAX_EVENT_BYTES``, ``FUTURE_SKEW_SECONDS``; the stored text is read as
batch_import reads a body), and the ones that pass are written through the direct sink. An
event sent without a timestamp keeps the time it first failed. In one transaction per
page, the imported ones are marked replayed (``replayed_at``, ``replay_request_id``) and the
ones that still fail get their current errors. Replaying twice imports nothing twice: marked
rows are not read again, and a row's id is its ``event_id`` or derived from its identity
through the same write path as batch_import's, so an event stored by an interrupted replay is
a duplicate the second time, not a new row. An event whose id is another user's stays failing.

Needs a direct connection: ``DATABASE_URL`` (the project's connection string as ``postgres``,
or any role with service_role's rights) or ``--database-url``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from functions import http, messages, validation
from functions.config import Settings
from functions.dead_letter import jsonb_safe
from functions.errors import EngagementError, MalformedRequest
from functions.sinks.postgres import PostgresSink

PAGE_SIZE = 1000

_PENDING = """
select id, event, default_timezone, first_failed_at
from private.engagement_event_failures
where replayed_at is null and id > %s
order by id
limit %s
for update skip locked
"""
_MARK_REPLAYED = """
update private.engagement_event_failures
set replayed_at = now(), replay_request_id = %s
where id = any(%s)
"""
_STILL_FAILING = """
update private.engagement_event_failures as f
set errors = u.errors
from (select (x ->> 'id')::bigint as id, x -> 'errors' as errors
      from jsonb_array_elements(%s::jsonb) as x) as u
where f.id = u.id
"""


@dataclass
class ReplayReport:
    """What one replay did; ``str()`` is the summary the command prints."""

    replay_id: str
    examined: int = 0
    imported: int = 0
    """Events inserted, or applied as a newer revision or a deletion."""
    already_stored: int = 0
    still_failing: int = 0
    unknown_users: int = 0
    conflicts: int = 0
    imported_ids: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"replay {self.replay_id}: {self.examined} pending failures examined, "
            f"{self.imported} imported, {self.already_stored} already stored, "
            f"{self.still_failing} still failing ({self.unknown_users} of unknown users, "
            f"{self.conflicts} with another user's id)"
        )


def replay(
    database_url: str,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> ReplayReport:
    """Replay pending failures (at most ``limit``); ``dry_run`` validates but changes nothing.
    The limits are those of ``settings``, by default read from the environment as the
    functions read them (ConfigError if they are malformed)."""
    if settings is None:
        settings = Settings.from_env(needs_sink=False, needs_credentials=False)
    report = ReplayReport(replay_id=f"replay-{uuid.uuid4().hex}")
    sink = PostgresSink(database_url, max_connections=1)
    try:
        with psycopg.connect(database_url, autocommit=False, prepare_threshold=None) as conn:
            last_id = 0
            while limit is None or report.examined < limit:
                page_size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - report.examined)
                rows = conn.execute(_PENDING, (last_id, page_size)).fetchall()
                if not rows:
                    break
                last_id = rows[-1][0]
                _replay_page(conn, sink, rows, report, dry_run=dry_run, settings=settings)
                if dry_run:
                    conn.rollback()
                else:
                    conn.commit()
    finally:
        sink.close()
    return report


def _replay_page(
    conn: psycopg.Connection[Any],
    sink: PostgresSink,
    rows: Sequence[tuple[Any, ...]],
    report: ReplayReport,
    *,
    dry_run: bool,
    settings: Settings,
) -> None:
    report.examined += len(rows)
    passing: list[validation.NormalisedEvent] = []
    passing_ids: list[int] = []
    failing: list[dict[str, Any]] = []
    for failure_id, event_text, default_timezone, first_failed_at in rows:
        outcome = _revalidate(event_text, default_timezone, first_failed_at, settings)
        if isinstance(outcome, validation.Rejection):
            failing.append({"id": failure_id, "errors": _errors(outcome)})
        else:
            passing.append(outcome)
            passing_ids.append(failure_id)

    if passing and not dry_run:
        # The events are written in their own transaction before the marks commit: if the
        # marks are lost, the next replay finds the events stored and counts duplicates.
        result = sink.write(passing, atomic=False, deadline=time.monotonic() + 60)
        unknown = set(result.unknown_users)
        taken = set(result.conflicts)
        for position in sorted(unknown | taken):
            error = (
                messages.UNKNOWN_USER
                if position in unknown
                else (
                    messages.TAKEN_EVENT_ID
                    if passing[position].id is not None
                    else messages.TAKEN_DERIVED_ID
                )
            )
            failing.append({"id": passing_ids[position], "errors": [error.as_dict()]})
        report.unknown_users += len(unknown)
        report.conflicts += len(taken)
        replayed = [fid for i, fid in enumerate(passing_ids) if i not in unknown | taken]
        report.imported += result.inserted + result.updated + result.deleted
        report.already_stored += result.duplicates
        report.imported_ids.extend(replayed)
        conn.execute(_MARK_REPLAYED, (report.replay_id, replayed))
    elif passing:
        report.imported += len(passing)
        report.imported_ids.extend(passing_ids)
    report.still_failing += len(failing)
    if failing and not dry_run:
        conn.execute(_STILL_FAILING, (json.dumps(failing),))


def _revalidate(
    event_text: str,
    default_timezone: str | None,
    first_failed_at: datetime,
    settings: Settings,
) -> validation.NormalisedEvent | validation.Rejection:
    try:
        event = http.decode_json(event_text)
    except MalformedRequest as exc:
        return validation.Rejection(
            0,
            None,
            (validation.FieldError("", f"the stored event is refused as a body: {exc.message}"),),
        )
    (outcome,) = validation.check_events(
        [event],
        default_timezone=default_timezone,
        received_at=first_failed_at.astimezone(UTC),
        settings=settings,
    )
    return outcome


def _errors(rejection: validation.Rejection) -> list[dict[str, str]]:
    return [
        {"path": jsonb_safe(error.path), "message": jsonb_safe(error.message)}
        for error in rejection.errors
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m functions.replay",
        description="Import dead-lettered events that pass validation now; mark them replayed.",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="postgresql:// URL of the project database (default: $DATABASE_URL)",
    )
    parser.add_argument("--limit", type=int, help="replay at most this many failures")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and report; store and mark nothing"
    )
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("set DATABASE_URL or pass --database-url")
    if args.limit is not None and args.limit <= 0:
        parser.error("--limit must be greater than zero")
    started = datetime.now(UTC)
    try:
        report = replay(args.database_url, limit=args.limit, dry_run=args.dry_run)
    except EngagementError as exc:
        print(f"replay failed: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        # Messages of data errors can quote stored values (health data): the SQLSTATE only.
        print(
            f"replay failed: database error {exc.sqlstate or type(exc).__name__}", file=sys.stderr
        )
        return 1
    print(("dry run: " if args.dry_run else "") + str(report))
    print(f"took {(datetime.now(UTC) - started).total_seconds():.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

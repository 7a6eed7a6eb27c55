"""RLS isolation with 50 users at once, each in its own connection, plus anon and service_role."""

from __future__ import annotations

from localdb import isolation
from tests.conftest import Database


def test_fifty_concurrent_users_never_see_or_touch_each_others_events(db: Database) -> None:
    report = isolation.run(db.cluster, db.name, users=50, seconds=3.0)
    assert report.clean, (
        report.leaks[:5],
        report.unexpected_errors[:5],
        report.final_mismatches[:5],
    )
    # The run really interleaved: every user inserted and read, every refusal was tried.
    assert report.operations["insert own event"] >= 50
    assert report.operations["select all visible events"] >= 50
    assert report.operations["insert an event for another user"] > 0
    assert report.operations["delete another user's events"] > 0
    assert report.operations["anon select"] > 0
    assert report.operations["service_role insert for a user"] > 0
    assert report.rows_checked > report.operations["insert own event"]

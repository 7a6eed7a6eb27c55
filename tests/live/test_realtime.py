"""Realtime postgres_changes end to end: user A, subscribed with the `realtime` client, gets
A's inserts and never B's, and how long each delivery takes.

User A holds two subscriptions to INSERTs on public.engagement_events: one filtered to
`user_id=eq.<A>` (what the app does) and one unfiltered, which only RLS can keep B's rows
out of. A third socket subscribes with the anon key alone. service_role then inserts
LIVE_REALTIME_INSERTS events for A (default 50) one at a time, waiting for each to arrive, and
one for B after every fifth; after a grace period every delivery is checked against its owner.

Latency is measured three ways, because no single clock sees both commit and delivery:
from sending the insert to delivery (an upper bound: it includes the insert's own request),
from the insert's HTTP answer to delivery (can be negative: delivery may beat the answer), and
from the server's commit_timestamp to delivery on this machine's clock (exact only as far as
the two clocks agree). The figures go to the report against the 500 ms target; the test fails
on lost or leaked deliveries, not on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from realtime import (
    AsyncRealtimeChannel,
    AsyncRealtimeClient,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
)

from tests.live.api import TABLE_PATH, Caller, event
from tests.live.checks import Checks
from tests.live.conftest import LiveEnv, LiveUsers
from tests.live.report import Latency, LiveReport

AREA = "Realtime postgres_changes on engagement_events"
DELIVERY_TIMEOUT_S = 5.0
"""How long one insert may take to arrive before it counts as lost."""
GRACE_S = 3.0
"""How long to keep listening after the last insert for late (or leaked) deliveries."""
READY_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Delivery:
    row_id: str
    user_id: str | None
    at: float  # loop.time()
    wall: datetime
    commit: str | None
    errors: Any


@dataclass
class Inbox:
    """What one subscription received, keyed by row id."""

    name: str
    got: dict[str, Delivery] = field(default_factory=dict)
    waiting: dict[str, asyncio.Event] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def receive(self, payload: Mapping[str, Any]) -> None:
        """The postgres_changes callback; it must not raise, or the client's listener dies."""
        try:
            self._receive(payload)
        except Exception as exc:  # noqa: BLE001 - recorded and reported instead
            self.errors.append(f"unreadable delivery: {type(exc).__name__}: {exc}")

    def _receive(self, payload: Mapping[str, Any]) -> None:
        data = payload.get("data") or {}
        record = data.get("record") or {}
        row_id = str(record.get("id"))
        if data.get("errors"):
            self.errors.append(str(data.get("errors")))
        self.got[row_id] = Delivery(
            row_id=row_id,
            user_id=record.get("user_id"),
            at=asyncio.get_running_loop().time(),
            wall=datetime.now(UTC),
            commit=data.get("commit_timestamp"),
            errors=data.get("errors"),
        )
        if row_id in self.waiting:
            self.waiting[row_id].set()


@dataclass
class Subscription:
    inbox: Inbox
    channel: AsyncRealtimeChannel | None
    states: list[str]
    ready: bool

    @property
    def state(self) -> str:
        """The latest state the channel reported (an error after joining shows here)."""
        return self.states[-1] if self.states else "no answer"

    @property
    def joined(self) -> bool:
        return self.state.startswith(RealtimeSubscribeStates.SUBSCRIBED.value)


async def subscribe(
    client: AsyncRealtimeClient, topic: str, inbox: Inbox, row_filter: str | None
) -> Subscription:
    """Join a channel listening to INSERTs; wait for Realtime to confirm the Postgres link."""
    ready = asyncio.Event()
    states: list[str] = []
    channel = client.channel(topic)
    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert,
        inbox.receive,
        table="engagement_events",
        schema="public",
        filter=row_filter,
    )

    def on_system(payload: Any) -> None:
        if getattr(payload, "extension", None) == "postgres_changes":
            ready.set()

    def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
        states.append(state.value + (f" ({error})" if error else ""))

    channel.on_system(on_system)
    await channel.subscribe(on_state)
    subscription = Subscription(inbox, channel, states, ready=False)
    if subscription.joined:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), READY_TIMEOUT_S)
        subscription.ready = ready.is_set() and subscription.joined
    return subscription


@dataclass
class Run:
    subscriptions: dict[str, Subscription]
    a_rows: list[str]
    b_rows: list[str]
    sent_at: dict[str, float]
    answered_at: dict[str, float]
    insert_failures: list[str]


async def run_realtime(
    env: LiveEnv,
    users: LiveUsers,
    service: Caller,
    inserts: int,
    run_tag: str,
    *,
    realtime_url: str | None = None,
    grace_s: float = GRACE_S,
) -> Run:
    """Subscribe, insert, listen; ``realtime_url`` defaults to the project's /realtime/v1."""
    realtime_url = realtime_url or f"{env.url}/realtime/v1"
    as_a = AsyncRealtimeClient(realtime_url, token=env.anon_key, auto_reconnect=False)
    as_anon = AsyncRealtimeClient(realtime_url, token=env.anon_key, auto_reconnect=False)
    loop = asyncio.get_running_loop()
    subscriptions: dict[str, Subscription] = {}
    run = Run(subscriptions, [], [], {}, {}, [])
    try:
        await as_a.connect()
        await as_a.set_auth(users.a.access_token)
        await as_anon.connect()
        subscriptions["A, filtered"] = await subscribe(
            as_a, f"live-{run_tag}-a-filtered", Inbox("A, filtered"), f"user_id=eq.{users.a.id}"
        )
        subscriptions["A, unfiltered"] = await subscribe(
            as_a, f"live-{run_tag}-a-all", Inbox("A, unfiltered"), None
        )
        subscriptions["anon, unfiltered"] = await subscribe(
            as_anon, f"live-{run_tag}-anon-all", Inbox("anon, unfiltered"), None
        )
        filtered = subscriptions["A, filtered"].inbox
        # Without a working subscription every wait would run into its timeout: insert anyway
        # (the grace period still catches late deliveries) but do not wait for each one.
        wait_s = DELIVERY_TIMEOUT_S if subscriptions["A, filtered"].ready else 0.2
        url = env.url + TABLE_PATH
        headers = {**service.headers, "Prefer": "return=minimal"}
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
            for number in range(inserts):
                row = event(users.a.id, value={"platform": "ios", "live_check": number})
                arrived = filtered.waiting.setdefault(row["id"], asyncio.Event())
                run.sent_at[row["id"]] = loop.time()
                response = await http.post(url, json=[row], headers=headers)
                run.answered_at[row["id"]] = loop.time()
                if response.status_code != 201:
                    run.insert_failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                run.a_rows.append(row["id"])
                if number % 5 == 4:
                    other = event(users.b.id, value={"platform": "android", "live_check": number})
                    response = await http.post(url, json=[other], headers=headers)
                    if response.status_code == 201:
                        run.b_rows.append(other["id"])
                    else:
                        run.insert_failures.append(f"{response.status_code} {response.text[:200]}")
                with contextlib.suppress(TimeoutError):  # a miss is counted as lost below
                    await asyncio.wait_for(arrived.wait(), wait_s)
        await asyncio.sleep(grace_s)
    finally:
        for client in (as_a, as_anon):
            try:
                await client.remove_all_channels()
            except Exception:  # noqa: BLE001 - closing must not hide the run's outcome
                await client.close()
    return run


def latency_figures(run: Run) -> list[Latency]:
    inbox = run.subscriptions["A, filtered"].inbox
    delivered = [inbox.got[i] for i in run.a_rows if i in inbox.got]
    lost = len(run.a_rows) - len(delivered)
    from_send = tuple((d.at - run.sent_at[d.row_id]) * 1000 for d in delivered)
    from_answer = tuple((d.at - run.answered_at[d.row_id]) * 1000 for d in delivered)
    from_commit: list[float] = []
    for d in delivered:
        if d.commit:
            committed = datetime.fromisoformat(d.commit.replace("Z", "+00:00"))
            from_commit.append((d.wall - committed).total_seconds() * 1000)
    return [
        Latency(
            "insert sent -> delivered",
            from_send,
            "upper bound of commit -> delivery: includes the insert request itself",
            lost,
        ),
        Latency(
            "insert answered -> delivered",
            from_answer,
            "from the insert's HTTP answer; negative when the delivery beat the answer",
            lost,
        ),
        Latency(
            "commit_timestamp -> delivered",
            tuple(from_commit),
            "Realtime's commit_timestamp against this machine's clock: exact only as far "
            "as the two clocks agree (check NTP before trusting it)",
            lost,
        ),
    ]


def record_realtime_checks(run: Run, users: LiveUsers, inserts: int, report: LiveReport) -> Checks:
    """Judge one run: inserts stored, subscriptions joined, A's rows delivered to A only."""
    checks = Checks(report, AREA)
    a_rows, b_rows = set(run.a_rows), set(run.b_rows)
    checks.check(
        "service_role",
        f"insert {inserts} events for A and {inserts // 5} for B, one at a time",
        expected="every insert answered 201",
        ok=not run.insert_failures,
        observed=f"{len(a_rows)} for A, {len(b_rows)} for B stored; "
        f"failures: {'; '.join(run.insert_failures) or 'none'}",
    )
    for name, expect_rows in (
        ("A, filtered", True),
        ("A, unfiltered", True),
        ("anon, unfiltered", False),
    ):
        sub = run.subscriptions[name]
        who = "anon" if name.startswith("anon") else users.a.name
        checks.check(
            who,
            f"subscribe to INSERTs ({name})",
            expected="subscribed and linked to Postgres"
            if expect_rows
            else "subscribed or refused",
            ok=(sub.joined and sub.ready) if expect_rows else True,
            observed=f"{sub.state}; postgres_changes ready: {sub.ready}",
        )
        got = sub.inbox.got
        if expect_rows:
            foreign = [d for d in got.values() if d.user_id != users.a.id]
        else:
            foreign = list(got.values())
        checks.check(
            who,
            f"receive inserts ({name})",
            expected=(
                "every one of A's inserts, none of B's or anyone else's"
                if expect_rows
                else "nothing at all"
            ),
            ok=not foreign and not sub.inbox.errors and (not expect_rows or a_rows <= set(got)),
            observed=f"{len(set(got) & a_rows)} of A's {len(a_rows)}, "
            f"{len(set(got) & b_rows)} of B's {len(b_rows)}, "
            f"{len(foreign)} not A's in total"
            + (f"; errors in payloads: {sub.inbox.errors[:3]}" if sub.inbox.errors else ""),
        )
    for figure in latency_figures(run):
        report.add_latency(figure)
    return checks


def test_realtime_delivers_only_own_inserts_and_how_fast(
    live_env: LiveEnv, users: LiveUsers, service: Caller, report: LiveReport
) -> None:
    inserts = int(os.environ.get("LIVE_REALTIME_INSERTS", "50"))
    run = asyncio.run(run_realtime(live_env, users, service, inserts, live_env.run_id))
    record_realtime_checks(run, users, inserts, report).assert_all()

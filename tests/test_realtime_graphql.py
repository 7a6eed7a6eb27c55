"""Migration 20241210 (Realtime and GraphQL): it applies with or without the publication, the
realtime schema and pg_graphql; Realtime hands each change only to the row's owner; private
`engagement:<uid>` channels belong to one user; GraphQL shows anon nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from localdb import cluster as localcluster
from localdb.api_roles import request_as
from tests.conftest import Database

MIGRATION = localcluster.MIGRATIONS / "20241210000000_realtime_graphql.sql"
DOWN = localcluster.ROOT / "supabase" / "rollback" / "20241210000000_realtime_graphql.down.sql"
BASE = sorted(p for p in localcluster.MIGRATIONS.glob("*.sql") if p.name < MIGRATION.name)
ANA = "a1a1a1a1-0000-4000-8000-000000000001"
BEN = "b2b2b2b2-0000-4000-8000-000000000002"
POLICIES = {
    "Users receive own engagement channel",
    "Engagement channels are per user",
    "Only the backend sends on engagement channels",
}


def realtime_policies(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "select policyname from pg_policies where schemaname = 'realtime' and tablename = 'messages'"
    ).fetchall()
    return {r[0] for r in rows}


def add_realtime_schema(db: Database, *, owner: str) -> None:
    """What Realtime Authorization puts into a project: realtime.messages and realtime.topic()."""
    with db.cluster.connect(localcluster.SUPERUSER, db.name) as sup:
        sup.execute(
            "do $$ begin if not exists (select 1 from pg_roles where rolname = 'supabase_realtime_admin')"
            " then create role supabase_realtime_admin nologin; end if; end $$"
        )
        sup.execute(
            f"""
            create schema realtime authorization {owner};
            create table realtime.messages (
                id uuid primary key default gen_random_uuid(),
                topic text not null,
                extension text not null,
                payload jsonb,
                event text,
                private boolean default false,
                inserted_at timestamp not null default now()
            );
            alter table realtime.messages owner to {owner};
            alter table realtime.messages enable row level security;
            create function realtime.topic() returns text language sql stable
                as $f$ select nullif(current_setting('realtime.topic', true), '')::text $f$;
            grant usage on schema realtime to anon, authenticated, service_role;
            grant select, insert on realtime.messages to anon, authenticated, service_role;
            """
        )


@pytest.fixture
def realtime_db(db: Database) -> Iterator[Database]:
    """A migrated database that also has Realtime Authorization, owned as on a project where the
    migration role may manage realtime.messages."""
    add_realtime_schema(db, owner="supabase_realtime_admin")
    with db.cluster.connect(localcluster.SUPERUSER, db.name) as sup:
        sup.execute("grant supabase_realtime_admin to postgres")
    try:
        db.cluster.run_sql_file(MIGRATION, dbname=db.name)
        yield db
    finally:
        with db.cluster.connect(localcluster.SUPERUSER, db.name) as sup:
            sup.execute("revoke supabase_realtime_admin from postgres")


def joins(conn: psycopg.Connection[Any], user: str, topic: str) -> bool:
    """Realtime's join check: may `user` receive messages on `topic`? (It selects under RLS with
    realtime.topic() set to the channel's topic.)"""
    with request_as(conn, "authenticated", user):
        conn.execute("select set_config('realtime.topic', %s, true)", (topic,))
        row = conn.execute(
            "select count(*) from realtime.messages where topic = realtime.topic()"
        ).fetchone()
    return row is not None and row[0] > 0


def sends(conn: psycopg.Connection[Any], user: str, topic: str) -> bool:
    """May `user` broadcast on `topic`? Realtime inserts the message under RLS to find out."""
    try:
        with request_as(conn, "authenticated", user):
            conn.execute("select set_config('realtime.topic', %s, true)", (topic,))
            conn.execute(
                "insert into realtime.messages (topic, extension, event, payload)"
                " values (realtime.topic(), 'broadcast', 'ping', '{}')"
            )
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


# ------------------------------------------------------------------------ applying the migration


def test_applies_twice_and_leaves_the_table_in_the_publication_once(db: Database) -> None:
    db.cluster.run_sql_file(MIGRATION, dbname=db.name)
    db.cluster.run_sql_file(MIGRATION, dbname=db.name)
    with db.connect() as conn:
        members = conn.execute(
            "select count(*) from pg_publication_tables where pubname = 'supabase_realtime'"
            " and schemaname = 'public' and tablename = 'engagement_events'"
        ).fetchone()
        identity = conn.execute(
            "select relreplident from pg_class where oid = 'public.engagement_events'::regclass"
        ).fetchone()
    assert members == (1,)
    assert identity == ("d",), "DELETE events must carry only the primary key"


def test_applies_without_publication_realtime_schema_or_pg_graphql(
    cluster: localcluster.Cluster,
) -> None:
    cluster.prepare_database("bare_realtime", migrations=[], seed=None)
    try:
        with cluster.connect(localcluster.SUPERUSER, "bare_realtime") as sup:
            sup.execute("drop publication supabase_realtime")
        for path in [*BASE, MIGRATION, MIGRATION]:
            cluster.run_sql_file(path, dbname="bare_realtime")
        with cluster.connect("postgres", "bare_realtime") as conn:
            assert conn.execute("select to_regnamespace('realtime')").fetchone() == (None,)
            assert conn.execute(
                "select count(*) from pg_extension where extname = 'pg_graphql'"
            ).fetchone() == (0,)
            comment = conn.execute(
                "select obj_description('public.engagement_events'::regclass, 'pg_class')"
            ).fetchone()
        assert comment is not None
        assert isinstance(comment[0], str)
        assert '@graphql({"totalCount": {"enabled": true}})' in comment[0]
    finally:
        cluster.drop("bare_realtime")


def test_rollback_removes_what_the_migration_added_and_can_run_twice(
    realtime_db: Database,
) -> None:
    db = realtime_db
    with db.connect() as conn:
        assert realtime_policies(conn) == POLICIES
    db.cluster.run_sql_file(DOWN, dbname=db.name)
    db.cluster.run_sql_file(DOWN, dbname=db.name)
    with db.connect() as conn:
        assert realtime_policies(conn) == set()
        comment = conn.execute(
            "select obj_description('public.engagement_events'::regclass, 'pg_class')"
        ).fetchone()
        assert comment is not None
        assert "@graphql" not in comment[0]
        assert comment[0].startswith("Engagement events of the BEE core module")
    # And forward again.
    db.cluster.run_sql_file(MIGRATION, dbname=db.name)
    with db.connect() as conn:
        assert realtime_policies(conn) == POLICIES


# ------------------------------------------------------------------------------------- GraphQL


def test_graphql_directive_is_read_the_way_pg_graphql_reads_it(db: Database) -> None:
    """pg_graphql takes the JSON between `@graphql(` and the comment's last `)`."""
    with db.connect() as conn:
        row = conn.execute(
            "select (regexp_match(obj_description('public.engagement_events'::regclass, 'pg_class'),"
            r" '@graphql\((.+)\)'))[1]::jsonb"
        ).fetchone()
    assert row is not None
    assert row[0] == {"totalCount": {"enabled": True}}


def graphql_surface(conn: psycopg.Connection[Any], role: str) -> dict[str, Any]:
    """What pg_graphql reflects of the table for `role`: it follows table and column privileges
    (a query collection needs SELECT, a mutation its privilege; fields are the columns granted)."""
    table = "public.engagement_events"
    columns = [
        r[0]
        for r in conn.execute(
            "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0"
            " and not attisdropped order by attnum",
            (table,),
        ).fetchall()
    ]

    def granted(privilege: str) -> list[str]:
        return [
            c
            for c in columns
            if conn.execute(
                "select has_column_privilege(%s, %s, %s, %s)", (role, table, c, privilege)
            ).fetchone()
            == (True,)
        ]

    delete = conn.execute("select has_table_privilege(%s, %s, 'DELETE')", (role, table)).fetchone()
    return {
        "columns": columns,
        "query": granted("SELECT"),
        "insert": granted("INSERT"),
        "update": granted("UPDATE"),
        "delete": delete == (True,),
    }


def test_graphql_shows_anon_nothing_and_authenticated_what_rest_allows(db: Database) -> None:
    with db.connect() as conn:
        anon = graphql_surface(conn, "anon")
        user = graphql_surface(conn, "authenticated")
    # anon: no type at all, so pg_graphql_anon_table_exposed has nothing to report.
    assert {k: v for k, v in anon.items() if k != "columns"} == {
        "query": [],
        "insert": [],
        "update": [],
        "delete": False,
    }
    # authenticated: the intended exposure (RLS narrows every operation to the user's rows).
    assert user["query"] == user["columns"]
    assert {"id", "user_id", "timestamp", "event_type", "value", "is_deleted"} <= set(user["query"])
    assert user["insert"] == ["id", "user_id", "timestamp", "event_type", "value"]
    assert user["update"] == ["is_deleted"]
    assert user["delete"] is False


# ------------------------------------------------------------------- Realtime postgres_changes


def test_realtime_hands_each_change_only_to_the_rows_owner(db: Database) -> None:
    """Decode the table's changes from the WAL (as Realtime does, with wal2json) and run
    Realtime's per-subscriber check: select the changed row as that user, under RLS."""
    slot = "engagement_realtime_check"
    with db.connect() as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (slot,))
        # The test cluster commits asynchronously; decoding reads only flushed WAL.
        conn.execute("set synchronous_commit = on")
        try:
            conn.execute(
                "insert into public.engagement_events (id, user_id, event_type, value) values"
                " ('0e000000-0000-4000-8000-00000000000a', %s, 'app_open', '{\"platform\": \"ios\"}'),"
                " ('0e000000-0000-4000-8000-00000000000b', %s, 'app_open', '{\"platform\": \"web\"}')",
                (ANA, BEN),
            )
            with request_as(conn, "authenticated", ANA):
                conn.execute(
                    "update public.engagement_events set is_deleted = true"
                    " where id = '0e000000-0000-4000-8000-00000000000a'"
                )
            conn.execute(
                "delete from public.engagement_events where id = '0e000000-0000-4000-8000-00000000000b'"
            )
            changes = [
                json.loads(r[0])
                for r in conn.execute(
                    "select data from pg_logical_slot_get_changes(%s, null, null,"
                    " 'format-version', '2', 'add-tables', 'public.engagement_events')",
                    (slot,),
                ).fetchall()
            ]
        finally:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
        rows = [c for c in changes if c.get("action") in ("I", "U", "D")]
        assert [c["action"] for c in rows] == ["I", "I", "U", "D"]

        delivered: list[tuple[str, str, set[str]]] = []
        for change in rows[:3]:
            row_id = next(col["value"] for col in change["columns"] if col["name"] == "id")
            receivers = set()
            for user in (ANA, BEN):
                # The insert of BEN's row is checked before its deletion in Realtime; here the
                # row is gone, so check visibility of rows that still exist only.
                with request_as(conn, "authenticated", user):
                    seen = conn.execute(
                        "select count(*) from public.engagement_events where id = %s", (row_id,)
                    ).fetchone()
                if seen == (1,):
                    receivers.add(user)
            delivered.append((change["action"], row_id, receivers))
    assert delivered == [
        ("I", "0e000000-0000-4000-8000-00000000000a", {ANA}),
        ("I", "0e000000-0000-4000-8000-00000000000b", set()),  # deleted since: nobody
        ("U", "0e000000-0000-4000-8000-00000000000a", {ANA}),
    ]
    # The DELETE event skips RLS, so it must carry nothing but the key.
    assert [col["name"] for col in rows[3]["identity"]] == ["id"]


def ingest_version(
    conn: psycopg.Connection[Any], day: str, revision: int, deleted: bool
) -> dict[str, Any]:
    """Version ``revision`` of ANA's step count of ``day`` through batch_import's write path
    (ingest_engagement_events, as service_role); the function's answer."""
    event = {
        "index": 0,
        "identity": json.dumps([ANA, "steps_import", "garmin", day]),
        "user_id": ANA,
        "event_type": "steps_import",
        "timestamp": f"{day}T20:00:00Z",
        "value": {"steps": 1000 * revision},
        "revision": revision,
        "deleted": deleted,
    }
    with request_as(conn, "service_role"):
        row = conn.execute(
            "select public.ingest_engagement_events(%s::jsonb)", (json.dumps([event]),)
        ).fetchone()
    assert row is not None
    answer: dict[str, Any] = row[0]
    return answer


def test_a_revision_and_a_deletion_reach_only_the_owner_as_updates(db: Database) -> None:
    """Through the write path of batch_import (ingest_engagement_events, as service_role): a
    newer revision and a deletion from the source are UPDATE changes of the row, which
    Realtime hands to the subscribers whose SELECT policy admits the row: its owner alone."""
    slot = "engagement_realtime_revisions"

    with db.connect() as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (slot,))
        conn.execute("set synchronous_commit = on")
        try:
            counts = [
                {
                    k: v
                    for k, v in ingest_version(conn, "2024-12-01", revision, deleted).items()
                    if isinstance(v, int)
                }
                for revision, deleted in ((1, False), (2, False), (3, True))
            ]
            changes = [
                json.loads(r[0])
                for r in conn.execute(
                    "select data from pg_logical_slot_get_changes(%s, null, null,"
                    " 'format-version', '2', 'add-tables', 'public.engagement_events')",
                    (slot,),
                ).fetchall()
            ]
        finally:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
        assert counts == [
            {"inserted": 1, "updated": 0, "deleted": 0, "duplicates": 0},
            {"inserted": 0, "updated": 1, "deleted": 0, "duplicates": 0},
            {"inserted": 0, "updated": 0, "deleted": 1, "duplicates": 0},
        ]
        rows = [c for c in changes if c.get("action") in ("I", "U", "D")]
        assert [c["action"] for c in rows] == ["I", "U", "U"]
        new_values = [{col["name"]: col["value"] for col in c["columns"]} for c in rows]
        assert [(v["revision"], v["is_deleted"]) for v in new_values] == [
            (1, False),
            (2, False),
            (3, True),
        ]
        row_id = new_values[0]["id"]
        receivers = set()
        for user in (ANA, BEN):
            with request_as(conn, "authenticated", user):
                seen = conn.execute(
                    "select count(*) from public.engagement_events where id = %s", (row_id,)
                ).fetchone()
            if seen == (1,):
                receivers.add(user)
    assert receivers == {ANA}


def test_a_users_rows_are_invisible_to_another_subscriber(db: Database) -> None:
    """The check behind every postgres_changes delivery, for a row that still exists."""
    with db.connect() as conn:
        conn.execute(
            "insert into public.engagement_events (id, user_id, event_type)"
            " values ('0e000000-0000-4000-8000-00000000000c', %s, 'app_open')",
            (BEN,),
        )
        visible = {}
        for user in (ANA, BEN):
            with request_as(conn, "authenticated", user):
                visible[user] = conn.execute(
                    "select count(*) from public.engagement_events"
                    " where id = '0e000000-0000-4000-8000-00000000000c'"
                ).fetchone()
    assert visible == {ANA: (0,), BEN: (1,)}


# --------------------------------------------------------------- private broadcast channels


def test_a_user_joins_only_their_own_engagement_channel(realtime_db: Database) -> None:
    with realtime_db.cluster.connect(localcluster.SUPERUSER, realtime_db.name) as sup:
        sup.execute(
            "insert into realtime.messages (topic, extension) values"
            " (%s, 'broadcast'), (%s, 'broadcast'), ('room:lobby', 'broadcast')",
            (f"engagement:{ANA}", f"engagement:{BEN}"),
        )
    with psycopg.connect(realtime_db.cluster.dsn("authenticator", realtime_db.name)) as conn:
        assert joins(conn, ANA, f"engagement:{ANA}")
        assert not joins(conn, ANA, f"engagement:{BEN}")
        assert joins(conn, BEN, f"engagement:{BEN}")
        assert not joins(conn, ANA, "room:lobby")  # no policy of this project opens it


BROADCAST_MIGRATION = localcluster.MIGRATIONS / "20250101000000_realtime_broadcast_revisions.sql"


def add_broadcast_changes(db: Database) -> None:
    """A stand-in for Realtime's realtime.broadcast_changes with its documented effect: one
    private broadcast message on the topic, the new and the old row in its payload."""
    with db.cluster.connect(localcluster.SUPERUSER, db.name) as sup:
        sup.execute(
            """
            create function realtime.broadcast_changes(
                topic_name text, event_name text, operation text, table_name text,
                table_schema text, new record, old record, level text default 'ROW')
            returns void language plpgsql as $f$
            begin
                insert into realtime.messages (topic, extension, event, payload, private)
                values (topic_name, 'broadcast', event_name,
                        jsonb_build_object('operation', operation, 'table', table_name,
                                           'schema', table_schema, 'record', to_jsonb(new),
                                           'old_record', to_jsonb(old)),
                        true);
            end
            $f$;
            grant execute on function
                realtime.broadcast_changes(text, text, text, text, text, record, record, text)
                to postgres;
            """
        )


def test_a_revision_and_a_deletion_reach_the_owners_private_channel_only(
    realtime_db: Database,
) -> None:
    """Through batch_import's write path: the insert is not broadcast, the newer revision and
    the deletion are, as UPDATE messages on engagement:<owner>, which only the owner can join."""
    add_broadcast_changes(realtime_db)
    realtime_db.cluster.run_sql_file(BROADCAST_MIGRATION, dbname=realtime_db.name)
    with psycopg.connect(realtime_db.cluster.dsn("postgres", realtime_db.name)) as conn:
        conn.autocommit = True
        for revision, deleted in ((1, False), (2, False), (3, True)):
            ingest_version(conn, "2024-12-02", revision, deleted)
    with realtime_db.cluster.connect(localcluster.SUPERUSER, realtime_db.name) as sup:
        messages = sup.execute(
            "select topic, event, private, payload -> 'record' ->> 'revision',"
            " payload -> 'record' ->> 'is_deleted' from realtime.messages order by inserted_at"
        ).fetchall()
    assert messages == [
        (f"engagement:{ANA}", "UPDATE", True, "2", "false"),
        (f"engagement:{ANA}", "UPDATE", True, "3", "true"),
    ]
    with psycopg.connect(realtime_db.cluster.dsn("authenticator", realtime_db.name)) as conn:
        assert joins(conn, ANA, f"engagement:{ANA}")
        assert not joins(conn, BEN, f"engagement:{ANA}")


def test_without_broadcast_changes_the_broadcast_migration_applies_and_changes_nothing(
    db: Database,
) -> None:
    db.cluster.run_sql_file(BROADCAST_MIGRATION, dbname=db.name)
    with db.connect() as conn:
        triggers = conn.execute(
            "select tgname from pg_trigger where tgrelid = 'public.engagement_events'::regclass"
            " and tgname = 'engagement_events_broadcast_update'"
        ).fetchall()
        function = conn.execute(
            "select to_regprocedure('private.engagement_events_broadcast_update()')"
        ).fetchone()
    assert triggers == []
    assert function == (None,)


def test_a_broad_project_policy_does_not_open_another_users_channel(
    realtime_db: Database,
) -> None:
    with realtime_db.cluster.connect(localcluster.SUPERUSER, realtime_db.name) as sup:
        sup.execute(
            """
            create policy "anyone signed in listens" on realtime.messages
                for select to authenticated using (true);
            create policy "anyone signed in sends" on realtime.messages
                for insert to authenticated with check (true);
            """
        )
        sup.execute(
            "insert into realtime.messages (topic, extension) values"
            " (%s, 'broadcast'), ('room:lobby', 'broadcast')",
            (f"engagement:{BEN}",),
        )
    with psycopg.connect(realtime_db.cluster.dsn("authenticator", realtime_db.name)) as conn:
        assert joins(conn, ANA, "room:lobby")
        assert not joins(conn, ANA, f"engagement:{BEN}")
        assert sends(conn, ANA, "room:lobby")
        assert not sends(conn, ANA, f"engagement:{ANA}")
        assert not sends(conn, ANA, f"engagement:{BEN}")


def test_without_ownership_of_realtime_messages_the_migration_still_applies(
    db: Database,
) -> None:
    add_realtime_schema(db, owner=localcluster.SUPERUSER)
    with psycopg.connect(db.cluster.dsn("postgres", db.name)) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        conn.execute(MIGRATION.read_text().encode())
        conn.commit()
        assert realtime_policies(conn) == set()
    assert any(re.search(r"cannot create policies on realtime\.messages", n) for n in notices)

"""`python -m localdb`: run the project locally until interrupted.

Starts a throwaway PostgreSQL, prepares the `postgres` database the way Supabase does, applies
supabase/migrations/* and the seed as the `postgres` role, then serves the three functions with
functions-framework on loopback ports, writing through the direct sink, and prints a ready
`curl` with a service-role token minted for this run's JWT secret. Ctrl-C (or SIGTERM) stops
everything and removes every file the database wrote.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from localdb import cluster as localcluster
from localdb import functions_local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdb", description=__doc__)
    parser.add_argument(
        "--no-seed", action="store_true", help="apply the migrations only, not the seed"
    )
    parser.add_argument(
        "--no-functions", action="store_true", help="run the database only, not the functions"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    servers: list[functions_local.FunctionServer] = []
    print("Starting a throwaway Supabase-shaped PostgreSQL ...", flush=True)
    try:
        db = localcluster.start(durable=True)
    except localcluster.LocalDbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        db.prepare_database("postgres", seed=None if args.no_seed else localcluster.SEED)
        with db.connect() as conn:
            row = conn.execute(
                "select count(*), count(distinct user_id) from public.engagement_events"
            ).fetchone()
        events, users = row if row else (0, 0)
        psql = db.bindir / "psql"
        if not args.no_functions:
            servers = functions_local.serve(db.url())
        print(
            f"""
Local database ready: PostgreSQL {db.bindir.parent.name} on 127.0.0.1:{db.port}
  migrations applied: {", ".join(p.name for p in sorted(localcluster.MIGRATIONS.glob("*.sql")))}
  seed: {"skipped" if args.no_seed else f"{events} events of {users} users"}

Connect as the migration owner (not a superuser, as on Supabase):
  {psql} "{db.url()}"
  DATABASE_URL={db.url()}

Try what a signed-in user sees (PostgREST does exactly this per request):
  begin;
  set local role authenticated;
  select set_config('request.jwt.claims',
    '{{"sub":"a1a1a1a1-0000-4000-8000-000000000001","role":"authenticated"}}', true);
  select event_type, count(*) from engagement_events group by 1;
  rollback;
{functions_local.describe(servers, db.url(), str(psql)) if servers else ""}
Press Ctrl-C to stop; the database and its files are removed.""",
            flush=True,
        )
        while not stop.wait(timeout=1.0):
            if db.process.poll() is not None:
                print("error: PostgreSQL exited unexpectedly", file=sys.stderr)
                return 1
            if any(server.process.poll() is not None for server in servers):
                print("error: a function server exited unexpectedly", file=sys.stderr)
                return 1
    except localcluster.LocalDbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.stop()
        db.stop()
        print("Stopped; local database removed.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

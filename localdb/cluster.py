"""A throwaway Supabase-shaped PostgreSQL: start, prepare, clone, stop.

The cluster lives in a fresh temporary directory, listens on a free loopback port, and runs
with `wal_level=logical` so that logical decoding (Realtime, wal2json) works. Nothing here
touches a database the developer already has. PostgreSQL refuses to run as root, so when
this runs as root the server runs as an unprivileged operating-system user (`postgres`,
created by Debian's PostgreSQL packages, or `LOCALDB_OS_USER`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "supabase" / "migrations"
SEED = ROOT / "supabase" / "seed_engagement_events.sql"
HERE = Path(__file__).resolve().parent

SUPERUSER = "supabase_admin"
"""The bootstrap superuser, named as on Supabase; migrations never run as it."""

ADMIN_DB = "localdb_admin"
"""Where superuser maintenance connections go, so that every other database can be cloned
or dropped while they are open."""

PREFERRED_MAJORS = (15, 16, 17)

OUTPUT_PLUGINS = ("pgoutput", "test_decoding", "wal2json")
"""The logical decoding plugins replication slots may use here: PostgreSQL's own two and
wal2json (what Realtime and the monitoring's lag check decode with)."""


class LocalDbError(RuntimeError):
    """The local database could not be started or prepared."""


def find_bindir() -> Path:
    """Where the PostgreSQL server binaries are: `PG_BINDIR`, else the newest preferred major."""
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        path = Path(explicit)
        if not (path / "postgres").exists():
            raise LocalDbError(f"PG_BINDIR={explicit} has no postgres binary")
        return path
    for major in PREFERRED_MAJORS:
        path = Path(f"/usr/lib/postgresql/{major}/bin")
        if (path / "postgres").exists():
            return path
    raise LocalDbError(
        "no PostgreSQL server binaries found under /usr/lib/postgresql/{15,16,17}/bin; "
        "run scripts/setup.sh (it installs postgresql-15) or set PG_BINDIR"
    )


@functools.cache
def server_settings(bindir: Path) -> frozenset[str]:
    """The names of the settings the server binary in `bindir` knows.

    Minor releases add settings: `output_plugin_libraries` (15.19 on 15, and the minor releases
    of the other majors that came out with it) must name wal2json before a slot may use it, and
    a server without it refuses to start with it set.
    The binary itself says which it knows (`postgres --describe-config` needs no data directory
    and may run as root).
    """
    described = subprocess.run(
        [str(bindir / "postgres"), "--describe-config"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    return frozenset(line.split("\t", 1)[0] for line in described.stdout.splitlines() if line)


def version_settings(bindir: Path) -> list[str]:
    """The settings that depend on the server's minor release, for the ones it knows."""
    if "output_plugin_libraries" in server_settings(bindir):
        return [f"output_plugin_libraries={','.join(OUTPUT_PLUGINS)}"]
    return []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("LOCALDB_OS_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise LocalDbError(
            f"running as root, and the unprivileged account {name!r} that PostgreSQL needs "
            "does not exist; install postgresql-15 (scripts/setup.sh does) or set LOCALDB_OS_USER"
        ) from exc


@dataclass
class Cluster:
    """A running throwaway cluster. Use `start()`; always `stop()` (or use it as a context)."""

    bindir: Path
    basedir: Path
    port: int
    process: subprocess.Popen[bytes]
    account: pwd.struct_passwd | None
    _clones: int = field(default=0)
    argv: tuple[str, ...] = ()
    """The server's command line, kept so that `start_server()` can bring it back as it was."""

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    def dsn(self, user: str = "postgres", dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}"

    def url(self, user: str = "postgres", dbname: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def connect(
        self, user: str = "postgres", dbname: str = "postgres", *, autocommit: bool = True
    ) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(user, dbname), autocommit=autocommit)

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection for cluster maintenance (create, clone, drop databases)."""
        return self.connect(SUPERUSER, ADMIN_DB)

    def prepare_database(
        self,
        dbname: str,
        *,
        migrations: Sequence[Path] | None = None,
        seed: Path | None = SEED,
        legacy_default_grants: bool = False,
    ) -> None:
        """Create `dbname` the way Supabase prepares a project, then migrate and seed it.

        Migrations and the seed run as the non-superuser `postgres` role, in file-name order.
        `legacy_default_grants` reproduces older Supabase projects, where every new table in
        `public` was granted to anon, authenticated and service_role by default privileges.
        """
        with self.admin() as admin:
            admin.execute(
                sql.SQL("create database {} owner postgres").format(sql.Identifier(dbname))
            )
        with self.connect(SUPERUSER, dbname) as admin:
            admin.execute((HERE / "bootstrap_database.sql").read_text())
            available = admin.execute(
                "select 1 from pg_available_extensions where name = 'pgtap'"
            ).fetchone()
            if available:
                admin.execute("create extension if not exists pgtap with schema extensions")
            if legacy_default_grants:
                admin.execute(
                    "alter default privileges for role postgres in schema public "
                    "grant all on tables to anon, authenticated, service_role"
                )
        files = sorted(MIGRATIONS.glob("*.sql")) if migrations is None else list(migrations)
        for path in files:
            self.run_sql_file(path, dbname=dbname)
        if seed is not None:
            self.run_sql_file(seed, dbname=dbname)

    def run_sql_file(self, path: Path, *, dbname: str, user: str = "postgres") -> None:
        """Run one file in one transaction, as the Supabase CLI applies a migration."""
        try:
            with self.connect(user, dbname, autocommit=False) as conn:
                conn.execute(path.read_text().encode())
        except psycopg.Error as exc:
            raise LocalDbError(f"{path.name} failed as {user}: {exc}") from exc

    def clone(self, template: str, name: str | None = None) -> str:
        """A new database copied from `template` (which must have no open connections)."""
        self._clones += 1
        name = name or f"{template}_{self._clones}"
        with self.admin() as admin:
            admin.execute(
                sql.SQL("create database {} template {} owner postgres").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return name

    def drop(self, dbname: str) -> None:
        with self.admin() as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
            )

    def stop_server(self, mode: str = "fast") -> None:
        """Shut the server down and keep its data directory, to simulate an outage.

        `fast` (SIGINT) ends every session with 57P01 and checkpoints; `immediate` (SIGQUIT)
        is a crash: sessions are cut without a checkpoint and the next start runs recovery.
        """
        signals = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        if mode not in signals:
            raise ValueError(f"mode must be fast or immediate, not {mode!r}")
        if self.process.poll() is not None:
            return
        self.process.send_signal(signals[mode])
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def start_server(self) -> None:
        """Start the server again on the same port and data directory after `stop_server()`."""
        if self.process.poll() is None:
            return
        if not self.argv:
            raise LocalDbError("this cluster was not started by localdb.cluster.start()")
        self.process = _spawn(list(self.argv), self.basedir, None, self.account)
        if not _wait_ready(self, dbname=ADMIN_DB):
            raise LocalDbError(
                f"PostgreSQL did not restart on port {self.port}; see its log in the cluster "
                "directory"
            )

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove every file of the cluster."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.basedir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _as_account(
    account: pwd.struct_passwd | None,
) -> tuple[int | None, int | None, list[int] | None]:
    """subprocess's user, group and extra_groups that run a child as `account` (or as us)."""
    if account is None:
        return None, None, None
    return account.pw_uid, account.pw_gid, []


def start(
    *,
    durable: bool = False,
    max_connections: int = 300,
    extra_settings: Sequence[str] = (),
    log_to: Path | None = None,
) -> Cluster:
    """initdb into a new temporary directory and start the server on a free port.

    `durable=False` turns off fsync and friends: a throwaway test cluster gains speed and loses
    nothing. Benchmarks that compare against real write costs pass `durable=True`.
    """
    bindir = find_bindir()
    account = _server_account()
    basedir = Path(tempfile.mkdtemp(prefix="engagement-localdb-"))
    os.chmod(basedir, 0o700)
    if account is not None:
        os.chown(basedir, account.pw_uid, account.pw_gid)
    datadir = basedir / "data"
    uid, gid, groups = _as_account(account)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    try:
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=basedir,
            env=env,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(basedir, ignore_errors=True)
        raise LocalDbError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc

    settings = [
        "listen_addresses=127.0.0.1",
        f"unix_socket_directories={basedir}",
        "wal_level=logical",
        "max_replication_slots=20",
        "max_wal_senders=20",
        f"max_connections={max_connections}",
        "shared_buffers=256MB",
        "timezone=UTC",
        *version_settings(bindir),
        *(() if durable else ("fsync=off", "synchronous_commit=off", "full_page_writes=off")),
        *extra_settings,
    ]
    for attempt in range(5):
        port = free_port()
        argv = [str(bindir / "postgres"), "-D", str(datadir), "-p", str(port)]
        for setting in settings:
            argv += ["-c", setting]
        process = _spawn(argv, basedir, log_to, account)
        cluster = Cluster(bindir, basedir, port, process, account, argv=tuple(argv))
        if _wait_ready(cluster):
            break
        cluster.process.kill()
        cluster.process.wait()
        if attempt == 4:
            tail = (basedir / "server.log").read_text(errors="replace")[-2000:]
            shutil.rmtree(basedir, ignore_errors=True)
            raise LocalDbError(f"PostgreSQL did not start; its log ends with:\n{tail}")

    try:
        with cluster.connect(SUPERUSER) as admin:
            admin.execute((HERE / "bootstrap_cluster.sql").read_text())
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(ADMIN_DB)))
        # initdb's empty `postgres` database goes, so that prepare_database("postgres") can
        # create it the way Supabase has it: owned by the `postgres` role.
        with cluster.admin() as admin:
            admin.execute("drop database postgres")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _spawn(
    argv: list[str], basedir: Path, log_to: Path | None, account: pwd.struct_passwd | None
) -> subprocess.Popen[bytes]:
    """Start the postmaster in its own session, logging to `log_to` or the cluster's log."""
    uid, gid, groups = _as_account(account)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    log = open(log_to or basedir / "server.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=basedir,
            env=env,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    finally:
        log.close()


def _wait_ready(cluster: Cluster, timeout: float = 30.0, *, dbname: str = "postgres") -> bool:
    """Whether the server accepts connections to `dbname` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.process.poll() is not None:
            return False  # exited: most likely the port was taken meanwhile
        with contextlib.suppress(psycopg.OperationalError):
            psycopg.connect(cluster.dsn(SUPERUSER, dbname), connect_timeout=2).close()
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def running(**kwargs: object) -> Iterator[Cluster]:
    """`with running() as cluster:` starts a cluster and always stops it."""
    cluster = start(**kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.stop()

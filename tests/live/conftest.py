"""The live suite: end-to-end checks against a real Supabase project (staging, never production).

Every test here is skipped, with a reason that names the missing variables, unless
SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY and SUPABASE_ANON_KEY are set. SUPABASE_JWT_SECRET is
optional: with it the suite also mints an HS256 service token; without it a secret key
(sb_secret_...) is itself the credential the functions check. The run creates two users
through the Auth admin API, signs each in with the anon key, and deletes both at the end
(their events go with them through the foreign key's cascade), even when checks fail. What
happened is written to LIVE_REPORT (default live-report.md in the working directory).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.live.api import Caller, DataApi, caller_with_key, caller_with_token, in_list
from tests.live.report import REDACTED, LiveReport

REQUIRED_VARIABLES = ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY")
SECRET_VARIABLES = ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY", "SUPABASE_JWT_SECRET")
DEFAULT_EMAIL_DOMAIN = "example.com"
"""Reserved for documentation (RFC 2606): no mail to it reaches anyone. LIVE_EMAIL_DOMAIN
overrides it for projects whose Auth refuses the address."""
EMAIL_PREFIX = "engagement-live-check+"
"""Every test user's address starts with this, so a leftover of an interrupted run is easy to
find in the dashboard (Authentication > Users) and delete."""
LIVE_DIR = Path(__file__).resolve().parent
_REPORT_PATH_KEY = pytest.StashKey[Path]()


def missing_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The required variables that are unset or empty, in the documented order."""
    env = os.environ if environ is None else environ
    return [name for name in REQUIRED_VARIABLES if not env.get(name, "").strip()]


def skip_reason(missing: Sequence[str]) -> str:
    verb = "is" if len(missing) == 1 else "are"
    return (
        f"live checks need a real Supabase staging project: {', '.join(missing)} {verb} not set "
        "(see docs/live-checks.md)"
    )


OPT_IN_VARIABLE = "LIVE_CHECKS"
"""Set to 1 by scripts/live-check.sh. Credentials alone are not enough: a developer with a
project's keys exported must not create and delete users there by running scripts/test.sh."""

NOT_OPTED_IN = (
    "live checks create and delete users in the project: they run only through "
    "scripts/live-check.sh (LIVE_CHECKS=1)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder `live`, and skip them all when credentials are missing
    or the run did not opt in."""
    missing = missing_variables()
    skip = None
    if missing:
        skip = pytest.mark.skip(reason=skip_reason(missing))
    elif os.environ.get(OPT_IN_VARIABLE) != "1":
        skip = pytest.mark.skip(reason=NOT_OPTED_IN)
    for item in items:
        if LIVE_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.live)
            if skip is not None:
                item.add_marker(skip)


_active_report: LiveReport | None = None
"""The running session's report, whose secrets the hook below scrubs from pytest's output."""


def _scrub(text: str) -> str:
    known = [os.environ.get(name, "").strip() for name in SECRET_VARIABLES]
    if _active_report is not None:
        known += _active_report.secrets
    for secret in sorted((k for k in known if len(k) >= 8), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Scrub keys, tokens and passwords from failure output: pytest's long tracebacks print
    the arguments of every frame, and supabase-py's frames carry the Authorization header."""
    outcome: Any = yield
    if LIVE_DIR not in item.path.resolve().parents:
        return
    result: pytest.TestReport = outcome.get_result()
    message = _outcome_message(result)  # before scrubbing turns the traceback into plain text
    if result.longrepr is not None and not isinstance(result.longrepr, tuple):
        text = str(result.longrepr)
        scrubbed = _scrub(text)
        if scrubbed != text:
            result.longrepr = scrubbed
    result.sections = [(title, _scrub(content)) for title, content in result.sections]
    if _active_report is not None and (
        result.when == "call" or result.failed or (result.skipped and result.when == "setup")
    ):
        _active_report.test_outcome(
            f"{item.nodeid} ({result.when})" if result.when != "call" else item.nodeid,
            result.outcome,
            message,
        )


def _outcome_message(result: pytest.TestReport) -> str:
    if result.passed:
        return ""
    longrepr = result.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the report after every fixture was torn down (the test users' deletion included)."""
    if _active_report is not None:
        path = session.config.stash.get(_REPORT_PATH_KEY, None)
        if path is not None:
            _active_report.write(path)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    path = config.stash.get(_REPORT_PATH_KEY, None)
    if path is not None and _active_report is not None:
        terminalreporter.write_line(f"live report written to {path}")


@dataclass(frozen=True)
class LiveEnv:
    """The project under test and the run's settings; repr never shows a key."""

    url: str
    service_key: str
    anon_key: str
    jwt_secret: str | None
    email_domain: str
    report_path: Path
    run_id: str

    def __repr__(self) -> str:
        return f"LiveEnv({self.url!r}, run_id={self.run_id!r})"


def key_kind(key: str) -> str:
    """What kind of Supabase key this is, for the report (never the key itself)."""
    if key.startswith("sb_secret_"):
        return "secret key (sb_secret_...)"
    if key.startswith("sb_publishable_"):
        return "publishable key (sb_publishable_...)"
    try:
        header = jwt.get_unverified_header(key)
        claims = jwt.decode(key, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "not a recognised Supabase key"
    return f"legacy JWT key ({header.get('alg')}, role {claims.get('role')})"


@pytest.fixture(scope="session")
def live_env(request: pytest.FixtureRequest) -> LiveEnv:
    missing = missing_variables()
    if missing:  # also guards a run that deselects the collection hook's marker
        pytest.skip(skip_reason(missing))
    report_path = Path(os.environ.get("LIVE_REPORT") or "live-report.md").resolve()
    request.config.stash[_REPORT_PATH_KEY] = report_path
    return LiveEnv(
        url=os.environ["SUPABASE_URL"].strip().rstrip("/"),
        service_key=os.environ["SUPABASE_SERVICE_ROLE_KEY"].strip(),
        anon_key=os.environ["SUPABASE_ANON_KEY"].strip(),
        jwt_secret=os.environ.get("SUPABASE_JWT_SECRET", "").strip() or None,
        email_domain=os.environ.get("LIVE_EMAIL_DOMAIN", "").strip() or DEFAULT_EMAIL_DOMAIN,
        report_path=report_path,
        run_id=secrets.token_hex(4),
    )


@pytest.fixture(scope="session")
def report(live_env: LiveEnv) -> LiveReport:
    """The run's record, written when the session ends, whatever the outcome."""
    global _active_report
    record = LiveReport(project_url=live_env.url)
    _active_report = record
    for secret in (live_env.service_key, live_env.anon_key, live_env.jwt_secret):
        record.add_secret(secret)
    record.note(f"service key: {key_kind(live_env.service_key)}")
    record.note(f"anon key: {key_kind(live_env.anon_key)}")
    record.note(
        "SUPABASE_JWT_SECRET: "
        + ("given (HS256 service tokens are minted too)" if live_env.jwt_secret else "not given")
    )
    record.note(f"run id {live_env.run_id}; test users {EMAIL_PREFIX}{live_env.run_id}-a/-b")
    return record  # written by pytest_sessionfinish, after the users are deleted


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        yield client


@pytest.fixture(scope="session")
def api(live_env: LiveEnv, http: httpx.Client) -> DataApi:
    return DataApi(live_env.url, http)


@pytest.fixture(scope="session")
def service(live_env: LiveEnv) -> Caller:
    return caller_with_key("service_role", live_env.service_key)


@pytest.fixture(scope="session")
def anon(live_env: LiveEnv) -> Caller:
    return caller_with_key("anon", live_env.anon_key)


@dataclass(frozen=True)
class LiveUser:
    """A test user of this run, signed in."""

    name: str
    id: str
    email: str
    access_token: str = field(repr=False)
    caller: Caller = field(repr=False)


@dataclass(frozen=True)
class LiveUsers:
    a: LiveUser
    b: LiveUser


def _client(url: str, key: str) -> Any:
    from supabase import ClientOptions, create_client

    options = ClientOptions(auto_refresh_token=False, persist_session=False)
    return create_client(url, key, options=options)


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", None)
    parts = [str(p) for p in (status, code) if p]
    return " ".join(parts) or type(exc).__name__


@pytest.fixture(scope="session")
def users(
    live_env: LiveEnv, report: LiveReport, api: DataApi, service: Caller
) -> Iterator[LiveUsers]:
    """Two confirmed users created through the Auth admin API, signed in with the anon key;
    deleted at the end of the session even when a check (or this fixture) fails."""
    admin = _client(live_env.url, live_env.service_key)
    created: list[str] = []
    signed_in: list[LiveUser] = []
    area = "Test users (Auth admin API)"
    try:
        for letter in ("a", "b"):
            name = f"user {letter.upper()}"
            email = f"{EMAIL_PREFIX}{live_env.run_id}-{letter}@{live_env.email_domain}"
            # Random, and with every character class, so that the strictest password policy
            # a project can set (lower, upper, digit, symbol) accepts it.
            password = secrets.token_urlsafe(24) + "aZ7!"
            report.add_secret(password)
            try:
                made = admin.auth.admin.create_user(
                    {
                        "email": email,
                        "password": password,
                        "email_confirm": True,
                        "user_metadata": {"purpose": "engagement live check; deleted by the run"},
                    }
                )
            except Exception as exc:  # any Auth failure ends the run; the report says which
                report.record(
                    area,
                    "service_role",
                    f"create {name} ({email})",
                    expected="user created, email confirmed",
                    ok=False,
                    observed=f"{type(exc).__name__}: {exc}",
                    codes=[_error_code(exc)],
                )
                raise
            user_id = str(made.user.id)
            created.append(user_id)
            report.record(
                area,
                "service_role",
                f"create {name} ({email})",
                expected="user created, email confirmed",
                ok=made.user.email_confirmed_at is not None,
                observed=f"created {user_id}; confirmed at {made.user.email_confirmed_at}",
            )
            try:
                session = (
                    _client(live_env.url, live_env.anon_key)
                    .auth.sign_in_with_password({"email": email, "password": password})
                    .session
                )
            except Exception as exc:  # as above
                report.record(
                    area,
                    name,
                    "sign in with email and password (anon key)",
                    expected="a session with an access token",
                    ok=False,
                    observed=f"{type(exc).__name__}: {exc}",
                    codes=[_error_code(exc)],
                )
                raise
            assert session is not None, "sign-in returned no session"
            report.add_secret(session.access_token)
            report.add_secret(session.refresh_token)
            header = jwt.get_unverified_header(session.access_token)
            report.record(
                area,
                name,
                "sign in with email and password (anon key)",
                expected="a session with an access token",
                ok=True,
                observed=f"access token signed {header.get('alg')}, "
                f"expires in {session.expires_in} s",
            )
            signed_in.append(
                LiveUser(
                    name=name,
                    id=user_id,
                    email=email,
                    access_token=session.access_token,
                    caller=caller_with_token(
                        name, live_env.anon_key, session.access_token, user_id
                    ),
                )
            )
        yield LiveUsers(signed_in[0], signed_in[1])
    finally:
        for user_id in created:
            try:
                admin.auth.admin.delete_user(user_id)
            except Exception as exc:  # noqa: BLE001 - keep deleting the others; the report names it
                report.record(
                    area,
                    "service_role",
                    f"delete test user {user_id}",
                    expected="user deleted",
                    ok=False,
                    observed=f"{type(exc).__name__}: {exc}; delete it in the dashboard",
                    codes=[_error_code(exc)],
                )
            else:
                report.record(
                    area,
                    "service_role",
                    f"delete test user {user_id}",
                    expected="user deleted",
                    ok=True,
                    observed="deleted",
                )
        if created:
            left = api.select(service, user_id=in_list(created))
            report.record(
                area,
                "service_role",
                "look for the deleted users' events",
                expected="none left (on delete cascade)",
                ok=left.ok and not left.rows,
                observed=left.describe(),
                codes=[left.code],
            )

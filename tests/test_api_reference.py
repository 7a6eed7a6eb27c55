"""docs/api-usage.md cannot drift: its schema reference is what scripts/gen-api-reference.py
produces from schemas/ now, every event it shows passes the functions' validation, its curl
examples answer what it says they answer, and its Python examples run."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from functions import schemas, validation
from localdb.api_roles import request_as
from localdb.cluster import ROOT
from tests.conftest import AppFactory, Database

DOC = ROOT / "docs" / "api-usage.md"
SCRIPT = ROOT / "scripts" / "gen-api-reference.py"
SECRET = "api-usage-doc-jwt-secret-with-at-least-32-characters"
FUNCTIONS = ("batch_import", "convert_timestamps", "verify_service_jwt")
URL_VARIABLES = {
    "BATCH_IMPORT_URL": "batch_import",
    "CONVERT_TIMESTAMPS_URL": "convert_timestamps",
    "VERIFY_SERVICE_JWT_URL": "verify_service_jwt",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_reference", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blocks(language: str, text: str | None = None) -> list[str]:
    """The contents of the fenced code blocks of `language` in the document."""
    text = DOC.read_text() if text is None else text
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


# ------------------------------------------------------------------------- generated reference


def test_generated_section_is_what_the_schemas_produce_now() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr


def test_a_schema_change_makes_the_document_stale_until_regenerated(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", schemas)
    app_open = schemas / "events" / "app_open.schema.json"
    schema = json.loads(app_open.read_text())
    schema["properties"]["theme"] = {
        "description": "The colour scheme | light or dark.",
        "type": "string",
        "enum": ["light", "dark"],
    }
    schema["required"] = ["platform", "theme"]
    app_open.write_text(json.dumps(schema))
    (schemas / "events" / "sleep_log.schema.json").write_text(
        json.dumps(
            {
                "title": "sleep_log payload",
                "description": "The `value` of a `sleep_log` event: a night's sleep. More text.",
                "type": "object",
                "properties": {"minutes": {"type": "integer", "minimum": 0, "maximum": 1440}},
                "required": ["minutes"],
            }
        )
    )
    doc = tmp_path / "api-usage.md"
    shutil.copy(DOC, doc)
    args = [sys.executable, str(SCRIPT), "--doc", str(doc), "--schemas", str(schemas)]

    stale = subprocess.run([*args, "--check"], capture_output=True, text=True, check=False)
    assert stale.returncode == 1
    assert "theme" in stale.stdout
    subprocess.run(args, check=True, capture_output=True)
    assert subprocess.run([*args, "--check"], capture_output=True, check=False).returncode == 0

    text = doc.read_text()
    assert (
        "| `theme` | string | yes | one of `light`, `dark` | The colour scheme \\| light or dark. |"
        in text
    )
    assert "| `app_open` | [schemas/events/app_open.schema.json]" in text
    assert "| `sleep_log` | [schemas/events/sleep_log.schema.json]" in text
    assert "| `platform`, `theme` |" in text
    assert "| `minutes` | integer | yes | ≥ 0; ≤ 1440 |" in text
    # Everything outside the markers is left alone.
    before, after = DOC.read_text().split("<!-- BEGIN GENERATED")[0], text.split("<!-- BEGIN")[0]
    assert before == after


def test_every_payload_schema_and_property_is_in_the_document() -> None:
    text = DOC.read_text()
    for path in sorted((ROOT / "schemas" / "events").glob("*.schema.json")):
        name = path.name.removesuffix(".schema.json")
        assert f"### Payload of `{name}`" in text
        for prop in json.loads(path.read_text())["properties"]:
            assert f"| `{prop}` |" in text, (name, prop)


# --------------------------------------------------------------------- events shown are valid


def events_in_document() -> list[tuple[str, Any]]:
    """Every event the page shows: JSON blocks, curl bodies, the Python batches."""
    found: list[tuple[str, Any]] = []

    def collect(where: str, body: Any) -> None:
        if isinstance(body, list):
            found.extend((where, e) for e in body)
        elif isinstance(body, dict) and "events" in body:
            found.extend((where, e) for e in body["events"])
        elif isinstance(body, dict) and "event_type" in body:
            found.append((where, body))

    for block in blocks("json"):
        collect("json block", json.loads(block))
    for block in blocks("sh"):
        for body in re.findall(r"<<'?JSON'?\n(.*?)\nJSON$", block, re.MULTILINE | re.DOTALL):
            if "$" not in body:
                collect("curl body", json.loads(body))
    for block in blocks("python"):
        for match in re.finditer(r"^batch = (\{.*?^\})$", block, re.MULTILINE | re.DOTALL):
            collect("python batch", eval(match[1], {}))  # noqa: S307 - a literal from our own doc
    return found


def test_the_examples_show_every_known_event_type() -> None:
    shown = {e["event_type"] for _, e in events_in_document()}
    shown |= {kind for kind, _ in dart_payloads()}
    assert shown >= set(schemas.PAYLOAD_SCHEMAS)


def test_every_event_shown_passes_validation_except_the_one_shown_as_rejected() -> None:
    events = events_in_document()
    assert len(events) >= 6
    rejected = []
    for where, event in events:
        outcome = validation.normalise_event(
            event, 0, default_timezone="Europe/Berlin", received_at=datetime.now(UTC)
        )
        if isinstance(outcome, validation.Rejection):
            rejected.append((where, event["event_type"], [e.path for e in outcome.errors]))
    # The batch_import example shows one bad event on purpose; its answer lists both problems.
    assert rejected == [("curl body", "goal_complete", ["/value/goal_id", "/timestamp"])]


def dart_payloads() -> list[tuple[str, Any]]:
    """(event_type, value) of every insert in the Dart examples; values are JSON map literals."""
    found = []
    for block in blocks("dart"):
        for match in re.finditer(
            r"'event_type': '([a-z_]+)',\s*'value': (\{.*?\}),\n", block, re.DOTALL
        ):
            found.append((match[1], json.loads(match[2])))
    return found


def test_dart_inserts_send_valid_payloads() -> None:
    payloads = dart_payloads()
    assert {kind for kind, _ in payloads} == {"app_open", "goal_complete"}
    for kind, value in payloads:
        event = {
            "user_id": "a1a1a1a1-0000-4000-8000-000000000001",
            "event_type": kind,
            "timestamp": "2024-12-01T08:00:00Z",
            "value": value,
        }
        outcome = validation.normalise_event(
            event, 0, default_timezone=None, received_at=datetime.now(UTC)
        )
        assert not isinstance(outcome, validation.Rejection), (kind, outcome)


def test_dart_examples_use_the_tables_real_columns_and_channel_topic() -> None:
    dart = "\n".join(blocks("dart"))
    columns = set(re.findall(r"'(\w+)':", dart)) | set(re.findall(r"\.eq\('(\w+)'", dart))
    assert columns <= {"id", "user_id", "timestamp", "event_type", "value", "is_deleted"}
    assert "column: 'user_id'" in dart
    # The private channel's topic is the one the realtime.messages policies admit.
    assert "channel('engagement:$uid', opts: const RealtimeChannelConfig(private: true))" in dart
    migration = (
        ROOT / "supabase" / "migrations" / "20241210000000_realtime_graphql.sql"
    ).read_text()
    assert "'engagement:' || (select auth.uid())::text" in migration


# ------------------------------------------------------------------ examples against the code


def token(role: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"role": role, "iat": now, "exp": now + 3600}
    if role == "authenticated":
        claims["sub"] = "a1a1a1a1-0000-4000-8000-000000000001"
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass
class Services:
    """The three functions as one WSGI app, routed by host name (batch_import.test, ...)."""

    apps: dict[str, Any]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        host = environ["HTTP_HOST"].split(":")[0].removesuffix(".test")
        return self.apps[host](environ, start_response)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.WSGITransport(app=self), **kwargs)


@pytest.fixture
def services(db: Database, function_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> Services:
    env = {"SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": db.url, "SUPABASE_URL": None}
    apps = {name: function_app(name, **env) for name in FUNCTIONS}
    # One instance's state serves the three apps: configured as batch_import's (with a sink).
    monkeypatch.setenv("FUNCTION_TARGET", "batch_import")
    return Services(apps)


@dataclass
class Example:
    command: str
    body: str | None
    status: int
    answer: dict[str, Any]

    @property
    def url_variable(self) -> str:
        """The variable naming the function the curl calls (BATCH_IMPORT_URL, ...)."""
        found = re.search(r"\$(\w+_URL)", self.command)
        assert found is not None, f"no $..._URL in {self.command!r}"
        return found[1]


def curl_examples() -> list[Example]:
    """Each ```sh block with a curl that the page follows with "Answer `NNN`" and a JSON block."""
    text = DOC.read_text()
    pattern = re.compile(
        r"^```sh\n(?P<sh>curl .*?)^```\n\nAnswer `(?P<status>\d{3})`[^\n]*(?:\n[^\n`]+)*:\n\n"
        r"```json\n(?P<answer>.*?)^```",
        re.MULTILINE | re.DOTALL,
    )
    examples = []
    for match in pattern.finditer(text):
        sh = match["sh"]
        body = None
        heredoc = re.search(r" <<'?JSON'?\n(.*)\nJSON\n", sh, re.DOTALL)
        if heredoc:
            body = heredoc[1]
            sh = sh[: heredoc.start()]
        examples.append(
            Example(
                sh.replace("\\\n", " "),
                body,
                int(match["status"]),
                json.loads(match["answer"]),
            )
        )
    return examples


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: variables[m[1]], text)


def replay(client: httpx.Client, example: Example, variables: dict[str, str]) -> httpx.Response:
    argv = shlex.split(expand(example.command, variables))
    assert argv[0] == "curl"
    method, url, headers = "GET", "", {}
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(": ")
            headers[name] = value
        elif arg == "--data-binary":
            assert next(args) == "@-"
            method = "POST" if method == "GET" else method
        elif arg.startswith("http"):
            url = arg
    content = expand(example.body, variables).encode() if example.body is not None else None
    return client.request(method, url, headers=headers, content=content)


def same_answer(got: Any, shown: Any) -> bool:
    """Equal, except the values that differ on every call: request ids and token expiry."""
    if isinstance(shown, dict) and isinstance(got, dict):
        if set(got) != set(shown):
            return False
        for key, value in shown.items():
            if key == "request_id":
                if not isinstance(got[key], str) or not got[key]:
                    return False
            elif key == "expires_at" and value is not None:
                if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(got[key])):
                    return False
            elif not same_answer(got[key], value):
                return False
        return True
    if isinstance(shown, list) and isinstance(got, list):
        return len(got) == len(shown) and all(
            same_answer(g, s) for g, s in zip(got, shown, strict=True)
        )
    return bool(got == shown)


def test_curl_examples_answer_what_the_page_shows(services: Services) -> None:
    examples = curl_examples()
    urls = {variable: f"http://{name}.test/" for variable, name in URL_VARIABLES.items()}
    # The URL variables are used without a trailing slash in the page; the query follows "?".
    urls = {k: v.rstrip("/") for k, v in urls.items()}
    variables = {
        **urls,
        "SERVICE_ROLE_KEY": token("service_role"),
        "USER_ACCESS_TOKEN": token("authenticated"),
    }
    # Every answer the page shows belongs to an example that is replayed here.
    assert len(examples) == DOC.read_text().count("\nAnswer `") >= 6
    assert {e.url_variable for e in examples} == set(URL_VARIABLES)
    with services.client() as client:
        for example in examples:
            response = replay(client, example, variables)
            assert response.status_code == example.status, (example.command, response.json())
            assert same_answer(response.json(), example.answer), (
                example.command,
                response.json(),
            )
            assert response.headers["X-Request-Id"] == response.json()["request_id"]


def test_python_examples_run_against_the_functions(
    services: Services, monkeypatch: pytest.MonkeyPatch, db: Database
) -> None:
    for variable, name in URL_VARIABLES.items():
        monkeypatch.setenv(variable, f"http://{name}.test/")
    monkeypatch.setenv("SERVICE_ROLE_KEY", token("service_role"))
    real_client = httpx.Client
    monkeypatch.setattr(
        httpx,
        "Client",
        lambda **kwargs: real_client(transport=httpx.WSGITransport(app=services), **kwargs),
    )
    outputs = []
    for block in blocks("python"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, "api-usage.md", "exec"), {"__name__": "example"})  # noqa: S102
        outputs.append(printed.getvalue())
    assert outputs[0] == "inserted 2, duplicates 0\n"
    assert re.fullmatch(
        r"credential ok, expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n0 2024-12-01T07:30:00Z\n",
        outputs[1],
    )
    with db.connect() as conn:
        stored = conn.execute(
            "select event_type, value ->> 'steps' from public.engagement_events"
            " where user_id = 'b2b2b2b2-0000-4000-8000-000000000002'"
            " and timestamp = '2024-12-03T22:00:00Z'"
        ).fetchall()
    assert stored == [("steps_import", "10234")]  # 23:00 in Berlin is 22:00 UTC


def test_generator_module_renders_without_touching_the_document() -> None:
    before = DOC.read_text()
    section = load_generator().render()
    assert section.startswith("<!-- BEGIN GENERATED: schemas")
    assert section in before
    assert DOC.read_text() == before
    assert os.access(SCRIPT, os.R_OK)


def test_graphql_examples_name_real_columns_and_the_enabled_total_count(db: Database) -> None:
    """pg_graphql (without inflection) names fields after the columns; the example's filter,
    order, selection and `set` keys must be columns authenticated can use that way."""
    graphql = "\n".join(blocks("graphql"))
    with db.connect() as conn:
        readable = {
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.column_privileges"
                " where table_name = 'engagement_events' and grantee = 'authenticated'"
                " and privilege_type = 'SELECT'"
            ).fetchall()
        }
        updatable = {
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.column_privileges"
                " where table_name = 'engagement_events' and grantee = 'authenticated'"
                " and privilege_type = 'UPDATE'"
            ).fetchall()
        }
        comment = conn.execute(
            "select obj_description('public.engagement_events'::regclass, 'pg_class')"
        ).fetchone()
    node = re.search(r"node \{ ([\w ]+) \}", graphql)
    assert node
    assert set(node[1].split()) <= readable
    assert set(re.findall(r"filter: \{ (\w+):", graphql)) <= readable
    assert set(re.findall(r"orderBy: \[\{ (\w+):", graphql)) <= readable
    assert set(re.findall(r"set: \{ (\w+):", graphql)) <= updatable == {"is_deleted"}
    assert "totalCount" in graphql
    assert comment is not None
    assert '"totalCount": {"enabled": true}' in comment[0]
    assert "engagement_eventsCollection" in graphql


def test_the_apps_idempotent_insert_works_for_a_signed_in_user(db: Database) -> None:
    """The Dart `upsert(..., onConflict: 'id', ignoreDuplicates: true)` is PostgREST's
    INSERT ... ON CONFLICT (id) DO NOTHING: a retry stores nothing twice and needs no UPDATE
    right, which users do not have beyond is_deleted."""
    ana = "a1a1a1a1-0000-4000-8000-000000000001"
    row_id = "7e1d2c3b-4a5f-4e6d-8c7b-9a0b1c2d3e4f"
    with psycopg.connect(db.cluster.dsn("authenticator", db.name)) as conn:
        for _ in range(2):
            with request_as(conn, "authenticated", ana):
                conn.execute(
                    "insert into public.engagement_events (id, user_id, timestamp, event_type, value)"
                    " values (%s, %s, now(), 'app_open', '{\"platform\": \"ios\"}')"
                    " on conflict (id) do nothing",
                    (row_id, ana),
                )
        with request_as(conn, "authenticated", ana):
            count = conn.execute(
                "select count(*) from public.engagement_events where id = %s", (row_id,)
            ).fetchone()
    assert count == (1,)

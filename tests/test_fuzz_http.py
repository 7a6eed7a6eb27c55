"""Fuzzing the three functions from openapi.yaml with the schemathesis CLI.

The functions are served on loopback by a real HTTP server, mounted at the documented paths as
Cloud Functions serves them, with the direct sink into the test database. The schemathesis CLI,
from its own environment (``tests.fuzz_env``), sends requests generated from the document (valid
ones, and ones that break it on purpose) with a valid service-role token, and checks that every
answer is documented and free of server errors. Every answer the server gave is also held to the
contract's own reading (``tests.openapi_contract``), and afterwards a valid batch must still
import.

Deterministic (a fixed seed, derandomized generation, no example database) and bounded so that
the whole module runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.exceptions import NotFound
from werkzeug.serving import make_server

from tests import openapi_contract as contract
from tests.conftest import (
    ANA,
    BEN,
    SECRET,
    AppFactory,
    Database,
    event,
    json_body,
    stored,
    token,
)
from tests.fuzz_env import fuzz_tool

EXAMPLES_PER_OPERATION = 20
"""Generated requests, at most, per operation and generation mode."""

OPERATIONS = {
    ("/batch_import", "POST"),
    ("/convert_timestamps", "GET"),
    ("/convert_timestamps", "POST"),
    ("/verify_service_jwt", "GET"),
    ("/verify_service_jwt", "POST"),
}

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)

StartResponse = Callable[..., Any]


class _Functions:
    """WSGI app that hands `/NAME...` to the function NAME with the path below it (at least
    `/`), the way the Cloud Functions front end serves each function under its own name."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = apps

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        path = environ.get("PATH_INFO", "")
        name, _, rest = path.lstrip("/").partition("/")
        app = self.apps.get(name)
        if app is None:
            return NotFound()(environ, start_response)
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/" + name
        environ["PATH_INFO"] = "/" + rest
        return app(environ, start_response)


@dataclass
class _Exchange:
    path: str
    method: str
    answer: contract.Answer


@dataclass
class _Recorder:
    """WSGI middleware that keeps every answer, and gives every other generated event a user
    of the seed, so that valid events are stored (generated UUIDs name no user, and such events
    are rejected before any row is written)."""

    app: Any
    exchanges: list[_Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path.startswith("/batch_import") and method == "POST":
            _owned_by_known_users(environ)
        seen: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)
            return start_response(status, headers, exc_info)

        body = b"".join(self.app(environ, start))
        headers: dict[str, str] = seen["headers"]
        answer = contract.Answer(
            status=seen["status"],
            headers=headers,
            body=body,
            content_type=headers.get("Content-Type", "").split(";")[0],
        )
        documented = "/" + path.lstrip("/").partition("/")[0]
        with self.lock:
            self.exchanges.append(_Exchange(documented, method, answer))
        return [body]


def _owned_by_known_users(environ: dict[str, Any]) -> None:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    try:
        body = json.loads(raw) if not environ.get("HTTP_CONTENT_ENCODING") else None
    except ValueError:
        body = None
    events = body.get("events") if isinstance(body, dict) else body
    if isinstance(events, list):
        for position, item in enumerate(events):
            if position % 2 == 0 and isinstance(item, dict) and "user_id" in item:
                item["user_id"] = ANA if position % 4 == 0 else BEN
        raw = json.dumps(body).encode()
    environ["wsgi.input"] = io.BytesIO(raw)
    environ["CONTENT_LENGTH"] = str(len(raw))


@pytest.fixture
def served(db: Database, function_app: AppFactory) -> Iterator[tuple[str, _Recorder]]:
    """The three functions on loopback, each under its own name, as on cloudfunctions.net:
    the base URL and the recorder of every answer."""
    env = {"SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": db.url, "SUPABASE_URL": None}
    functions = _Functions(
        {
            target: function_app(target, **env)
            for target in ("batch_import", "convert_timestamps", "verify_service_jwt")
        }
    )
    recorder = _Recorder(functions)
    server = make_server("127.0.0.1", 0, recorder, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", recorder
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_generated_requests_get_documented_answers(
    served: tuple[str, _Recorder], function_app: AppFactory, db: Database, tmp_path: Path
) -> None:
    url, recorder = served
    run = subprocess.run(
        [
            fuzz_tool("schemathesis"),
            "--no-color",
            "run",
            contract.OPENAPI_PATH,
            "--url",
            url,
            "--header",
            f"Authorization: Bearer {token()}",
            "--checks",
            CHECKS,
            "--phases",
            "examples,fuzzing",
            "--mode",
            "all",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            "1",
            "--generation-deterministic",  # implies no example database
            "--suppress-health-check",
            "all",
            "--continue-on-failure",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=tmp_path,  # what the CLI keeps between runs stays out of the project
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]

    # schemathesis also sends probes of its own (the server root, an odd path): not operations.
    exchanges = [x for x in recorder.exchanges if (x.path, x.method) in OPERATIONS]
    assert {(x.path, x.method) for x in exchanges} == OPERATIONS
    assert len(exchanges) >= 5 * len(OPERATIONS), "requests were generated and sent"
    for exchange in exchanges:
        answer = exchange.answer
        assert answer.status < 500, answer.body[:300]
        assert contract.contract_problems(answer, exchange.path, exchange.method) == []
        if answer.status >= 400 and not (exchange.path == "/batch_import" and answer.status == 422):
            body = answer.json
            assert isinstance(body.get("error"), str)
            assert body["error"]
            assert isinstance(body.get("message"), str)
            assert body["message"]
    assert any(x.path == "/batch_import" and x.answer.status == 200 for x in exchanges), (
        "some generated batch was stored"
    )

    # The server is still healthy: a valid batch imports and is stored.
    client = function_app("batch_import").test_client()
    healthy = client.post(
        "/",
        json=[event(timestamp="2025-07-01T09:00:00Z", timezone=None, value={"platform": "web"})],
        headers={"Authorization": f"Bearer {token()}"},
    )
    assert healthy.status_code == 200, healthy.get_data()[:300]
    body = json_body(healthy)
    assert body["inserted"] + body["duplicates"] == 1
    assert any(
        row[0] == ANA and row[1].isoformat() == "2025-07-01T09:00:00+00:00"
        for row in stored(db, since="2025-07-01T00:00:00Z")
    )

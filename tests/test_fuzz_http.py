"""Fuzzing the three functions from openapi.yaml with schemathesis.

Requests generated from the document (valid ones, and ones that break it on purpose) go through
the real functions-framework apps, mounted at the documented paths as Cloud Functions serves
them, with a valid service-role token and the direct sink into the test database. Every answer
must be documented, free of server errors, and, when it is a rejection, a 4xx with the
contract's JSON error body; afterwards a valid batch must still import.

Deterministic (derandomized Hypothesis, no example database) and bounded so that the whole
module runs in seconds.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.exceptions import NotFound

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

EXAMPLES_PER_OPERATION = 20
"""Generated requests, at most, per operation and generation mode (9 runs)."""

OPERATIONS = [
    ("/batch_import", "POST"),
    ("/convert_timestamps", "GET"),
    ("/convert_timestamps", "POST"),
    ("/verify_service_jwt", "GET"),
    ("/verify_service_jwt", "POST"),
]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

SCHEMA = schemathesis.openapi.from_path(contract.OPENAPI_PATH)


class _Functions:
    """WSGI app that hands `/NAME...` to the function NAME with the path below it (at least
    `/`), the way the Cloud Functions front end serves each function under its own name."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = apps

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        name, _, rest = path.lstrip("/").partition("/")
        app = self.apps.get(name)
        if app is None:
            return NotFound()(environ, start_response)
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/" + name
        environ["PATH_INFO"] = "/" + rest
        return app(environ, start_response)


@pytest.fixture
def functions_app(db: Database, function_app: AppFactory) -> Any:
    """The three functions as one WSGI app, each under its own name, as on cloudfunctions.net."""
    env = {"SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": db.url, "SUPABASE_URL": None}
    return _Functions(
        {
            target: function_app(target, **env)
            for target in ("batch_import", "convert_timestamps", "verify_service_jwt")
        }
    )


def _owned_by_known_users(body: Any) -> None:
    """Give every other generated event a user of the seed, so that valid events are stored
    (generated UUIDs name no user, and such events are rejected before any row is written)."""
    events = body.get("events") if isinstance(body, dict) else body
    if not isinstance(events, list):
        return
    for position, item in enumerate(events):
        if position % 2 == 0 and isinstance(item, dict) and "user_id" in item:
            item["user_id"] = ANA if position % 4 == 0 else BEN


def _check_answer(case: Any, response: Any, path: str, method: str) -> None:
    """The schemathesis checks, and the contract's own reading of the same answer."""
    case.validate_response(response, checks=CHECKS)
    # schemathesis keeps every value of a header, in a list
    headers = {
        name: values[0] if isinstance(values, list) else values
        for name, values in response.headers.items()
    }
    lowered = {name.lower(): value for name, value in headers.items()}
    answer = contract.Answer(
        status=response.status_code,
        headers=headers,
        body=response.content,
        content_type=lowered.get("content-type", "").split(";")[0],
    )
    assert answer.status < 500, answer.body[:300]
    assert contract.contract_problems(answer, path, method) == []
    body = answer.json
    if answer.status >= 400 and not (path == "/batch_import" and answer.status == 422):
        assert isinstance(body.get("error"), str)
        assert body["error"]
        assert isinstance(body.get("message"), str)
        assert body["message"]
        assert body["request_id"] == lowered["x-request-id"]


# GET /verify_service_jwt has nothing that could be sent wrong (two free-text headers), so
# there are no negative cases for it.
RUNS = [
    (path, method, mode)
    for path, method in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if (path, method, mode) != ("/verify_service_jwt", "GET", GenerationMode.NEGATIVE)
]


@pytest.mark.parametrize(
    ("path", "method", "mode"), RUNS, ids=[f"{m} {p} {g.value}" for p, m, g in RUNS]
)
def test_generated_requests_get_documented_answers(
    functions_app: Any,
    function_app: AppFactory,
    db: Database,
    path: str,
    method: str,
    mode: GenerationMode,
) -> None:
    operation = SCHEMA[path][method]
    strategy = operation.as_strategy(
        generation_mode=mode, headers={"Authorization": f"Bearer {token()}"}
    )
    statuses: list[int] = []

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        if path == "/batch_import":
            _owned_by_known_users(case.body)
        response = case.call(app=functions_app)
        statuses.append(response.status_code)
        _check_answer(case, response, path, method)

    run()
    assert statuses, "requests were generated and sent"
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

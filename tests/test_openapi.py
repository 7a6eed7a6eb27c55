"""openapi.yaml is valid OpenAPI 3.1 and true to the code: every status it documents is produced
by the real functions-framework app and answered with the documented body and headers, every
error code the code can raise is listed, and its request schemas are generated from the files in
schemas/ and equal to them."""

from __future__ import annotations

import ast
import gzip
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from functions import errors, handlers, http
from functions.errors import (
    EngagementError,
    MalformedRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RateLimited,
    StoreError,
    StoreUnavailable,
    UnsupportedMediaType,
)
from functions.sinks import FailureRecord, RateLimit, WriteResult
from localdb.cluster import ROOT, free_port
from tests import openapi_contract as contract
from tests.conftest import (
    ClientFactory,
    auth,
    event,
    token,
)
from tests.fuzz_env import fuzz_tool

FUNCTIONS = ROOT / "functions"
GENERATOR = ROOT / "scripts" / "gen-openapi-schemas.py"


# --- the document itself --------------------------------------------------------------------


# Run by the fuzz environment's interpreter (schemathesis lives there): the document loaded by
# schemathesis, each operation's schema checked; prints the operations' labels and the OpenAPI
# 3.1 meta-schema schemathesis ships, which the document is then validated against here.
_LOAD_WITH_SCHEMATHESIS = """
import json, sys
import schemathesis
from schemathesis.core.result import Err
from schemathesis.specs.openapi.definitions import OPENAPI_31
loaded = schemathesis.openapi.from_path(sys.argv[1])
loaded.validate()
labels = []
for operation in loaded.get_all_operations():
    if isinstance(operation, Err):
        raise operation.err()
    labels.append(operation.ok().label)
print(json.dumps({"labels": labels, "meta_schema": OPENAPI_31}))
"""


def test_document_is_valid_openapi_3_1() -> None:
    doc = contract.document()
    assert doc["openapi"].startswith("3.1.")
    run = subprocess.run(
        [fuzz_tool("python"), "-c", _LOAD_WITH_SCHEMATHESIS, contract.OPENAPI_PATH],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout)
    jsonschema.Draft202012Validator(loaded["meta_schema"]).validate(doc)
    labels = set(loaded["labels"])
    assert labels == {
        "POST /batch_import",
        "GET /convert_timestamps",
        "POST /convert_timestamps",
        "GET /verify_service_jwt",
        "POST /verify_service_jwt",
    }


def test_every_schema_object_is_a_valid_2020_12_schema() -> None:
    schemas = list(contract.walk_schemas(contract.document()))
    assert len(schemas) > 30
    for where, schema in schemas:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:  # pragma: no cover - message for the failure
            pytest.fail(f"{where}: {exc.message}")


def test_every_reference_resolves() -> None:
    text = contract.OPENAPI_PATH.read_text(encoding="utf-8")
    refs = set(re.findall(r"""\$ref: ["']([^"']+)["']""", text))
    assert refs, "the document uses references"
    for ref in refs:
        assert contract.resolve({"$ref": ref}) is not None, ref


def test_operation_ids_are_unique() -> None:
    ids = [
        op["operationId"]
        for item in contract.document()["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(ids) == len(set(ids)) == 5


# --- request schemas equal schemas/*.json ------------------------------------------------------


def _schema_file(path: Path) -> dict[str, Any]:
    loaded = json.loads(path.read_text(encoding="utf-8"))
    loaded.pop("$schema")
    loaded.pop("$id")
    return dict(loaded)


def test_event_schema_is_the_one_in_schemas() -> None:
    components = contract.document()["components"]["schemas"]
    assert components["Event"] == _schema_file(ROOT / "schemas" / "event.schema.json")


def test_batch_envelope_is_the_one_in_schemas_with_events_typed() -> None:
    components = contract.document()["components"]["schemas"]
    documented = json.loads(json.dumps(components["BatchEnvelope"]))
    items = documented["properties"]["events"].pop("items")
    expected = _schema_file(ROOT / "schemas" / "batch.schema.json")
    expected_items = expected["properties"]["events"].pop("items")
    assert documented == expected
    # The one addition: the document says what an event looks like; the code validates each
    # event on its own, so the envelope file leaves items open.
    assert items == {**expected_items, "$ref": "#/components/schemas/Event"}


def test_convert_request_is_the_one_in_schemas_with_items_typed() -> None:
    components = contract.document()["components"]["schemas"]
    documented = json.loads(json.dumps(components["ConvertRequest"]))
    items = documented["properties"]["timestamps"].pop("items")
    expected = _schema_file(ROOT / "schemas" / "convert.schema.json")
    expected_items = expected["properties"]["timestamps"].pop("items")
    assert documented == expected
    assert items == {**expected_items, "$ref": "#/components/schemas/ConvertItem"}


def test_generated_schemas_are_what_the_files_produce_now() -> None:
    run = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr


def test_a_schema_change_makes_the_document_stale_until_regenerated(tmp_path: Path) -> None:
    schemas_copy = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", schemas_copy)
    document = tmp_path / "openapi.yaml"
    shutil.copy(contract.OPENAPI_PATH, document)
    convert = schemas_copy / "convert.schema.json"
    schema = json.loads(convert.read_text(encoding="utf-8"))
    schema["properties"]["default_timezone"]["maxLength"] = 99
    convert.write_text(json.dumps(schema), encoding="utf-8")
    args = [sys.executable, str(GENERATOR), "--document", str(document), "--schemas"]

    stale = subprocess.run([*args, str(schemas_copy), "--check"], capture_output=True, text=True)
    assert stale.returncode == 1
    assert "maxLength: 99" in stale.stdout
    subprocess.run([*args, str(schemas_copy)], capture_output=True, check=True)
    regenerated = yaml.safe_load(document.read_text(encoding="utf-8"))
    request = regenerated["components"]["schemas"]["ConvertRequest"]
    assert request["properties"]["default_timezone"]["maxLength"] == 99
    assert regenerated["paths"] == contract.document()["paths"]


def test_every_payload_schema_is_documented() -> None:
    components = contract.document()["components"]["schemas"]
    files = sorted((ROOT / "schemas" / "events").glob("*.schema.json"))
    assert files
    for path in files:
        event_type = path.name.removesuffix(".schema.json")
        name = "".join(part.capitalize() for part in event_type.split("_")) + "Value"
        assert components.get(name) == _schema_file(path), f"{name} differs from {path.name}"


def test_documented_examples_match_their_schemas() -> None:
    body = contract.operation("/batch_import", "post")["requestBody"]["content"]["application/json"]
    pointer = "/paths/~1batch_import/post/requestBody/content/application~1json/schema"
    for name, example in body["examples"].items():
        assert contract.schema_errors(pointer, example["value"]) == [], name
    convert = contract.operation("/convert_timestamps", "post")["requestBody"]["content"]
    pointer = "/paths/~1convert_timestamps/post/requestBody/content/application~1json/schema"
    assert contract.schema_errors(pointer, convert["application/json"]["example"]) == []


# --- every error code the code can raise is listed ----------------------------------------------


def _docstring_codes(cls: type[EngagementError]) -> set[str]:
    doc = cls.__doc__ or ""
    listed = doc.split("is one of:", 1)[1].split(".", 1)[0]
    return set(re.findall(r"``([a-z_]+)``", listed))


def _raised_codes(class_names: set[str]) -> set[str]:
    """Every `code="..."` literal passed to one of `class_names` anywhere in functions/."""
    found: set[str] = set()
    for path in FUNCTIONS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name not in class_names:
                continue
            for keyword in node.keywords:
                if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    found.add(str(keyword.value.value))
    return found


def _codes_in_tuples(module_path: Path) -> set[str]:
    """Codes kept in data tables, such as service_auth's PyJWT error table."""
    text = module_path.read_text(encoding="utf-8")
    return set(re.findall(r'\(jwt\.\w+, "([a-z_]+)"', text))


def test_every_auth_error_code_is_documented() -> None:
    documented = contract.enum_values(contract.document()["components"]["schemas"]["AuthErrorCode"])
    raised = (
        _raised_codes({"AuthError"})
        | _codes_in_tuples(FUNCTIONS / "service_auth.py")
        | _docstring_codes(errors.AuthError)
        | {errors.AuthError.code}
    )
    assert "bad_signature" in raised
    assert "missing_credentials" in raised
    assert raised <= documented, raised - documented
    for path, method in [
        ("/batch_import", "post"),
        ("/convert_timestamps", "get"),
        ("/convert_timestamps", "post"),
    ]:
        assert contract.error_codes_for(path, method, 401) >= raised
        assert contract.error_codes_for(path, method, 403) == {errors.NotServiceRole.code}
    for method in ("get", "post"):
        assert contract.error_codes_for("/verify_service_jwt", method, 401) >= raised
        assert contract.error_codes_for("/verify_service_jwt", method, 403) == {"not_service_role"}


def test_every_timestamp_error_code_is_documented() -> None:
    documented = contract.enum_values(
        contract.document()["components"]["schemas"]["TimestampErrorCode"]
    )
    raised = _raised_codes({"TimestampError"}) | _docstring_codes(errors.TimestampError)
    assert {"nonexistent_local_time", "ambiguous_local_time", "timestamp_in_future"} <= raised
    assert raised | {errors.TimestampError.code} <= documented
    assert contract.error_codes_for("/convert_timestamps", "get", 422) == documented


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (MalformedRequest("m"), 400),
        (MethodNotAllowed("m", allowed=("POST",)), 405),
        (PayloadTooLarge("m"), 413),
        (UnsupportedMediaType("m"), 415),
        (RateLimited("m", retry_after=3), 429),
        (StoreError("m", code="42501"), 502),
        (StoreUnavailable("m"), 503),
        (errors.ConfigError("m"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_each_exception_maps_to_a_documented_status_and_code(
    error: EngagementError, status: int
) -> None:
    """The one status table in functions/http.py and the document agree, code by code."""
    assert http.status_for(error) == status
    answer = contract.from_flask(http.error_response(error, "req-00000001"))
    assert answer.status == status
    assert answer.json["error"] in contract.error_codes_for("/batch_import", "post", status)
    assert contract.contract_problems(answer, "/batch_import", "post") == []


# --- every documented status, produced by the real app ------------------------------------------


class FakeSink:
    """A sink that fails, or limits the rate, the way a test asks; nothing is written."""

    def __init__(self, *, fail: Exception | None = None, wait: int = 0) -> None:
        self.fail = fail
        self.wait = wait
        self.rate_checks = 0

    def write(
        self,
        rows: Sequence[Any],
        *,
        atomic: bool,
        deadline: float,
        rate: RateLimit | None = None,
    ) -> WriteResult:
        if rate is not None:
            self.rate_checks += 1
            if self.wait:
                return WriteResult(inserted=0, duplicates=0, retry_after=self.wait)
        if self.fail is not None:
            raise self.fail
        return WriteResult(inserted=len(rows), duplicates=0)

    def record_failures(self, failures: Sequence[FailureRecord], *, deadline: float) -> int:
        return len(failures)

    def take_rate_limit(
        self,
        caller: str,
        events: int,
        *,
        requests_per_minute: int,
        events_per_minute: int,
        deadline: float,
    ) -> int:
        self.rate_checks += 1
        return self.wait

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Scenario:
    """One request to one function, the status it must get, and under which conditions."""

    name: str
    path: str
    method: str
    status: int
    request: Callable[[], dict[str, Any]] = dict
    env: dict[str, str] = field(default_factory=dict)
    sink: Callable[[], FakeSink] | None = None
    misconfigure: bool = False
    """Break the configuration after the app has started (the settings are read again)."""
    documented_as: str | None = None
    """The operation whose responses document this answer, when the method is not documented
    itself (wrong methods are answered 405 as the path's operations document it)."""


def _json(body: Any, **extra: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"json": body, "headers": auth(), **extra}


def _raw(data: bytes, content_type: str = "application/json", **headers: str) -> Callable[[], Any]:
    return lambda: {"data": data, "content_type": content_type, "headers": {**auth(), **headers}}


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


UNKNOWN_USER = "00000000-0000-4000-8000-000000000000"
OTHER_SECRET = "another-secret-of-at-least-32-characters!"

SCENARIOS: list[Scenario] = [
    # batch_import
    Scenario("import-ok", "/batch_import", "post", 200, _json([event()])),
    Scenario(
        "import-partial",
        "/batch_import",
        "post",
        200,
        _json([event(), event(user_id=UNKNOWN_USER, timestamp="2025-06-01T09:00:00")]),
    ),
    Scenario(
        "import-gzip",
        "/batch_import",
        "post",
        200,
        _raw(gzip.compress(json.dumps([event()]).encode()), **{"Content-Encoding": "gzip"}),
    ),
    Scenario("import-bad-json", "/batch_import", "post", 400, _raw(b"{not json")),
    Scenario("import-empty", "/batch_import", "post", 400, _json({"events": []})),
    Scenario("import-bad-mode", "/batch_import", "post", 400, _json({"events": [{}], "mode": "x"})),
    Scenario("import-nan", "/batch_import", "post", 400, _raw(b"[1, NaN]")),
    Scenario("import-dup-keys", "/batch_import", "post", 400, _raw(b'{"events":[],"events":[]}')),
    Scenario("import-bad-utf8", "/batch_import", "post", 400, _raw(b"\xff\xfe{}")),
    Scenario("import-deep", "/batch_import", "post", 400, _raw(b"[" * 100_000 + b"]" * 100_000)),
    Scenario(
        "import-bad-gzip",
        "/batch_import",
        "post",
        400,
        _raw(b"nope", **{"Content-Encoding": "gzip"}),
    ),
    Scenario(
        "import-bad-zone",
        "/batch_import",
        "post",
        400,
        _json({"events": [event()], "default_timezone": "Mars/Olympus"}),
    ),
    Scenario("import-no-auth", "/batch_import", "post", 401, lambda: {"json": [event()]}),
    Scenario(
        "import-bad-signature",
        "/batch_import",
        "post",
        401,
        lambda: {"json": [event()], "headers": _bearer(token(secret=OTHER_SECRET))},
    ),
    Scenario(
        "import-expired",
        "/batch_import",
        "post",
        401,
        lambda: {"json": [event()], "headers": _bearer(token(exp_in=-3600))},
    ),
    Scenario(
        "import-unknown-secret-key",
        "/batch_import",
        "post",
        401,
        lambda: {"json": [event()], "headers": {"apikey": "sb_secret_not-a-key-of-this-project"}},
    ),
    Scenario(
        "import-user-token",
        "/batch_import",
        "post",
        403,
        lambda: {"json": [event()], "headers": _bearer(token("authenticated"))},
    ),
    Scenario(
        "import-get", "/batch_import", "get", 405, lambda: {"headers": auth()}, documented_as="post"
    ),
    Scenario(
        "import-too-many",
        "/batch_import",
        "post",
        413,
        _json([event(), event(), event()]),
        env={"MAX_BATCH_EVENTS": "2"},
    ),
    Scenario(
        "import-too-big",
        "/batch_import",
        "post",
        413,
        _json([event(value={"note": "x" * 5000})]),
        env={"MAX_BODY_BYTES": "4096", "MAX_EVENT_BYTES": "1024"},
    ),
    Scenario(
        "import-gzip-bomb",
        "/batch_import",
        "post",
        413,
        _raw(gzip.compress(b"[" + b" " * 1_000_000 + b"]"), **{"Content-Encoding": "gzip"}),
        env={"MAX_BODY_BYTES": "65536", "MAX_EVENT_BYTES": "1024"},
    ),
    Scenario("import-text", "/batch_import", "post", 415, _raw(b"events", "text/plain")),
    Scenario(
        "import-brotli", "/batch_import", "post", 415, _raw(b"[]", **{"Content-Encoding": "br"})
    ),
    Scenario(
        "import-all-rejected",
        "/batch_import",
        "post",
        422,
        _json([event(user_id="not-a-uuid")]),
    ),
    Scenario(
        "import-atomic",
        "/batch_import",
        "post",
        422,
        _json({"mode": "atomic", "events": [event(), event(timestamp="not a time")]}),
    ),
    Scenario(
        "import-rate-limited",
        "/batch_import",
        "post",
        429,
        _json([event()]),
        sink=lambda: FakeSink(wait=17),
    ),
    Scenario(
        "import-unexpected",
        "/batch_import",
        "post",
        500,
        _json([event()]),
        sink=lambda: FakeSink(fail=RuntimeError("boom")),
    ),
    Scenario(
        "import-store-refused",
        "/batch_import",
        "post",
        502,
        _json([event()]),
        sink=lambda: FakeSink(fail=StoreError("refused", code="42501", hint="grant insert")),
    ),
    Scenario(
        "import-store-down",
        "/batch_import",
        "post",
        503,
        _json([event()]),
        env={"DATABASE_URL": "closed-port"},
    ),
    Scenario(
        "import-store-timeout",
        "/batch_import",
        "post",
        503,
        _json([event()]),
        sink=lambda: FakeSink(fail=StoreUnavailable("timed out", code="57014", retry_after=9)),
    ),
    # convert_timestamps, GET
    Scenario(
        "convert-one",
        "/convert_timestamps",
        "get",
        200,
        lambda: {"query_string": {"timestamp": "2024-11-03T01:30:00-04:00"}, "headers": auth()},
    ),
    Scenario("convert-one-missing", "/convert_timestamps", "get", 400, lambda: {"headers": auth()}),
    Scenario(
        "convert-one-no-auth",
        "/convert_timestamps",
        "get",
        401,
        lambda: {"query_string": {"timestamp": "2024-11-03T01:30:00Z"}},
    ),
    Scenario(
        "convert-one-user",
        "/convert_timestamps",
        "get",
        403,
        lambda: {
            "query_string": {"timestamp": "2024-11-03T01:30:00Z"},
            "headers": _bearer(token("authenticated")),
        },
    ),
    Scenario(
        "convert-put",
        "/convert_timestamps",
        "put",
        405,
        lambda: {"headers": auth()},
        documented_as="get",
    ),
    Scenario(
        "convert-one-ambiguous",
        "/convert_timestamps",
        "get",
        422,
        lambda: {
            "query_string": {"timestamp": "2024-11-03T01:30:00", "timezone": "America/New_York"},
            "headers": auth(),
        },
    ),
    Scenario(
        "convert-one-misconfigured",
        "/convert_timestamps",
        "get",
        500,
        lambda: {"query_string": {"timestamp": "2024-11-03T01:30:00Z"}, "headers": auth()},
        misconfigure=True,
    ),
    # convert_timestamps, POST
    Scenario(
        "convert-many-misconfigured",
        "/convert_timestamps",
        "post",
        500,
        _json({"timestamps": [{"timestamp": "2024-12-01T08:30:00Z"}]}),
        misconfigure=True,
    ),
    Scenario(
        "convert-many",
        "/convert_timestamps",
        "post",
        200,
        _json(
            {
                "timestamps": [
                    {"timestamp": "2024-12-01T08:30:00", "timezone": "Europe/Berlin"},
                    {"timestamp": "2024-03-10T02:30:00", "timezone": "America/New_York"},
                    {"timestamp": "2024-12-01T13:15:00.25"},
                    {"timestamp": "2024-12-01T08:00:00", "timezone": "Mars/Olympus"},
                    {"timestamp": 17},
                ],
                "default_timezone": "Asia/Kathmandu",
            }
        ),
    ),
    Scenario("convert-many-empty", "/convert_timestamps", "post", 400, _json({"timestamps": []})),
    Scenario(
        "convert-many-no-auth",
        "/convert_timestamps",
        "post",
        401,
        lambda: {"json": {"timestamps": [{"timestamp": "2024-12-01T08:30:00Z"}]}},
    ),
    Scenario(
        "convert-many-user",
        "/convert_timestamps",
        "post",
        403,
        lambda: {
            "json": {"timestamps": [{"timestamp": "2024-12-01T08:30:00Z"}]},
            "headers": _bearer(token("authenticated")),
        },
    ),
    Scenario(
        "convert-delete",
        "/convert_timestamps",
        "delete",
        405,
        lambda: {"headers": auth()},
        documented_as="post",
    ),
    Scenario(
        "convert-many-too-many",
        "/convert_timestamps",
        "post",
        413,
        _json({"timestamps": [{"timestamp": "2024-12-01T08:30:00Z"}] * 3}),
        env={"MAX_BATCH_EVENTS": "2"},
    ),
    Scenario("convert-many-text", "/convert_timestamps", "post", 415, _raw(b"x", "text/plain")),
    # verify_service_jwt, GET
    Scenario("verify-ok", "/verify_service_jwt", "get", 200, lambda: {"headers": auth()}),
    Scenario(
        "verify-secret-key",
        "/verify_service_jwt",
        "get",
        200,
        lambda: {"headers": {"apikey": "sb_secret_openapi-test-key"}},
        env={"SUPABASE_SECRET_KEYS": "sb_secret_openapi-test-key"},
    ),
    Scenario("verify-none", "/verify_service_jwt", "get", 401),
    Scenario(
        "verify-expired",
        "/verify_service_jwt",
        "get",
        401,
        lambda: {"headers": _bearer(token(exp_in=-600))},
    ),
    Scenario(
        "verify-user",
        "/verify_service_jwt",
        "get",
        403,
        lambda: {"headers": _bearer(token("authenticated"))},
    ),
    Scenario(
        "verify-publishable",
        "/verify_service_jwt",
        "get",
        403,
        lambda: {"headers": _bearer("sb_publishable_abc")},
    ),
    Scenario(
        "verify-delete", "/verify_service_jwt", "delete", 405, lambda: {}, documented_as="get"
    ),
    Scenario(
        "verify-misconfigured",
        "/verify_service_jwt",
        "get",
        500,
        lambda: {"headers": auth()},
        misconfigure=True,
    ),
    # verify_service_jwt, POST
    Scenario(
        "verify-body-misconfigured",
        "/verify_service_jwt",
        "post",
        500,
        lambda: {"json": {"token": token()}},
        misconfigure=True,
    ),
    Scenario(
        "verify-body", "/verify_service_jwt", "post", 200, lambda: {"json": {"token": token()}}
    ),
    Scenario("verify-body-not-object", "/verify_service_jwt", "post", 400, lambda: {"json": [1]}),
    Scenario(
        "verify-body-malformed",
        "/verify_service_jwt",
        "post",
        401,
        lambda: {"json": {"token": "not.a.jwt"}},
    ),
    Scenario(
        "verify-body-user",
        "/verify_service_jwt",
        "post",
        403,
        lambda: {"json": {"token": token("authenticated")}},
    ),
    Scenario("verify-put", "/verify_service_jwt", "put", 405, lambda: {}, documented_as="post"),
    Scenario(
        "verify-body-too-big",
        "/verify_service_jwt",
        "post",
        413,
        lambda: {"json": {"token": "x" * 70_000}},
    ),
    Scenario(
        "verify-body-text",
        "/verify_service_jwt",
        "post",
        415,
        lambda: {"data": b"token", "content_type": "text/plain"},
    ),
]

_TARGETS = {
    "/batch_import": "batch_import",
    "/convert_timestamps": "convert_timestamps",
    "/verify_service_jwt": "verify_service_jwt",
}


@pytest.fixture
def send(
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Scenario], contract.Answer]:
    """Send a scenario's request through a fresh app of its function (its env applied)."""

    def run(scenario: Scenario) -> contract.Answer:
        env = dict(scenario.env)
        if env.get("DATABASE_URL") == "closed-port":
            env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        client = make_client(_TARGETS[scenario.path], **env)
        fake = scenario.sink() if scenario.sink is not None else None
        if fake is not None:
            handlers.state()._sink = fake
        if scenario.misconfigure:
            monkeypatch.setenv("MAX_BODY_BYTES", "many")
            handlers.state.cache_clear()
        response = client.open("/", method=scenario.method.upper(), **scenario.request())
        answer = contract.from_flask(response)
        if scenario.status == 429 and fake is not None:
            assert fake.rate_checks > 0, "batch_import answered without consulting the rate limit"
        return answer

    return run


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_each_answer_matches_the_document(
    send: Callable[[Scenario], contract.Answer], scenario: Scenario
) -> None:
    answer = send(scenario)
    assert answer.status == scenario.status, answer.body[:500]
    method = scenario.documented_as or scenario.method
    assert contract.contract_problems(answer, scenario.path, method) == []
    codes = contract.error_codes_for(scenario.path, method, answer.status)
    if codes:  # an error body; the import result of a 422 has no code
        assert answer.json["error"] in codes


def test_every_documented_status_has_a_scenario() -> None:
    """Nothing in the document is left unexercised by the scenarios above."""
    covered: dict[tuple[str, str], set[int]] = {}
    for scenario in SCENARIOS:
        key = (scenario.path, scenario.documented_as or scenario.method)
        covered.setdefault(key, set()).add(scenario.status)
    for path, item in contract.document()["paths"].items():
        for method in item:
            documented = contract.documented_statuses(path, method)
            assert covered.get((path, method), set()) == documented, (path, method)

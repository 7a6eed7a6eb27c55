"""openapi.yaml as test data: loading it, finding the schema of a documented response, and
checking a real response (status, headers, JSON body) against it.

Shared by the OpenAPI, fuzz, hostile-input and leak tests, so that each of them holds every
answer it sees to the same contract.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import referencing
import yaml
from referencing.jsonschema import DRAFT202012

from localdb.cluster import ROOT

OPENAPI_PATH = ROOT / "openapi.yaml"
_BASE = "urn:engagement-events:openapi"


@functools.cache
def document() -> dict[str, Any]:
    """openapi.yaml, parsed (once per test session)."""
    with OPENAPI_PATH.open(encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)
    assert isinstance(loaded, dict)
    return loaded


@functools.cache
def _registry() -> referencing.Registry[Any]:
    resource = DRAFT202012.create_resource(document())
    # with_resources, not with_resource: the singular form has no return annotation.
    return referencing.Registry().with_resources([(_BASE, resource)])


def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local `$ref` (one that points inside openapi.yaml) until a real node is reached."""
    while _only_ref(node):
        pointer = str(node["$ref"])
        assert pointer.startswith("#/"), f"only local references are used: {pointer}"
        target: Any = document()
        for part in pointer[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _only_ref(node: Mapping[str, Any]) -> bool:
    return "$ref" in node and set(node) <= {"$ref", "description", "summary"}


def operation(path: str, method: str) -> Mapping[str, Any]:
    op = document()["paths"][path][method.lower()]
    assert isinstance(op, Mapping)
    return op


def documented_statuses(path: str, method: str) -> set[int]:
    return {int(status) for status in operation(path, method)["responses"]}


def _response_pointer(path: str, method: str, status: int) -> tuple[str, Mapping[str, Any]]:
    """JSON pointer (inside openapi.yaml) of the JSON body schema of one documented response,
    and the resolved response object."""
    responses = operation(path, method)["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document status {status}"
    raw = responses[str(status)]
    if "$ref" in raw:
        pointer = str(raw["$ref"])[1:]
        response = resolve(raw)
    else:
        escaped = path.replace("~", "~0").replace("/", "~1")
        pointer = f"/paths/{escaped}/{method.lower()}/responses/{status}"
        response = raw
    return pointer + "/content/application~1json/schema", response


def validator_for(pointer: str) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator of the schema at `pointer` in openapi.yaml, formats asserted."""
    schema = {"$ref": f"{_BASE}#{pointer}"}
    return jsonschema.Draft202012Validator(
        schema,
        registry=_registry(),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def _absolute(node: Any) -> Any:
    """A copy of a schema whose local `$ref`s point into openapi.yaml through the registry."""
    if isinstance(node, Mapping):
        return {
            key: f"{_BASE}{value}"
            if key == "$ref" and isinstance(value, str) and value.startswith("#")
            else _absolute(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_absolute(item) for item in node]
    return node


def schema_errors(pointer: str, instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator_for(pointer).iter_errors(instance)
    ]


@dataclass
class Answer:
    """What a function answered, transport-independent."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def from_flask(response: Any) -> Answer:
    """An Answer from a werkzeug test response."""
    return Answer(
        status=response.status_code,
        headers=dict(response.headers.items()),
        body=response.get_data(),
        content_type=response.mimetype or "",
    )


def contract_problems(answer: Answer, path: str, method: str) -> list[str]:
    """Everything about `answer` that openapi.yaml does not allow for `method path`:
    an undocumented status, a body that is not JSON or does not match the status's schema,
    a missing or malformed documented header, a request id that differs between header and
    body. Empty when the answer conforms."""
    problems: list[str] = []
    if answer.status not in documented_statuses(path, method):
        return [f"status {answer.status} is not documented for {method.upper()} {path}"]
    pointer, response = _response_pointer(path, method, answer.status)
    if answer.content_type != "application/json":
        problems.append(f"content type is {answer.content_type!r}, not application/json")
        return problems
    try:
        body = answer.json
    except ValueError:
        return [*problems, "the body is not JSON"]
    problems.extend(schema_errors(pointer, body))
    lowered = {name.lower(): value for name, value in answer.headers.items()}
    for name, header in response.get("headers", {}).items():
        header = resolve(header)
        value = lowered.get(name.lower())
        if value is None:
            if header.get("required"):
                problems.append(f"required header {name} is missing")
            continue
        schema = header.get("schema", {})
        typed: Any = value
        if resolve(schema).get("type") == "integer":
            try:
                typed = int(value)
            except ValueError:
                problems.append(f"header {name} is not an integer: {value!r}")
                continue
        header_validator = jsonschema.Draft202012Validator(_absolute(schema), registry=_registry())
        for error in header_validator.iter_errors(typed):
            problems.append(f"header {name}: {error.message}")
    if isinstance(body, dict) and body.get("request_id") != lowered.get("x-request-id"):
        problems.append("the body's request_id differs from the X-Request-Id header")
    if (
        "retry-after" in lowered
        and isinstance(body, dict)
        and "retry_after" in body
        and str(body["retry_after"]) != lowered["retry-after"]
    ):
        problems.append("the body's retry_after differs from the Retry-After header")
    return problems


def enum_values(schema: Mapping[str, Any]) -> set[str]:
    """Every string a schema allows through `enum`/`const`, following refs and allOf/oneOf."""
    schema = resolve(schema)
    found: set[str] = set()
    if "const" in schema:
        found.add(schema["const"])
    found.update(schema.get("enum", ()))
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key, ()):
            found |= enum_values(sub)
    return found


def error_codes_for(path: str, method: str, status: int) -> set[str]:
    """The `error` codes openapi.yaml allows in the body of one documented response."""
    pointer, _ = _response_pointer(path, method, status)
    node: Any = document()
    for part in pointer[1:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return _error_property_codes(node)


def _error_property_codes(schema: Mapping[str, Any]) -> set[str]:
    schema = resolve(schema)
    codes: set[str] = set()
    error = schema.get("properties", {}).get("error")
    if error is not None:
        codes |= enum_values(error)
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key, ()):
            codes |= _error_property_codes(sub)
    return codes


def walk_schemas(node: Any, where: str = "") -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Every Schema Object of the document (request, response, parameter, header, component)."""
    if isinstance(node, Mapping):
        for key, child in node.items():
            here = f"{where}/{key}"
            if key == "schema" and isinstance(child, Mapping):
                yield here, child
            elif key == "schemas" and where == "/components":
                for name, schema in child.items():
                    yield f"{here}/{name}", schema
            else:
                yield from walk_schemas(child, here)
    elif isinstance(node, Sequence) and not isinstance(node, str):
        for position, child in enumerate(node):
            yield from walk_schemas(child, f"{where}/{position}")

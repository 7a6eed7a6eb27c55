"""The JSON Schema files in ``schemas/``: well formed, documented, and read the same way by the
reference implementation (python-jsonschema) as by the one in production (jsonschema-rs).

Payload samples live in ``tests/data/payloads/<event_type>.json``, one list per schema in the
style of the JSON-Schema-Test-Suite: ``{"description", "data", "valid", "errors"}`` where
``errors`` are the JSON pointers (inside the payload) that must be reported.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pytest

from functions.schemas import (
    BATCH_SCHEMA,
    EVENT_SCHEMA,
    KNOWN_EVENT_TYPES,
    PAYLOAD_SCHEMAS,
    SCHEMA_DIR,
    compile_schema,
    discover_payload_schemas,
)
from functions.validation import NormalisedEvent, Rejection, normalise_event

DATA = Path(__file__).resolve().parent.parent / "data"
SCHEMA_FILES = sorted(SCHEMA_DIR.rglob("*.schema.json"))
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
RECEIVED_AT = datetime(2024, 12, 2, 12, 0, tzinfo=UTC)
USER = "7d9f4c1e-2b3a-4c5d-8e6f-0a1b2c3d4e5f"

KNOWN_DIVERGENCES = {
    "event_type_trailing_newline": (
        "python-jsonschema matches `pattern` with re.search, where `$` also matches before a "
        "final newline; jsonschema-rs follows ECMA 262, as PostgreSQL's check constraint does"
    ),
}
"""Samples on which the reference is known to disagree, and why production is right."""


def _schema_id(path: Path) -> str:
    return path.relative_to(SCHEMA_DIR.parent).as_posix()


# --- the files themselves ---------------------------------------------------------------------


def test_the_expected_schemas_exist() -> None:
    names = {_schema_id(path) for path in SCHEMA_FILES}
    assert {
        "schemas/batch.schema.json",
        "schemas/event.schema.json",
        "schemas/events/app_open.schema.json",
        "schemas/events/goal_complete.schema.json",
        "schemas/events/steps_import.schema.json",
    } <= names


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_schema_id)
def test_schema_is_valid_draft_2020_12(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))

    assert schema["$schema"] == DRAFT_2020_12
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema_rs.meta.validate(schema)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_schema_id)
def test_schema_has_id_title_and_description(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))

    assert schema["$id"].startswith("https://")
    assert schema["$id"].endswith("/" + _schema_id(path))
    assert schema["title"].strip()
    assert len(schema["description"]) > 40


def _properties(schema: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every property subschema of a schema, at any depth, with where it is."""
    if isinstance(schema, dict):
        for name, subschema in schema.get("properties", {}).items():
            yield f"{where}/properties/{name}", subschema
        for key, subschema in schema.items():
            if key != "properties":
                yield from _properties(subschema, f"{where}/{key}")
        for name, subschema in schema.get("properties", {}).items():
            yield from _properties(subschema, f"{where}/properties/{name}")
    elif isinstance(schema, list):
        for n, subschema in enumerate(schema):
            yield from _properties(subschema, f"{where}/{n}")


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_schema_id)
def test_every_property_has_a_description(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    properties = list(_properties(schema))

    assert properties
    for where, subschema in properties:
        assert isinstance(subschema, dict), where
        assert subschema.get("description", "").strip(), f"{where} has no description"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_schema_id)
def test_examples_in_the_schema_are_valid(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))

    for where, subschema in _properties(schema):
        if "examples" in subschema:
            validator = compile_schema({k: v for k, v in subschema.items() if k != "examples"})
            for example in subschema["examples"]:
                assert validator.is_valid(example), f"{where}: {example!r}"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_schema_id)
def test_objects_do_not_take_unlisted_properties(path: Path) -> None:
    """The rule for every object we define: unlisted properties are errors (typos, and no
    undocumented data in the table); only the `value` of an unknown event type is open."""
    schema = json.loads(path.read_text(encoding="utf-8"))

    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False


def test_event_type_rule_is_the_design_one() -> None:
    assert EVENT_SCHEMA["properties"]["event_type"]["pattern"] == "^[a-z][a-z0-9_]{0,63}$"
    assert set(EVENT_SCHEMA["required"]) == {"user_id", "event_type"}


def test_known_event_types_are_the_payload_files() -> None:
    files = {path.name.removesuffix(".schema.json") for path in SCHEMA_DIR.glob("events/*")}

    assert files == KNOWN_EVENT_TYPES == set(PAYLOAD_SCHEMAS)
    assert {"app_open", "goal_complete", "steps_import"} <= KNOWN_EVENT_TYPES


def test_every_payload_schema_has_samples() -> None:
    samples = {path.stem for path in (DATA / "payloads").glob("*.json")}

    assert samples == KNOWN_EVENT_TYPES
    for event_type in KNOWN_EVENT_TYPES:
        cases = json.loads((DATA / "payloads" / f"{event_type}.json").read_text("utf-8"))
        assert any(case["valid"] for case in cases), event_type
        assert any(not case["valid"] for case in cases), event_type


def test_adding_a_payload_file_adds_an_event_type(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    (events / "mood_logged.schema.json").write_text(
        json.dumps({"type": "object", "properties": {"mood": {"type": "integer"}}}),
        encoding="utf-8",
    )

    assert set(discover_payload_schemas(events)) == {"mood_logged"}


# --- payload samples --------------------------------------------------------------------------


def _payload_cases() -> list[Any]:
    params = []
    for path in sorted((DATA / "payloads").glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            params.append(pytest.param(path.stem, case, id=f"{path.stem}: {case['description']}"))
    return params


@pytest.mark.parametrize(("event_type", "case"), _payload_cases())
def test_payload_sample(event_type: str, case: dict[str, Any]) -> None:
    event = {"user_id": USER, "event_type": event_type, "value": case["data"]}

    result = normalise_event(event, 0, default_timezone=None, received_at=RECEIVED_AT)

    assert compile_schema(PAYLOAD_SCHEMAS[event_type]).is_valid(case["data"]) is case["valid"]
    if case["valid"]:
        assert isinstance(result, NormalisedEvent), result
    else:
        assert isinstance(result, Rejection)
        expected = sorted("/value" + pointer for pointer in case["errors"])
        assert sorted(error.path for error in result.errors) == expected


# --- the reference implementation agrees -------------------------------------------------------

_RFC3339_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
REFERENCE_FORMATS = jsonschema.FormatChecker(formats=["uuid"])
"""python-jsonschema checks `uuid` itself; `date-time` needs an optional package, so here is
RFC 3339 section 5.6, written from the RFC rather than copied from either implementation."""


@REFERENCE_FORMATS.checks("date-time")
def _is_rfc3339_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    match = _RFC3339_DATE_TIME.fullmatch(instance)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        date(year, month, day)
    except ValueError:
        return False
    offset_hour, offset_minute = match.group(7), match.group(8)
    if offset_hour is not None and (int(offset_hour) > 23 or int(offset_minute) > 59):
        return False
    return hour <= 23 and minute <= 59 and second <= 60


def _schema_samples() -> list[Any]:
    """(sample name, schema, instance) for every sample that meets a schema: the events of
    the event samples, their payloads, the payload samples and a few envelopes."""
    samples = []
    for folder in ("valid", "invalid"):
        for path in sorted((DATA / "events" / folder).glob("*.json")):
            event = json.loads(path.read_text(encoding="utf-8"))["event"]
            samples.append(pytest.param(path.stem, EVENT_SCHEMA, event, id=f"event {path.stem}"))
            event_type = event.get("event_type") if isinstance(event, dict) else None
            if isinstance(event_type, str) and event_type in PAYLOAD_SCHEMAS:
                value = event.get("value", {})
                schema = PAYLOAD_SCHEMAS[event_type]
                samples.append(pytest.param(path.stem, schema, value, id=f"value {path.stem}"))
    for event_type, case in (param.values for param in _payload_cases()):
        name = f"{event_type}: {case['description']}"
        samples.append(pytest.param(name, PAYLOAD_SCHEMAS[event_type], case["data"], id=name))
    for n, body in enumerate(ENVELOPES):
        samples.append(pytest.param(f"batch {n}", BATCH_SCHEMA, body, id=f"batch {n}"))
    return samples


ENVELOPES: list[Any] = [
    {"events": [{}]},
    {"events": [1, "x", None, []], "mode": "atomic", "default_timezone": "Europe/Berlin"},
    {"events": []},
    {"events": {}},
    {"mode": "partial"},
    {"events": [{}], "mode": "all"},
    {"events": [{}], "default_timezone": ""},
    {"events": [{}], "default_timezone": 5},
    {"events": [{}], "extra": True},
    [],
    "events",
]


def _failures(errors: Any, path_of: Any, keyword_of: Any) -> list[tuple[tuple[Any, ...], str]]:
    return sorted((tuple(path_of(error)), keyword_of(error)) for error in errors)


@pytest.mark.parametrize(("sample", "schema", "instance"), _schema_samples())
def test_reference_implementation_agrees(sample: str, schema: Any, instance: Any) -> None:
    reference = jsonschema.Draft202012Validator(dict(schema), format_checker=REFERENCE_FORMATS)
    production = compile_schema(schema)

    if sample in KNOWN_DIVERGENCES:
        assert not production.is_valid(instance)
        assert reference.is_valid(instance)
        return

    assert production.is_valid(instance) == reference.is_valid(instance)
    # Not only the verdict: the same rules fail at the same places.
    assert _failures(
        production.iter_errors(instance), lambda e: e.instance_path, lambda e: e.kind.name
    ) == _failures(reference.iter_errors(instance), lambda e: e.path, lambda e: e.validator)


def test_known_divergences_are_real_samples() -> None:
    names = {path.stem for path in (DATA / "events").glob("*/*.json")}
    assert set(KNOWN_DIVERGENCES) <= names


def test_uuid_format_is_the_hyphenated_form_both_ways() -> None:
    reference = jsonschema.Draft202012Validator(
        {"format": "uuid"}, format_checker=REFERENCE_FORMATS
    )
    production = compile_schema({"format": "uuid"})
    sample = str(uuid.uuid4())

    for text in (sample, sample.upper()):
        assert production.is_valid(text)
        assert reference.is_valid(text)
    for text in (sample.replace("-", ""), "{" + sample + "}", "urn:uuid:" + sample, sample[:-1]):
        assert not production.is_valid(text)
        assert not reference.is_valid(text)

"""The JSON Schemas in ``schemas/``, read and compiled once, at import.

The schemas are data: ``batch.schema.json`` describes batch_import's request envelope,
``convert.schema.json`` convert_timestamps' request body, ``event.schema.json`` one event, and every file ``schemas/events/<event_type>.schema.json``
the ``value`` of one known event type; adding such a file adds a known type. An event type
without a file is accepted if it is well formed, and its ``value`` only has to be a JSON
object. Every schema is compiled with jsonschema-rs: Draft 2020-12, ``format`` asserted
(``uuid``, ``date-time``), nothing fetched over the network.

Besides one validator per file, :data:`WHOLE_EVENT_VALIDATOR` checks an event against the
event schema and, for a known type, its payload schema (the ``value`` sent, or the default
``{}``) in one call, exactly as the two checked apart; :data:`EVENTS_VALIDATOR` does the same
for a whole list of events. A deletion (``"deleted": true``) has its value checked against
the payload schema without its top-level ``required`` (:data:`DELETION_VALIDATORS`): it may
carry the identity fields alone.

A payload schema may name the fields that identify one measurement with the keyword
``"x-identity": [...]`` (:data:`IDENTITY_FIELDS`); each must be a property of the schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast

import jsonschema_rs

from functions.errors import ConfigError

SCHEMA_DIR: Final = Path(__file__).resolve().parent.parent / "schemas"
"""Where the schema files live: ``schemas/`` beside the package."""

PAYLOAD_SCHEMA_SUFFIX: Final = ".schema.json"


def load_schema(path: Path) -> dict[str, Any]:
    """Read one schema file; a missing or broken file fails the cold start."""
    try:
        with path.open(encoding="utf-8") as handle:
            schema = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read JSON Schema {path.name}: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"JSON Schema {path.name} is not a JSON object")
    return cast(dict[str, Any], schema)


def compile_schema(schema: Mapping[str, Any]) -> jsonschema_rs.Validator:
    """Compile a schema the way this module does: Draft 2020-12, ``format`` asserted
    (``uuid``, ``date-time``), and never fetching anything over the network."""
    return jsonschema_rs.Draft202012Validator(dict(schema), validate_formats=True, offline=True)


def discover_payload_schemas(directory: Path) -> dict[str, dict[str, Any]]:
    """The payload schema of every ``<event_type>.schema.json`` in ``directory``, by event
    type; a file not named after a valid event type fails the cold start."""
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob(f"*{PAYLOAD_SCHEMA_SUFFIX}")):
        event_type = path.name.removesuffix(PAYLOAD_SCHEMA_SUFFIX)
        if not _EVENT_TYPE_VALIDATOR.is_valid(event_type):
            raise ConfigError(f"payload schema {path.name} is not named after a valid event_type")
        schemas[event_type] = load_schema(path)
    return schemas


BATCH_SCHEMA: Final = MappingProxyType(load_schema(SCHEMA_DIR / "batch.schema.json"))
"""The request envelope of batch_import."""
CONVERT_SCHEMA: Final = MappingProxyType(load_schema(SCHEMA_DIR / "convert.schema.json"))
"""The request body of convert_timestamps."""
EVENT_SCHEMA: Final = MappingProxyType(load_schema(SCHEMA_DIR / "event.schema.json"))
"""One event, whatever its type."""
_EVENT_TYPE_VALIDATOR: Final = compile_schema(EVENT_SCHEMA["properties"]["event_type"])
PAYLOAD_SCHEMAS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        event_type: MappingProxyType(schema)
        for event_type, schema in discover_payload_schemas(SCHEMA_DIR / "events").items()
    }
)
"""Payload schema of every known event type, by event type."""

KNOWN_EVENT_TYPES: Final = frozenset(PAYLOAD_SCHEMAS)

IDENTITY_KEYWORD: Final = "x-identity"


def identity_fields(event_type: str, schema: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields ``schema`` names in ``x-identity``, sorted (empty without the keyword); a
    keyword that is not a non-empty list of distinct property names fails the cold start."""
    fields = schema.get(IDENTITY_KEYWORD)
    if fields is None:
        return ()
    properties = schema.get("properties", {})
    if (
        not isinstance(fields, list)
        or not fields
        or len(set(map(str, fields))) != len(fields)
        or not all(isinstance(name, str) and name in properties for name in fields)
    ):
        raise ConfigError(
            f"payload schema {event_type}{PAYLOAD_SCHEMA_SUFFIX}: {IDENTITY_KEYWORD} must be a "
            "non-empty list of distinct names of its properties"
        )
    return tuple(sorted(fields))


IDENTITY_FIELDS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        event_type: fields
        for event_type, schema in PAYLOAD_SCHEMAS.items()
        if (fields := identity_fields(event_type, schema))
    }
)
"""The identity fields of each event type that declares them, sorted."""

INSTANT_FIELDS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        event_type: frozenset(
            name
            for name in fields
            if PAYLOAD_SCHEMAS[event_type]["properties"][name].get("format") == "date-time"
        )
        for event_type, fields in IDENTITY_FIELDS.items()
    }
)
"""Of each type's identity fields, those that are instants (``"format": "date-time"``): they
identify by the instant they name, whatever the offset it is written with."""

BATCH_VALIDATOR: Final = compile_schema(BATCH_SCHEMA)
CONVERT_VALIDATOR: Final = compile_schema(CONVERT_SCHEMA)
EVENT_VALIDATOR: Final = compile_schema(EVENT_SCHEMA)
PAYLOAD_VALIDATORS: Final[Mapping[str, jsonschema_rs.Validator]] = MappingProxyType(
    {name: compile_schema(schema) for name, schema in PAYLOAD_SCHEMAS.items()}
)


def _without_required(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key != "required"}


DELETION_SCHEMAS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {name: MappingProxyType(_without_required(schema)) for name, schema in PAYLOAD_SCHEMAS.items()}
)
"""The payload schema a deletion's value is checked against: the type's, without ``required``."""
DELETION_VALIDATORS: Final[Mapping[str, jsonschema_rs.Validator]] = MappingProxyType(
    {name: compile_schema(schema) for name, schema in DELETION_SCHEMAS.items()}
)


def _embeddable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` without the keywords that make it a resource of its own, so that it can sit
    inside another schema."""
    return {key: value for key, value in schema.items() if key not in ("$id", "$schema")}


def _payload_rule(event_type: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """For events of ``event_type``: ``value`` matches the payload schema (a deletion's, the
    schema without ``required``); an event without ``value`` (which defaults to ``{}``) passes
    only if ``{}`` does."""
    then: dict[str, Any] = {"properties": {"value": _embeddable(schema)}}
    if not PAYLOAD_VALIDATORS[event_type].is_valid({}):
        then["required"] = ["value"]
    return {
        "if": {"properties": {"event_type": {"const": event_type}}, "required": ["event_type"]},
        "then": {
            "if": {"properties": {"deleted": {"const": True}}, "required": ["deleted"]},
            "then": {"properties": {"value": _embeddable(DELETION_SCHEMAS[event_type])}},
            "else": then,
        },
    }


_WHOLE_EVENT: Final = {
    "allOf": [
        _embeddable(EVENT_SCHEMA),
        *(_payload_rule(name, schema) for name, schema in PAYLOAD_SCHEMAS.items()),
    ]
}

WHOLE_EVENT_VALIDATOR: Final = compile_schema(_WHOLE_EVENT)
"""One event: valid against the event schema and, for a known type, its payload schema."""

EVENTS_VALIDATOR: Final = compile_schema({"type": "array", "items": _WHOLE_EVENT})
"""A list of events, each one valid as :data:`WHOLE_EVENT_VALIDATOR` checks it: one call for
a batch whose events are all valid."""

#!/usr/bin/env python3
"""Writes the request-body schemas of openapi.yaml from the JSON Schema files in schemas/.

The files are what the functions validate; the section of ``components/schemas`` between the
BEGIN/END GENERATED markers holds each of them without ``$schema`` and ``$id`` (openapi.yaml
keeps every reference local, so that every OpenAPI tool reads it without fetching files):

    BatchEnvelope      schemas/batch.schema.json (its events' items also refer to Event)
    ConvertRequest     schemas/convert.schema.json (its timestamps' items refer to ConvertItem)
    Event              schemas/event.schema.json
    <Type>Value        schemas/events/<type>.schema.json, e.g. StepsImportValue

The envelope files leave their items open because the functions check each item on its own;
the document says what an item looks like through the added ``$ref``. tests/test_openapi.py
fails when the section differs from what this script produces now.

    .venv/bin/python scripts/gen-openapi-schemas.py           # rewrite the section in place
    .venv/bin/python scripts/gen-openapi-schemas.py --check   # exit 1 and show a diff if stale
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
DOCUMENT = ROOT / "openapi.yaml"
INDENT = "    "  # the schemas' depth in the document: components -> schemas -> <name>
BEGIN = INDENT + "# BEGIN GENERATED from schemas/ by scripts/gen-openapi-schemas.py; do not edit"
END = INDENT + "# END GENERATED from schemas/"


def load(path: Path) -> dict[str, Any]:
    """A schema file as a component: without the keywords that make it a resource of its own."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return {key: value for key, value in data.items() if key not in ("$schema", "$id")}


def with_items(schema: dict[str, Any], prop: str, component: str) -> dict[str, Any]:
    """``schema`` whose array property ``prop`` has items that refer to ``component``."""
    items = {**schema["properties"][prop]["items"], "$ref": f"#/components/schemas/{component}"}
    array = {**schema["properties"][prop], "items": items}
    return {**schema, "properties": {**schema["properties"], prop: array}}


def payload_component(event_type: str) -> str:
    return "".join(part.capitalize() for part in event_type.split("_")) + "Value"


def components(schemas: Path = SCHEMAS) -> dict[str, dict[str, Any]]:
    """The generated components, by name, in the order they are written."""
    found = {
        "BatchEnvelope": with_items(load(schemas / "batch.schema.json"), "events", "Event"),
        "ConvertRequest": with_items(
            load(schemas / "convert.schema.json"), "timestamps", "ConvertItem"
        ),
        "Event": load(schemas / "event.schema.json"),
    }
    for path in sorted((schemas / "events").glob("*.schema.json")):
        found[payload_component(path.name.removesuffix(".schema.json"))] = load(path)
    return found


def render(schemas: Path = SCHEMAS) -> str:
    """The generated section, markers included."""
    text = yaml.safe_dump(
        components(schemas), sort_keys=False, allow_unicode=True, width=88, indent=2
    )
    body = "".join(INDENT + line if line.strip() else line for line in text.splitlines(True))
    return f"{BEGIN}\n{body}{END}"


def replace_section(document: str, section: str) -> str:
    start, stop = document.find(BEGIN), document.find(END)
    if start < 0 or stop < start:
        raise SystemExit(f"{DOCUMENT.name}: the markers {BEGIN!r} and {END!r} are missing")
    return document[:start] + section + document[stop + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report whether it is stale")
    parser.add_argument("--document", type=Path, default=DOCUMENT, help="the file to write")
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="the schemas directory")
    args = parser.parse_args(argv)
    current = args.document.read_text(encoding="utf-8")
    wanted = replace_section(current, render(args.schemas))
    if args.check:
        if wanted != current:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    wanted.splitlines(keepends=True),
                    str(args.document),
                    "generated",
                )
            )
            print(
                f"\n{args.document.name} is stale: run scripts/gen-openapi-schemas.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if wanted != current:
        args.document.write_text(wanted, encoding="utf-8")
        print(f"updated {args.document}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
